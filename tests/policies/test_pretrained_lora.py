"""policy.adapter=lora (sim/policies/pretrained.py): many LoRA runs against one frozen base in one
program, on the 2-device mesh, their checkpoints, and a prompt data set larger than a step; on the tiny
checkpoint of tests/policies/tiny_pretrained.py."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim.rl import step
from sim.lm import model
from sim.policies import pretrained
from sim.policies.base import prompt_major
from sim.rl.train import make_train, run_keys
from tests.policies.tiny_pretrained import CFG, EOS, HP, L, PROMPTS, _hp_R, _lora, _policy, _static


@pytest.fixture(scope="module")
def lora_four(frozen):
    """4 LoRA seeds trained in one block of one program (shared by the tests below: one compile),
    with a copy of the base taken before."""
    static = _lora(_static(steps=2, log_every=1), runs_per_block=4)
    before = jax.tree.map(np.array, frozen.params)
    return static, before, make_train(static)(_hp_R(4), run_keys([0, 1, 2, 3]), shared=frozen)


def test_lora_runs_start_at_the_reference_train_only_their_adapters_and_vmap_to_their_own_numbers(frozen, lora_four):
    """An adapter run's params are its adapters alone (B = 0 at the start) and its reference is the
    base with the adapters off: exactly the same log-probs at the start, KL exactly 0. 4 seeds
    trained in one block of one program (their batches stacked against the one base) leave the base
    bit-identical, move the adapters, and give each seed the metrics and adapters it gets trained
    alone (float32 reassociation: 1e-5)."""
    static, before, together = lora_four
    policy = _policy(static, frozen)
    adapters = policy.init()
    assert set(adapters) == set(pretrained.LORA_TARGETS) and policy.reference() == {}
    assert all(float(jnp.max(jnp.abs(a["b"]))) == 0 and float(jnp.max(jnp.abs(a["a"]))) > 0 for a in adapters.values())
    prompts_B, tokens_BxL = prompt_major(3, 2), jax.random.randint(jax.random.key(1), (6, L), 0, 32)
    np.testing.assert_array_equal(policy.log_probs(adapters, prompts_B, tokens_BxL),
                                  policy.log_probs({}, prompts_B, tokens_BxL))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen.params), before)
    wq = together.state.params["wq"]
    assert wq["a"].shape == (4, CFG.layers, CFG.d_model, 2) and float(np.max(np.abs(wq["b"]))) > 1e-4
    assert np.all(together.metrics["kl"][0] == 0) and np.all(together.metrics["kl"][-1] > 0)
    # the first update's batch, drawn at the reference: its KL is 0 up to XLA fusing the zero adapter's
    # product differently inside the step (log-probs within ~1e-7, so k3 ~ 1e-14)
    assert np.all(np.abs(together.metrics["kl_sampled"][1]) < 1e-9)
    assert len({float(x) for x in together.metrics["kl"][-1]}) == 4  # the seeds differ: the test has teeth
    for r in range(4):
        alone = make_train(static)(_hp_R(1), run_keys([r]), shared=frozen)
        for k, v in alone.metrics.items():
            np.testing.assert_allclose(together.metrics[k][:, r], v[:, 0], rtol=1e-5, atol=1e-5, err_msg=k)
        for a, b in zip(jax.tree.leaves(together.state.params), jax.tree.leaves(alone.state.params)):
            np.testing.assert_allclose(np.asarray(a)[r], np.asarray(b)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.device_count() != 2, reason="needs the suite's two CPU devices (one per core)")
def test_a_lora_run_on_the_two_device_mesh_equals_the_unsharded_run(frozen, lora_four):
    """runtime.mesh fsdp=2 with adapters: the base split by the model's rules, the adapters
    replicated, the runs one after another over the mesh; the same metrics and adapters as the
    unsharded block of 4 (1e-5)."""
    static, _, plain = lora_four
    split = make_train(dataclasses.replace(static, lm=dataclasses.replace(static.lm, mesh=(1, 2, 1))))(
        _hp_R(4), run_keys([0, 1, 2, 3]), shared=frozen)
    for k in plain.metrics:
        np.testing.assert_allclose(split.metrics[k], plain.metrics[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(split.state.params), jax.tree.leaves(plain.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_a_data_set_larger_than_a_step_draws_prompts_by_seed_and_evaluates_on_held_out_ones():
    """5 prompts: 3 for training, of which 2 are drawn per step with the step's key (different
    prompts at different steps, the same for the same key), and 2 held out, which alone are
    answered at the logged rows (near-greedy temperature: the eval responses are the held-out
    prompts' own continuations)."""
    prompts = PROMPTS + [[1, 20, 21, 22], [1, 25, 26, 27, 28]]
    T = max(map(len, prompts))
    ids = np.full((5, T), EOS, np.int32)
    mask = np.zeros((5, T), bool)
    for p, row in enumerate(prompts):
        ids[p, T - len(row):], mask[p, T - len(row):] = row, True
    table = pretrained.Frozen(model.init_params(CFG, jax.random.key(0)), jnp.asarray(ids), jnp.asarray(mask))
    static = _lora(_static(steps=2, log_every=1, temperature=1e-3, prompts_per_step=2, eval_prompts=2))
    policy = _policy(static, table)
    hp = {k: jnp.float32(v) for k, v in HP.items()}
    draw = jax.jit(lambda key: step.make_step_batch(static, policy, {}, hp, policy.init(), key).prompts_P)
    drawn = [tuple(np.asarray(draw(jax.random.key(k)))) for k in range(8)]
    assert all(len(set(d)) == 2 and set(d) <= {0, 1, 2} for d in drawn) and len(set(drawn)) > 1
    assert drawn[3] == tuple(np.asarray(draw(jax.random.key(3))))
    every = dataclasses.replace(static, prompts_per_step=0)  # every training prompt, none of the held-out ones
    every_batch = step.make_step_batch(every, _policy(every, table), {}, hp, policy.init(), jax.random.key(0))
    assert every_batch.tokens_BxL.shape[0] == 3 * static.group_size and list(every_batch.prompts_P) == [0, 1, 2]
    seen = []
    result = make_train(static)(_hp_R(1), run_keys([0]), shared=table,
                                on_samples=lambda steps, s: seen.append(s["sample_tokens"]))
    tokens = np.concatenate(seen)  # C x R x B x L, B = 2 held-out prompts x eval_samples
    greedy = policy.sample({}, jax.random.key(9), 1, jnp.arange(5))
    assert tokens.shape[2] == 2 * static.eval_samples
    np.testing.assert_array_equal(tokens[0, 0], np.repeat(np.asarray(greedy[3:]), static.eval_samples, 0))
    assert not np.array_equal(np.asarray(greedy[3:]), np.asarray(greedy[:2]))
    assert np.isfinite(result.metrics["phi"]).all()


def test_a_lora_runs_checkpoint_holds_its_adapters_and_their_optimizer_state_not_the_base(frozen):
    """What a checkpoint of an adapter run stores (train.snapshot_template: the run state's shapes):
    the adapters and Adam's two moments of them, three adapter-sized copies, and no base weight."""
    from sim.rl.train import snapshot_template

    static = _lora(_static(steps=2, log_every=1))
    snap = snapshot_template(static, _hp_R(2), run_keys([0, 1]), 0, shared=frozen)
    state_elems = sum(int(np.prod(x.shape)) for x in jax.tree.leaves((snap.state.params, snap.state.opt_state)))
    adapter_elems = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(snap.state.params))
    base_elems = sum(x.size for x in jax.tree.leaves(frozen.params))
    assert adapter_elems == 2 * CFG.layers * 2 * sum(i + o for i, o in model.lora_shapes(CFG, pretrained.LORA_TARGETS).values())
    assert 3 * adapter_elems <= state_elems < 3 * adapter_elems + 100  # + Adam's step counts and hyperparameters
    assert state_elems / 2 < base_elems  # per run: no copy of the base
    shapes = {x.shape[1:] for x in jax.tree.leaves(snap.state.params)}
    assert not shapes & {x.shape for x in jax.tree.leaves(frozen.params)}
