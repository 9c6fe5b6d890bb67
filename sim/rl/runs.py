"""One run of the loop as pure functions of its hparams and key: its state, its policy, the
metrics of a logged row, one guarded update, and a chunk of logged intervals (lax.scan). train.py
vmaps these over a batch of runs (programs.py lays the batch out on devices).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sim import policies
from sim.analysis import geometry
from sim.config import Static
from sim.policies import estimates
from sim.policies.base import BuildArgs, Policy, reference_params
from sim.reward_models import model as reward_model
from sim.rl import decomposition
from sim.rl.step import BATCH_METRICS, batch_statistics, make_optimizer, no_batch_statistics, train_step
from sim.tasks import toy as task_lib

# What every logged row holds (step.BATCH_METRICS: the last update's batch statistics).
# Exact expectations under the current policy, logged at every logged step (step 0 included).
# Networks too large to enumerate estimate them by Monte Carlo (estimates.py) and also log the
# standard errors (metric_names). spill: probability of one of phi's good tokens at phi_prime's
# positions (task.spill_spec; exact, or Rao-Blackwellised Monte Carlo without a standard error).
EXACT_METRICS = estimates.NAMES + ("spill",)
# Also exact, at the same rows: the KL-cost asymmetry C(+delta) / C(-delta) with the current
# policy as the reference (geometry.py); inf once a gain of delta is out of reach, 0 a loss.
KAPPA_METRICS = ("kappa_phi", "kappa_phi_prime")
METRICS = EXACT_METRICS + KAPPA_METRICS + BATCH_METRICS


def metric_names(static: Static) -> tuple[str, ...]:
    """What a run of `static` logs: METRICS, plus `<name>_se` when its expectations are Monte Carlo,
    plus the gradient decomposition's when it is on."""
    extra = decomposition.METRICS if static.decomposition else ()
    if static.lm is not None:  # a real model: Monte Carlo expectations, and no factorised kappa (analysis.py)
        return EXACT_METRICS + BATCH_METRICS + tuple(f"{name}_se" for name in estimates.NAMES) + extra
    names = METRICS
    if static.arch is not None and not estimates.enumerates(static.task, static.enumerate_max):
        names = METRICS + tuple(f"{name}_se" for name in estimates.NAMES)
    if static.reward_model is not None:  # gold, proxy, sqrt_kl (reward_model.logged)
        names += reward_model.metric_names(static.reward_model, static.task, names)
    return names + extra


def no_step_metrics(static: Static) -> dict:
    """A logged row's update statistics where no update describes them: NaN."""
    return no_batch_statistics() | (decomposition.no_metrics() if static.decomposition else {})


class RunState(NamedTuple):
    params: Any
    opt_state: Any
    key: jax.Array  # advanced every step
    policy_key: jax.Array  # draws the family's fixed parts (e.g. features); constant
    step: jax.Array  # int32: updates attempted so far
    diverged_at: jax.Array  # int32: the step whose update went non-finite (run frozen since); -1: healthy
    ref: Any = None  # neural policies: the SFT-trained reference params (constant; None otherwise)
    proxy: Any = None  # a learned reward model's frozen proxy (constant; None: the gold reward)
    # A pretrained checkpoint's reference is not here: it is one frozen copy that every run reads
    # (make_train's `shared` argument, replicated, never vmapped), not one per run.


def build_policy(static: Static, hp: dict, policy_key: jax.Array, ref=None) -> Policy:
    """The run's policy; `ref`: a neural policy's SFT-trained reference params (RunState.ref), or
    a pretrained checkpoint's `pretrained.Frozen` (shared by every run)."""
    if policies.family(static.policy).kind == policies.FACTORISED:  # its reference: the task's logits
        ref = task_lib.reference_logits_PxLxV(
            static.task, (hp["competence_phi"], hp["competence_phi_prime"]), hp["competence_spread"])
    return policies.build(static.policy, BuildArgs(static.task, hp, policy_key, ref, width=static.width,
                                                   arch=static.arch, lm=static.lm, settings=static.settings))


def exact_metrics(static: Static, policy: Policy, params, ref_params, hp: dict, key: jax.Array) -> dict:
    """`key` draws the Monte Carlo responses of networks; a run passes the same key at every logged
    step (common random numbers: the curve's step-to-step changes are not sampling noise)."""
    if policy.marginals is None:
        out, good_prob_PxK = estimates.sequence_metrics(
            static.task, policy, params, ref_params, (hp["w_phi"], hp["w_phi_prime"]), key, static.eval_samples,
            static.enumerate_max, keep_samples=static.lm is not None, prompts_P=eval_prompts_P(static))
        if static.lm is not None:  # kappa of a real model: from its sampled rewards, after training
            return out
        return out | geometry.marginal_kappas(static.task, good_prob_PxK, hp["kappa_delta"])
    logp_PxLxV = jax.nn.log_softmax(policy.marginals(params))
    logq_PxLxV = jax.nn.log_softmax(policy.marginals(ref_params))
    phi_P, phi_prime_P = task_lib.expected_rewards_P(static.task, logp_PxLxV)
    p_PxLxV = jnp.exp(logp_PxLxV)
    return {
        "phi": jnp.mean(phi_P),
        "phi_prime": jnp.mean(phi_prime_P),
        "reward": jnp.mean(hp["w_phi"] * phi_P + hp["w_phi_prime"] * phi_prime_P),
        # >= 0 as a KL is: the two log-softmaxes may be laid out differently by XLA (the reference's is
        # folded to a constant), and a policy at its reference read -9e-7 rather than 0
        "kl": jnp.maximum(geometry.factorised_kl(logp_PxLxV, logq_PxLxV), 0.0),
        "entropy": jnp.mean(-jnp.sum(p_PxLxV * logp_PxLxV, (-1, -2))),
        "spill": jnp.mean(task_lib.spill_P(static.task, logp_PxLxV)),
    } | geometry.policy_kappas(static.task, logp_PxLxV, hp["kappa_delta"])


def eval_prompts_P(static: Static) -> jax.Array | None:
    """The held-out prompts a real model is evaluated on (they follow the training prompts in its
    prompt table); None: the training prompts."""
    if not static.eval_prompts:
        return None
    return jnp.arange(static.task.prompts, static.task.prompts + static.eval_prompts)


def eval_key(state: RunState) -> jax.Array:
    """The run's fixed key for Monte Carlo expectations (independent of its training keys)."""
    return jax.random.fold_in(state.policy_key, 1)


def with_proxy(static: Static, policy: Policy, state: RunState, row: dict, hp: dict) -> dict:
    """A logged row, plus gold, proxy and sqrt_kl when the run optimises a learned proxy."""
    if static.reward_model is None:
        return row
    return row | reward_model.logged(static.reward_model, static.task, policy, state.params, state.proxy,
                                     eval_key(state), row, hp)


def init_run(static: Static, hp: dict, key: jax.Array, ref=None, proxy=None, shared=None) -> tuple[RunState, dict]:
    """`shared`: the reference every run reads (pretrained.Frozen), passed un-vmapped."""
    key, policy_key = jax.random.split(key)
    policy = build_policy(static, hp, policy_key, ref if shared is None else shared)
    params = policy.init()
    state = RunState(params, make_optimizer(static, hp).init(params), key, policy_key,
                     step=jnp.int32(0), diverged_at=jnp.int32(-1), ref=ref, proxy=proxy)
    row = with_proxy(static, policy, state, exact_metrics(static, policy, params, reference_params(policy), hp,
                                                          eval_key(state)), hp)
    row.update(no_step_metrics(static))
    row["diverged_at_step"] = state.diverged_at
    return state, row


def _all_finite(*trees) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def guarded_step(static: Static, policy: Policy, ref_params, hp: dict, state: RunState,
                 with_metrics: jax.Array) -> tuple[RunState, dict]:
    """train_step, but a run whose loss, sampled rewards or new parameters are non-finite keeps
    its previous parameters and optimizer state from then on (frozen) and records the step.
    Runs are vmapped, so one run's NaN never reaches another run's numbers; the select is exact,
    so healthy runs get bit-identical results with or without the guard.

    The batch statistics are computed only where `with_metrics` (a scalar shared by every run,
    so under vmap this stays a branch rather than both sides and a select); elsewhere NaN."""
    key, step_key = jax.random.split(state.key)
    params, opt_state, described = train_step(static, policy, ref_params, hp, state.params, state.opt_state, step_key,
                                              state.proxy)
    batch, loss_E = described[0], described[1]
    step = state.step + 1
    ok = (state.diverged_at < 0) & _all_finite(params, loss_E[0], jnp.sum(batch.weight_B * (
        hp["w_phi"] * batch.phi_B + hp["w_phi_prime"] * batch.phi_prime_B)))
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    diverged_at = jnp.where((state.diverged_at < 0) & ~ok, step, state.diverged_at)
    def describe():
        m = batch_statistics(static, policy, ref_params, hp, state.params, *described)
        if static.decomposition:  # its gradient batch: a key of its own, so the training keys stay as they were
            m |= decomposition.metrics(static, policy, ref_params, hp, state.params, batch,
                                       jax.random.fold_in(step_key, 1))
        return m

    m = jax.lax.cond(with_metrics, describe, lambda: no_step_metrics(static))
    m = jax.tree.map(lambda x: jnp.where(ok, x, jnp.nan), m)  # no update happened: no batch statistics
    return state._replace(params=params, opt_state=opt_state, key=key, step=step, diverged_at=diverged_at), m


def run_chunk(static: Static, rows: int, state: RunState, hp: dict, shared=None) -> tuple[RunState, dict]:
    """`rows` logged intervals of `log_every` steps each; returns the rows (exact + last batch)."""
    policy = build_policy(static, hp, state.policy_key, state.ref if shared is None else shared)
    ref_params = reference_params(policy)

    def one_step(carry, i):
        state, _ = carry
        return guarded_step(static, policy, ref_params, hp, state, i == static.log_every - 1), None

    def one_interval(state, _):
        (state, last), _ = jax.lax.scan(one_step, (state, no_step_metrics(static)), jnp.arange(static.log_every))
        row = with_proxy(static, policy, state, exact_metrics(static, policy, state.params, ref_params, hp,
                                                              eval_key(state)), hp) | last
        row["diverged_at_step"] = state.diverged_at
        return state, row

    return jax.lax.scan(one_interval, state, None, length=rows)
