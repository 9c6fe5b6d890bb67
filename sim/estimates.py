"""Expected rewards, KL and entropy of a policy whose positions are not independent.

Exact by enumeration of all V^L responses per prompt when V^L <= `enumerate_max`; otherwise
Monte Carlo over `samples` responses per prompt, with standard errors returned as `<name>_se`.
The Monte Carlo estimators are Rao-Blackwellised along the sampled prefixes (same mean, lower
variance): KL and entropy sum the exact per-step KL/entropy of the next-token distributions,
and a `mean`-shaped reward averages the probability of a good token at its positions; an
`all`-shaped reward uses the indicator (a product of conditional probabilities would be biased).
Prompts are strata with `samples` draws each: se = sqrt(mean_p var_p / (P * samples)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sim import task as task_lib
from sim.policies.base import Policy, prompt_major
from sim.task import RewardSpec, Task

NAMES = ("phi", "phi_prime", "reward", "kl", "entropy")


def enumerates(task: Task, enumerate_max: int) -> bool:
    return task.vocab ** task.length <= enumerate_max


def _step_kl_entropy_B(logits_BxLxV, ref_logits_BxLxV):
    logp, logq = jax.nn.log_softmax(logits_BxLxV), jax.nn.log_softmax(ref_logits_BxLxV)
    p = jnp.exp(logp)
    return jnp.sum(p * (logp - logq), (-1, -2)), -jnp.sum(p * logp, (-1, -2))


def good_BxK(spec: RewardSpec, vocab: int, tokens_BxL: jax.Array) -> jax.Array:
    """1.0 where a response has a good token at the reward's k-th position."""
    return task_lib.good_mask_V(spec, vocab)[tokens_BxL[:, jnp.array(spec.positions)]].astype(jnp.float32)


def _per_prompt_mean(x_BxK: jax.Array, weight_B: jax.Array, prompts: int) -> jax.Array:
    return jnp.sum((weight_B[:, None] * x_BxK).reshape(prompts, -1, x_BxK.shape[-1]), 1)


def _enumerated(task, policy, params, ref_params, w):
    P, N = task.prompts, task.vocab ** task.length
    tokens_BxL = jnp.tile(task_lib.all_responses_NxL(task), (P, 1))
    prompts_B = prompt_major(P, N)
    logp_B = jnp.sum(policy.log_probs(params, prompts_B, tokens_BxL), -1)
    logq_B = jnp.sum(policy.log_probs(ref_params, prompts_B, tokens_BxL), -1)
    phi_B, phi_prime_B = task_lib.rewards_B(task, tokens_BxL)
    values = {"phi": phi_B, "phi_prime": phi_prime_B, "reward": w[0] * phi_B + w[1] * phi_prime_B,
              "kl": logp_B - logq_B, "entropy": -logp_B}
    p_B = jnp.exp(logp_B)  # probability of each response given its prompt
    out = {k: jnp.mean(jnp.sum((p_B * v).reshape(P, N), -1)) for k, v in values.items()}
    out["spill"] = jnp.mean(_per_prompt_mean(good_BxK(task_lib.spill_spec(task), task.vocab, tokens_BxL), p_B, P))
    return out, tuple(_per_prompt_mean(good_BxK(spec, task.vocab, tokens_BxL), p_B, P) for spec in task.specs)


def _monte_carlo(task, policy, params, ref_params, w, key, samples):
    P = task.prompts
    prompts_B = prompt_major(P, samples)
    tokens_BxL = policy.sample(params, key, samples)
    logits_BxLxV = policy.token_logits(params, prompts_B, tokens_BxL)
    kl_B, entropy_B = _step_kl_entropy_B(logits_BxLxV, policy.token_logits(ref_params, prompts_B, tokens_BxL))
    # per response and position: P(good | its prefix), whose mean over responses is P(good)
    good_prob_BxK = tuple(task_lib.good_prob_PxK(spec, logits_BxLxV) for spec in task.specs)
    phi_B, phi_prime_B = (jnp.mean(g_BxK, -1) if spec.shape == "mean" else indicator_B
                          for spec, g_BxK, indicator_B in zip(task.specs, good_prob_BxK,
                                                              task_lib.rewards_B(task, tokens_BxL)))
    values = {"phi": phi_B, "phi_prime": phi_prime_B, "reward": w[0] * phi_B + w[1] * phi_prime_B,
              "kl": kl_B, "entropy": entropy_B}
    out = {}
    for k, v in values.items():
        v_PxS = v.reshape(P, samples)
        out[k] = jnp.mean(v_PxS)
        out[k + "_se"] = jnp.sqrt(jnp.mean(jnp.var(v_PxS, -1, ddof=1)) / (P * samples))
    out["spill"] = jnp.mean(task_lib.good_prob_PxK(task_lib.spill_spec(task), logits_BxLxV))  # P(token | prefix)
    uniform_B = jnp.full(prompts_B.shape, 1.0 / samples)
    return out, tuple(_per_prompt_mean(g_BxK, uniform_B, P) for g_BxK in good_prob_BxK)


def sequence_metrics(task: Task, policy: Policy, params, ref_params, w: tuple, key: jax.Array,
                     samples: int, enumerate_max: int) -> tuple[dict, tuple[jax.Array, jax.Array]]:
    """E[phi], E[phi_prime], E[w0*phi + w1*phi_prime], KL(pi || ref) and entropy of the response
    distribution, averaged over prompts, plus `<name>_se` when estimated by Monte Carlo, and
    `spill` (task.spill_spec, without a standard error); and for
    each reward the probability of a good token at each of its positions per prompt (PxK)."""
    if enumerates(task, enumerate_max):
        return _enumerated(task, policy, params, ref_params, w)
    return _monte_carlo(task, policy, params, ref_params, w, key, samples)


def joint_count_pmf(task: Task, policy: Policy, params, key: jax.Array, samples: int,
                    enumerate_max: int) -> jax.Array:
    """P(j good tokens at phi's positions, k at phi_prime's), averaged over prompts ((K1+1)x(K2+1)):
    exact by enumeration, else the frequencies of `samples` responses per prompt. Unlike a
    factorised policy, a network can correlate the two within a prompt."""
    P = task.prompts
    if enumerates(task, enumerate_max):
        tokens_BxL = jnp.tile(task_lib.all_responses_NxL(task), (P, 1))
        prompts_B = prompt_major(P, tokens_BxL.shape[0] // P)
        weight_B = jnp.exp(jnp.sum(policy.log_probs(params, prompts_B, tokens_BxL), -1)) / P
    else:
        prompts_B = prompt_major(P, samples)
        tokens_BxL = policy.sample(params, key, samples)
        weight_B = jnp.full(prompts_B.shape, 1.0 / prompts_B.shape[0])
    j_B, k_B = (jnp.sum(good_BxK(spec, task.vocab, tokens_BxL), -1).astype(jnp.int32) for spec in task.specs)
    K1, K2 = len(task.phi.positions), len(task.phi_prime.positions)
    return jnp.zeros((K1 + 1, K2 + 1)).at[j_B, k_B].add(weight_B)
