"""sim/lm/memory.py's estimate against XLA's own memory analysis of the compiled step (the
vmapped sim/rl/step.py train_step of policy=pretrained): three configurations whose memory is spent
in different places (full fine-tuning's gradient and update; LoRA runs vmapped, whose activations
scale with the block; remat, which keeps one block's). Compiling needs no weights (abstract
shapes), so the test is quick. The whole-process figure (with the runtime) is checked against
measured peak RSS by `python -m sim.bench lm` (docs/real-models.md)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from sim.rl import step
from sim.config import Static
from sim.config_values import ConfigError
from sim.lm import memory, model
from sim.lm.config import LMConfig
from sim.policies import pretrained
from sim.policies.base import reference_params
from sim.tasks.toy import RewardSpec, Task
from sim.rl.train import build_policy

CFG = LMConfig(family="llama", vocab=6000, d_model=96, layers=3, heads=4, kv_heads=2, head_dim=24, ffn=256,
               tied_embeddings=True, eos_id=2)
HP = dict(w_phi=4.0, w_phi_prime=1.0, beta=0.04, eps_low=0.2, eps_high=0.2, entropy_coef=0.0, lr=1e-5,
          max_grad_norm=1.0)


def _static(P, G, N, runs, lora, remat) -> Static:
    task = Task(prompts=P, length=N, vocab=CFG.vocab, phi=RewardSpec(tuple(range(N // 2)), tuple(range(3, 40))),
                phi_prime=RewardSpec(tuple(range(N // 2, N)), tuple(range(40, 80))))
    settings = pretrained.Settings("abstract", model=CFG, eos_id=2, adapter="lora" if lora else "none", lora_rank=8,
                                   runs_per_block=runs, remat=remat)
    return Static(task=task, policy="pretrained", width=0, advantage="grpo", group_size=G, std_eps=1e-4,
                  kl_estimator="k3", kl_placement="loss", optimizer="adam", steps=1, log_every=1, eval_samples=2,
                  entropy_bonus=False, lm=settings)


def _xla_bytes(static: Static, runs: int, T: int) -> int:
    """Arguments plus peak temporaries of the compiled step of `runs` runs vmapped (state donated)."""
    hp = {k: jnp.float32(v) for k, v in HP.items()}
    P = static.task.prompts
    params = jax.eval_shape(lambda: model.init_params(CFG, jax.random.key(0)))
    shared = pretrained.Frozen(params, jax.ShapeDtypeStruct((P, T), jnp.int32), jax.ShapeDtypeStruct((P, T), bool))
    keys = jax.random.split(jax.random.key(0), runs)
    optimizer = step.make_optimizer(static, hp)

    def init(s, key):
        params = build_policy(static, hp, key, s).init()
        return params, optimizer.init(params)

    params_R, opt_R = jax.eval_shape(jax.vmap(init, in_axes=(None, 0)), shared, keys)

    def one(s, params, opt_state, key):
        policy = build_policy(static, hp, keys[0], s)
        params, opt_state, (_, loss_E, _, _) = step.train_step(static, policy, reference_params(policy), hp, params,
                                                               opt_state, key)
        return params, opt_state, loss_E[0]

    compiled = jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)), donate_argnums=(1, 2)).lower(
        shared, params_R, opt_R, keys).compile()
    analysis = compiled.memory_analysis()
    return analysis.temp_size_in_bytes + analysis.argument_size_in_bytes


@pytest.mark.parametrize("P, G, N, T, runs, lora, remat", [
    (8, 4, 16, 20, 1, False, False),  # full fine-tuning: gradients and Adam's update of every weight
    (8, 4, 16, 20, 4, True, False),  # 4 LoRA runs in one block: activations x 4
    (8, 8, 32, 30, 2, True, True),  # remat: one block's activations, recomputed
])
def test_the_estimate_is_within_25_percent_of_xlas_memory_analysis(P, G, N, T, runs, lora, remat):
    static = _static(P, G, N, runs, lora, remat)
    est = memory.estimate(CFG, static, runs, T, concurrent_runs=runs if lora else 1)
    xla = _xla_bytes(static, runs, T)
    ours = est["base"] + est["state"] + est["step"]  # what the step program holds; runtime and evaluation aside
    print(f"estimate {ours / 2**20:.0f} MiB, XLA {xla / 2**20:.0f} MiB")
    assert 0.75 <= ours / xla <= 1.25


def test_a_position_split_adapters_state_is_both_of_its_sets():
    """Each run's state (adapters and Adam's two moments, float32) counts the elements that
    init_lora really makes: twice the one-set adapters under policy.lora.split."""
    one, split = _static(8, 4, 16, 2, True, False), _static(8, 4, 16, 2, True, False)
    split = Static(**{**split.__dict__, "lm": dataclasses.replace(split.lm, lora_split="reward_positions")})
    for static, sets in ((one, 1), (split, 2)):
        shapes = jax.eval_shape(lambda k: pretrained.init_lora(CFG, static.lm.lora_targets, 8, k, sets),
                                jax.random.key(0))
        elements = sum(x.size for x in jax.tree.leaves(shapes))
        assert memory.estimate(CFG, static, 3, 20, 2)["state"] == 3 * 3 * 4 * elements
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 2 * memory.lora_count(CFG, 8, split.lm.lora_targets)


def test_a_config_over_the_machines_memory_is_refused_in_one_line():
    """SmolLM2's sizes with the text task's old defaults (64 prompts x group 8 every step, full
    fine-tuning): the run that once tried to allocate 90.6 GB is refused on a 24 GB machine, in one
    line that gives the estimate, its parts and the machine's memory."""
    smol = LMConfig(family="llama", vocab=49152, d_model=576, layers=30, heads=9, kv_heads=3, head_dim=64, ffn=1536,
                    tied_embeddings=True, eos_id=2)
    static = _static(64, 8, 32, 1, False, False)
    static = Static(**{**static.__dict__, "lm": pretrained.Settings("smollm2-135m", model=smol, eos_id=2)})
    with pytest.raises(ConfigError) as e:
        memory.check_fits(smol, static, 1, 42, 1, limit=24 * 2**30)
    message = str(e.value)
    assert "\n" not in message and "this machine has 24.0 GB" in message and "needs about" in message
    assert memory.check_fits(smol, _lora_smol(static), 8, 42, 4, limit=24 * 2**30)["total"] < 12 * 2**30


def _lora_smol(static: Static) -> Static:
    """The same model with 8 prompts a step, 8 held out, LoRA and remat: fits."""
    lm = static.lm
    lm = pretrained.Settings(lm.checkpoint, model=lm.model, eos_id=2, adapter="lora", remat=True, runs_per_block=4)
    return Static(**{**static.__dict__, "lm": lm, "prompts_per_step": 8, "eval_prompts": 8, "group_size": 4})
