"""The SFT stage: a neural reference by maximum likelihood on samples of the task's teacher.

The teacher is the factorised reference of `task.py` with the configured competences. One
network is trained per distinct (competence_phi, competence_phi_prime, competence_spread)
point, all points vmapped in one compiled program; every point starts from the same network
init (`SFT.seed`) and sees the same stream of data keys, so points differ only by their teacher.
Each step draws a fresh batch (infinite data, no overfitting) with prompts cycled evenly; Adam
with a cosine decay to 0 lets the final params settle instead of jittering at the last step's
noise. The loss is the mean per-token negative log-likelihood; its floor is the teacher's
per-token entropy (reached when the network equals the teacher).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sim import policies
from sim.config_values import POSITIVE, integer, real
from sim.policies import autoregressive, estimates
from sim.tasks import toy as task_lib
from sim.policies.autoregressive import Arch
from sim.policies.base import sample_inverse_cdf
from sim.tasks.toy import Task

MEASURE_SAMPLES = 256  # responses per prompt when the reference's competences are measured by Monte Carlo
MEASURE_ENUMERATE_MAX = 4096


@dataclass(frozen=True)
class SFT:
    steps: int = 400
    batch: int = 256  # teacher samples per step
    lr: float = 3e-3  # Adam peak learning rate, cosine-decayed to 0
    seed: int = 0  # network init and data stream


KEYS = {"steps", "batch", "lr", "seed"}  # policy.sft's


def parse(cfg) -> SFT:
    """policy.sft: how a neural family's reference is trained."""
    return SFT(steps=integer(cfg, "policy.sft.steps", 1), batch=integer(cfg, "policy.sft.batch", 1),
               lr=real(cfg, "policy.sft.lr", *POSITIVE), seed=integer(cfg, "policy.sft.seed", 0))


class SFTState(NamedTuple):
    params: object
    opt_state: object
    key: jax.Array


def teacher_logits_PxLxV(task: Task, competence_3: jax.Array) -> jax.Array:
    """The teacher of point (competence_phi, competence_phi_prime, competence_spread)."""
    return task_lib.reference_logits_PxLxV(task, (competence_3[0], competence_3[1]), competence_3[2])


def _optimizer(sft: SFT) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(sft.lr, sft.steps)))


def nll(net: autoregressive.Net, task: Task, params, prompts_B, tokens_BxL) -> jax.Array:
    logits_BxLxV = net.logits(params, autoregressive.input_ids_BxL(task, prompts_B, tokens_BxL))
    logp_BxL = jnp.take_along_axis(jax.nn.log_softmax(logits_BxLxV), tokens_BxL[..., None], -1)[..., 0]
    return -jnp.mean(logp_BxL)


def _init(task: Task, arch: Arch, sft: SFT, competence_3) -> SFTState:
    init_key, data_key = jax.random.split(jax.random.key(sft.seed))
    params = policies.net(arch, task).init(init_key)
    return SFTState(params, _optimizer(sft).init(params), data_key)


def _chunk(task: Task, arch: Arch, sft: SFT, n_steps: int, state: SFTState, competence_3) -> tuple[SFTState, jax.Array]:
    net = policies.net(arch, task)
    teacher_cdf_PxLxV = jnp.cumsum(jax.nn.softmax(teacher_logits_PxLxV(task, competence_3)), -1)
    prompts_B = jnp.arange(sft.batch) % task.prompts

    def one_step(state: SFTState, _):
        key, data_key = jax.random.split(state.key)
        tokens_BxL = sample_inverse_cdf(data_key, teacher_cdf_PxLxV[prompts_B]).astype(jnp.int32)
        loss, grads = jax.value_and_grad(nll, argnums=2)(net, task, state.params, prompts_B, tokens_BxL)
        updates, opt_state = _optimizer(sft).update(grads, state.opt_state, state.params)
        return SFTState(optax.apply_updates(state.params, updates), opt_state, key), loss

    return jax.lax.scan(one_step, state, None, length=n_steps)


@functools.lru_cache(maxsize=8)
def _programs(task: Task, arch: Arch, sft: SFT, chunk_steps: int):
    """Jitted (init, chunk), vmapped over points; cached so new competences reuse the compiled code."""
    return (jax.jit(jax.vmap(partial(_init, task, arch, sft))),
            jax.jit(jax.vmap(partial(_chunk, task, arch, sft, chunk_steps))))


def train(task: Task, arch: Arch, sft: SFT, competence_Kx3: np.ndarray, chunk_steps: int,
          on_chunk: Callable[[int], None] | None = None) -> tuple[object, np.ndarray]:
    """SFT of one network per row of competence_Kx3: (params with a leading K axis, loss_KxS)."""
    comp = jnp.asarray(competence_Kx3, jnp.float32)
    init, chunk = _programs(task, arch, sft, chunk_steps)
    state = init(comp)
    losses = []
    for done in range(0, sft.steps, chunk_steps):
        state, loss_KxC = chunk(state, comp)
        losses.append(np.asarray(loss_KxC))
        if on_chunk is not None:
            on_chunk(done + chunk_steps)
    return state.params, np.concatenate(losses, 1)


def _measure_one(task: Task, arch: Arch, params, competence_3, key) -> dict:
    policy = autoregressive.make(policies.net(arch, task), params, task)
    as_mean = replace(task, phi=replace(task.phi, shape="mean"), phi_prime=replace(task.phi_prime, shape="mean"))
    m, _ = estimates.sequence_metrics(as_mean, policy, params, params, (1.0, 1.0), key, MEASURE_SAMPLES,
                                      MEASURE_ENUMERATE_MAX)
    teacher_PxLxV = jax.nn.log_softmax(teacher_logits_PxLxV(task, competence_3))
    out = {"competence_phi": m["phi"], "competence_phi_prime": m["phi_prime"],
           "loss_floor": -jnp.mean(jnp.sum(jnp.exp(teacher_PxLxV) * teacher_PxLxV, -1))}
    for which, name in enumerate(("phi", "phi_prime")):
        out[f"competence_{name}_se"] = m.get(f"{name}_se", jnp.float32(0.0))
        out[f"teacher_competence_{name}"] = jnp.mean(
            task_lib.prompt_competence_P(task, competence_3[which], competence_3[2], which))
    return out


@functools.lru_cache(maxsize=8)
def _measure_program(task: Task, arch: Arch):
    return jax.jit(jax.vmap(partial(_measure_one, task, arch)))


def measure(task: Task, arch: Arch, params_K, competence_Kx3: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Per point: the trained network's competences (probability of a good token at each reward's
    positions, averaged over prompts; exact or Monte Carlo with `_se`), the teacher's, and the
    loss floor (teacher's mean per-token entropy)."""
    comp = jnp.asarray(competence_Kx3, jnp.float32)
    keys = jnp.stack([jax.random.key(seed)] * comp.shape[0])
    out = _measure_program(task, arch)(params_K, comp, keys)
    return {k: np.asarray(v) for k, v in out.items()}
