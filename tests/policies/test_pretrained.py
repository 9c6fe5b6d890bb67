"""policy=pretrained (sim/policies/pretrained.py): a checkpoint as a Policy, and what the loop
does with it (EOS masks, one shared frozen reference, a model sharded over runtime.mesh, position-split
adapters), on the tiny checkpoint of tests/policies/tiny_pretrained.py. LoRA runs in one program, their
mesh, checkpoints and the prompt data set: test_pretrained_lora.py (a file of its own so the suite's
two workers share the load)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim.rl import step
from sim.config_values import ConfigError
from sim.lm import model
from sim.policies import pretrained
from sim.policies.base import prompt_major
from sim.rl.train import make_train, run_keys
from tests.policies.tiny_pretrained import (CFG, EOS, HP, L, PROMPTS, TASK, _hp_R, _lora, _policy, _static,
                                           _unpadded_log_probs)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_are_the_models_teacher_forced_log_probs_whatever_the_padding(frozen, temperature):
    policy = _policy(_static(temperature=temperature), frozen)
    prompts_B = prompt_major(3, 2)
    tokens_BxL = jax.random.randint(jax.random.key(5), (6, L), 0, CFG.vocab)
    got = np.asarray(policy.log_probs(policy.init(), prompts_B, tokens_BxL))
    for b in range(6):
        want = _unpadded_log_probs(frozen.params, PROMPTS[int(prompts_B[b])], np.asarray(tokens_BxL[b]), temperature)
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)


def test_samples_are_prompt_major(frozen):
    """At a temperature near 0 every response is its prompt's greedy continuation (computed here
    by argmax over model.forward, without the cache), so row b must answer prompt b // G."""
    policy = _policy(_static(temperature=1e-4), frozen)
    G = 3
    tokens_BxL = np.asarray(policy.sample(policy.init(), jax.random.key(1), G))
    assert tokens_BxL.shape == (3 * G, L)
    # causal: the slots after t do not change the logits at t, so one buffer shape per prompt
    logits_1xSxV = jax.jit(lambda ids: model.forward(frozen.params, CFG, ids, jnp.arange(ids.shape[1])[None],
                                                     jnp.ones(ids.shape, bool)))
    greedy = []
    for prompt in PROMPTS:
        ids = np.array([prompt + [0] * L], np.int32)
        for t in range(len(prompt), len(prompt) + L):
            ids[0, t] = int(np.argmax(logits_1xSxV(jnp.asarray(ids))[0, t - 1]))
        greedy.append(ids[0, len(prompt):].tolist())
    assert len({tuple(g) for g in greedy}) > 1  # the prompts lead to different responses: the test can fail
    for b in range(3 * G):
        assert tokens_BxL[b].tolist() == greedy[b // G]


def test_init_is_the_reference_in_float32_and_a_bfloat16_reference_computes_in_bfloat16(frozen):
    policy = _policy(_static(), frozen)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(policy.init()))
    settings = dataclasses.replace(_static().lm, dtype="bfloat16")
    bf16 = pretrained.make(settings, frozen._replace(params=pretrained.cast(frozen.params, "bfloat16")), L)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.init()))
    prompts_B, tokens_BxL = prompt_major(3, 1), jnp.full((3, L), 7, jnp.int32)
    # the policy at init and its reference give the same numbers: KL exactly 0 at the start
    a = bf16.log_probs(bf16.init(), prompts_B, tokens_BxL)
    b = bf16.log_probs(pretrained.cast(frozen.params, "bfloat16"), prompts_B, tokens_BxL)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - policy.log_probs(policy.init(), prompts_B, tokens_BxL)))) > 1e-4  # bf16 differs


def _batch(static, policy, ref, params, tokens_BxL, hp):
    fixed = policy._replace(sample=lambda params, key, per_prompt: tokens_BxL)
    return fixed, step.make_step_batch(static, fixed, ref, hp, params, jax.random.key(0))


@pytest.mark.parametrize("placement", ["loss", "reward"])
def test_tokens_after_eos_reach_no_reward_kl_loss_or_gradient(frozen, placement):
    """Two batches that differ only after each response's first EOS: the same rewards, KL,
    advantages, loss and gradient. Without the mask they differ (the test can fail)."""
    static = _static(kl_placement=placement, entropy_bonus=True)
    hp = {k: jnp.float32(v) for k, v in (HP | {"entropy_coef": 0.01}).items()}
    policy = _policy(static, frozen)
    ref = policy.init()
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(9), x.shape), ref)
    G = static.group_size
    a_BxL = jax.random.randint(jax.random.key(3), (3 * G, L), 3, CFG.vocab)
    a_BxL = a_BxL.at[:, 2].set(jnp.where(jnp.arange(3 * G) % 2 == 0, EOS, a_BxL[:, 2]))  # half end at token 2
    ends_early = (jnp.arange(3 * G) % 2 == 0)[:, None] & (jnp.arange(L) > 2)[None, :]
    b_BxL = jnp.where(ends_early, 12, a_BxL)  # after the EOS: phi_prime's good token 12 everywhere

    def outputs(pol):  # one compiled program per policy, run on both batches
        @jax.jit
        def run(tokens):
            fixed, batch = _batch(static, pol, ref, params, tokens, hp)
            loss, grads = jax.value_and_grad(lambda p: step.loss_fn(static, fixed, ref, hp, batch, p)[0])(params)
            kl_B = step.batch_kl_B(static, fixed, ref, params, batch)
            return [batch.phi_B, batch.phi_prime_B, kl_B, batch.adv_B, loss, *jax.tree.leaves(grads)]
        return run

    masked = outputs(policy)
    for x, y in zip(masked(a_BxL), masked(b_BxL)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    unmasked = outputs(policy._replace(response_mask=None))
    differs = [not np.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(unmasked(a_BxL), unmasked(b_BxL))]
    assert differs[1] and differs[2] and differs[4]  # phi_prime, KL and loss see the tokens after EOS


def test_runs_share_one_frozen_reference_and_only_their_copies_train(frozen):
    """Two seeds trained by the one loop: the run state holds no reference (RunState.ref is None)
    but each run's own float32 params and optimizer state ([R] leading axis); the shared
    reference's arrays are unchanged after training while the runs' params moved (KL > 0)."""
    static = _static(steps=2, log_every=1)
    before = jax.tree.map(np.array, frozen.params)
    hp_R = {k: np.full(2, v, np.float32) for k, v in HP.items()}
    result = make_train(static)(hp_R, run_keys([0, 1]), shared=frozen)
    assert result.state.ref is None
    for x, ref in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(frozen.params)):
        assert x.shape == (2,) + ref.shape and x.dtype == jnp.float32
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen.params), before)
    moved = max(float(np.max(np.abs(x - r[None]))) for x, r in zip(jax.tree.leaves(result.state.params),
                                                                   jax.tree.leaves(before)))
    assert moved > 1e-4
    assert np.all(result.metrics["kl"][0] == 0) and np.all(result.metrics["kl"][-1] > 0)
    assert "kappa_phi" not in result.metrics and "kl_se" in result.metrics
    with pytest.raises(ValueError, match="shared"):
        make_train(static)(hp_R, run_keys([0, 1]))


@pytest.mark.skipif(jax.device_count() != 2, reason="needs the suite's two CPU devices (one per core)")
def test_a_model_sharded_over_runtime_mesh_trains_to_the_same_numbers(frozen):
    """runtime.mesh fsdp=2 (Settings.mesh): the same loop with the weights split along d_model and
    the batch over the two devices gives the unsharded run's metrics and parameters (float32
    reassociation only: 1e-5), and the trained weights really are split (each device holds half)."""
    from sim.lm import sharding

    hp_R = {k: np.full(2, v, np.float32) for k, v in HP.items()}
    plain = make_train(_static(steps=2, log_every=1))(hp_R, run_keys([0, 1]), shared=frozen)
    static = _static(steps=2, log_every=1)
    static = dataclasses.replace(static, lm=dataclasses.replace(static.lm, mesh=(1, 2, 1)))
    split = make_train(static)(hp_R, run_keys([0, 1]), shared=frozen)
    for k in plain.metrics:
        np.testing.assert_allclose(split.metrics[k], plain.metrics[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(split.state.params), jax.tree.leaves(plain.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    blocks = split.state.params["blocks"]
    assert sharding.sharded_fraction(blocks["wq"]) == 0.5 and sharding.sharded_fraction(blocks["w_down"]) == 0.5
    assert sharding.sharded_fraction(split.state.params["embed"]) == 0.5


# ---------------------------------------------------------------- position-split adapters
# TASK: phi on response positions 0-2, phi_prime on 3-5, so the boundary is 3: the slots that
# predict tokens 0-2 (the prompt's last slot and response slots 0, 1) use set 0, the others set 1.
PHI_WINDOW, PHI_PRIME_WINDOW = np.arange(L) < 3, np.arange(L) >= 3


def _split_policy(frozen, temperature: float = 1.0):
    """A position-split LoRA policy and random non-zero adapters for it (A and B of both sets)."""
    static = _lora(_static(temperature=temperature), split="reward_positions")
    policy = _policy(static, frozen)
    init = policy.init()
    leaves, tree = jax.tree.flatten(init)
    keys = jax.random.split(jax.random.key(21), len(leaves))
    adapters = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return static, policy, adapters


def test_a_split_run_starts_with_two_copies_of_its_seeds_unsplit_adapters_at_the_reference(frozen):
    static, policy, _ = _split_policy(frozen)
    unsplit = _policy(_lora(_static()), frozen).init()
    adapters = policy.init()
    for name in pretrained.LORA_TARGETS:
        for m in ("a", "b"):
            assert adapters[name][m].shape == (CFG.layers, 2, *unsplit[name][m].shape[1:])
            for s in (0, 1):
                np.testing.assert_array_equal(adapters[name][m][:, s], unsplit[name][m])
    prompts_B, tokens_BxL = prompt_major(3, 2), jax.random.randint(jax.random.key(1), (6, L), 0, 32)
    np.testing.assert_array_equal(policy.log_probs(adapters, prompts_B, tokens_BxL),
                                  policy.log_probs({}, prompts_B, tokens_BxL))


def test_phis_log_probs_send_exactly_no_gradient_to_set_1(frozen):
    """The gradient of phi's window's log-probs (positions 0-2) with respect to set 1 is exactly 0,
    through the training step's grouped log-probs and through the plain ones; phi_prime's window
    (3-5) gives set 1 a gradient, so the test can fail."""
    _, policy, adapters = _split_policy(frozen)
    G = 2
    prompts_P, prompts_B = jnp.arange(3), prompt_major(3, G)
    tokens_BxL = jax.random.randint(jax.random.key(2), (3 * G, L), 3, 32)

    @jax.jit
    def grads(params, window_L):
        grouped = jax.grad(lambda p: jnp.sum(policy.group_log_probs(p, prompts_P, tokens_BxL) * window_L))(params)
        plain = jax.grad(lambda p: jnp.sum(policy.log_probs(p, prompts_B, tokens_BxL) * window_L))(params)
        return grouped, plain

    for g in jax.tree.leaves(grads(adapters, PHI_WINDOW)):
        assert np.all(np.asarray(g)[:, 1] == 0) and float(jnp.abs(g[:, 0]).max()) > 1e-5
    assert all(float(jnp.abs(g[:, 1]).max()) > 1e-6 for g in jax.tree.leaves(grads(adapters, PHI_PRIME_WINDOW)))


def test_the_cached_sampler_and_teacher_forcing_agree_with_a_split_adapter(frozen):
    """At a temperature near 0 the sampler (prefill, then the KV cache) draws the greedy tokens, so
    every sampled token must be the argmax of the teacher-forced logits of the same split adapters,
    i.e. its teacher-forced log-prob is the largest. With set 0 alone on every slot teacher forcing
    prefers other tokens after the boundary: the sampler's choice of set is what is tested."""
    _, policy, adapters = _split_policy(frozen, temperature=1e-4)
    G = 2
    prompts_P = jnp.arange(3)
    tokens_BxL = policy.sample(adapters, jax.random.key(3), G)
    logits_BxLxV = np.asarray(policy.group_token_logits(adapters, prompts_P, tokens_BxL))
    np.testing.assert_array_equal(np.argmax(logits_BxLxV, -1), np.asarray(tokens_BxL))
    logp_BxL = np.asarray(policy.group_log_probs(adapters, prompts_P, tokens_BxL))
    np.testing.assert_allclose(logp_BxL, jax.nn.log_softmax(logits_BxLxV, -1).max(-1), atol=1e-3)
    set0 = jax.tree.map(lambda x: jnp.stack([x[:, 0], x[:, 0]], 1), adapters)
    set0_argmax = np.argmax(np.asarray(policy.group_token_logits(set0, prompts_P, tokens_BxL)), -1)
    assert np.array_equal(set0_argmax[:, :3], np.asarray(tokens_BxL)[:, :3])  # before the boundary: set 0 alone
    assert not np.array_equal(set0_argmax[:, 3:], np.asarray(tokens_BxL)[:, 3:])


def test_the_split_boundary_is_phi_primes_first_position_and_phi_must_come_before_it():
    settings = dataclasses.replace(_lora(_static()).lm, lora_split="reward_positions")
    assert pretrained.split_boundary(settings, TASK) == 3
    assert pretrained.split_boundary(_lora(_static()).lm, TASK) is None
    swapped = dataclasses.replace(TASK, phi=TASK.phi_prime, phi_prime=TASK.phi)
    with pytest.raises(ConfigError) as info:
        pretrained.split_boundary(settings, swapped)
    text = str(info.value)
    assert text.startswith("policy.lora.split=reward_positions: needs task.phi.positions") and "\n" not in text


def test_the_split_key_parses_and_a_split_run_trains_both_sets_from_the_reference(frozen):
    """policy.lora.split from the config; 2 seeds of a split run in one block: KL 0 at the start,
    then both sets move (phi's and phi_prime's positions both have rewards)."""
    from sim.config import parse
    from tests.conftest import compose_plain

    lm = parse(compose_plain(["task=text", "policy=pretrained", "policy.lora.split=reward_positions"])).static.lm
    assert lm.lora_split == "reward_positions" and lm.lora_sets == 2
    assert parse(compose_plain(["task=text", "policy=pretrained"])).static.lm.lora_split == "none"
    static = _lora(_static(steps=2, log_every=1), runs_per_block=2, split="reward_positions")
    result = make_train(static)(_hp_R(2), run_keys([0, 1]), shared=frozen)
    assert np.all(result.metrics["kl"][0] == 0) and np.all(result.metrics["kl"][-1] > 0)
    b = np.asarray(result.state.params["wq"]["b"])  # R x layers x sets x rank x out
    assert float(np.abs(b[:, :, 0]).max()) > 1e-5 and float(np.abs(b[:, :, 1]).max()) > 1e-5
