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

from sim.tasks import toy as task_lib
from sim.policies.base import Policy, group_token_logits, prompt_major
from sim.tasks.toy import RewardSpec, Task

NAMES = ("phi", "phi_prime", "reward", "kl", "entropy")


def enumerates(task: Task, enumerate_max: int) -> bool:
    return task.vocab ** task.length <= enumerate_max


def _step_kl_entropy_B(logits_BxLxV, ref_logits_BxLxV, mask_BxL=None):
    logp, logq = jax.nn.log_softmax(logits_BxLxV), jax.nn.log_softmax(ref_logits_BxLxV)
    p = jnp.exp(logp)
    if mask_BxL is None:
        return jnp.sum(p * (logp - logq), (-1, -2)), -jnp.sum(p * logp, (-1, -2))
    # summed over the response's own steps (up to its EOS): the KL and entropy of the sequence
    # distribution of responses that stop there
    kl_BxL, entropy_BxL = jnp.sum(p * (logp - logq), -1), -jnp.sum(p * logp, -1)
    return jnp.sum(jnp.where(mask_BxL, kl_BxL, 0.0), -1), jnp.sum(jnp.where(mask_BxL, entropy_BxL, 0.0), -1)


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


def _masked(good_prob_BxK: jax.Array, spec: RewardSpec, mask_BxL: jax.Array | None) -> jax.Array:
    return good_prob_BxK if mask_BxL is None else jnp.where(mask_BxL[:, jnp.array(spec.positions)], good_prob_BxK, 0.0)


def _monte_carlo(task, policy, params, ref_params, w, key, samples, keep_samples=False, prompts_P=None):
    if prompts_P is None:  # the task's prompts
        P = task.prompts
        prompts_B = prompt_major(P, samples)
        tokens_BxL = policy.sample(params, key, samples)
        prompts_P = jnp.arange(P)
    else:  # others of the policy's prompt table (a real model's held-out prompts)
        P = prompts_P.shape[0]
        prompts_B = jnp.repeat(prompts_P, samples)
        tokens_BxL = policy.sample(params, key, samples, prompts_P)
    mask_BxL = None if policy.response_mask is None else policy.response_mask(tokens_BxL)
    logits_BxLxV = group_token_logits(policy, params, prompts_P, tokens_BxL)
    kl_B, entropy_B = _step_kl_entropy_B(logits_BxLxV, group_token_logits(policy, ref_params, prompts_P, tokens_BxL),
                                         mask_BxL)
    # per response and position: P(good | its prefix), whose mean over responses is P(good); a
    # position after the response's end (known from the prefix) holds no token, so it is not good
    good_prob_BxK = tuple(_masked(task_lib.good_prob_PxK(spec, logits_BxLxV), spec, mask_BxL) for spec in task.specs)
    phi_B, phi_prime_B = (jnp.mean(g_BxK, -1) if spec.shape == "mean" and spec.text is None else indicator_B
                          for spec, g_BxK, indicator_B in zip(task.specs, good_prob_BxK,
                                                              task_lib.rewards_B(task, tokens_BxL, mask_BxL, prompts_B)))
    values = {"phi": phi_B, "phi_prime": phi_prime_B, "reward": w[0] * phi_B + w[1] * phi_prime_B,
              "kl": kl_B, "entropy": entropy_B}
    out = {}
    for k, v in values.items():
        v_PxS = v.reshape(P, samples)
        out[k] = jnp.mean(v_PxS)
        out[k + "_se"] = jnp.sqrt(jnp.mean(jnp.var(v_PxS, -1, ddof=1)) / (P * samples))
    spill = task_lib.spill_spec(task)
    out["spill"] = jnp.mean(_masked(task_lib.good_prob_PxK(spill, logits_BxLxV), spill, mask_BxL))  # P(token | prefix)
    if keep_samples:  # the responses themselves, with their rewards (indicators, not Rao-Blackwellised)
        reward_B = task_lib.rewards_B(task, tokens_BxL, mask_BxL, prompts_B)
        out |= {"sample_tokens": tokens_BxL, "sample_phi": reward_B[0], "sample_phi_prime": reward_B[1],
                "sample_mask": jnp.ones(tokens_BxL.shape, bool) if mask_BxL is None else mask_BxL}
    uniform_B = jnp.full(prompts_B.shape, 1.0 / samples)
    return out, tuple(_per_prompt_mean(g_BxK, uniform_B, P) for g_BxK in good_prob_BxK)


def sequence_metrics(task: Task, policy: Policy, params, ref_params, w: tuple, key: jax.Array,
                     samples: int, enumerate_max: int, keep_samples: bool = False, prompts_P: jax.Array | None = None
                     ) -> tuple[dict, tuple[jax.Array, jax.Array]]:
    """E[phi], E[phi_prime], E[w0*phi + w1*phi_prime], KL(pi || ref) and entropy of the response
    distribution, averaged over prompts, plus `<name>_se` when estimated by Monte Carlo, and
    `spill` (task.spill_spec, without a standard error); and for
    each reward the probability of a good token at each of its positions per prompt (PxK).
    `keep_samples` (Monte Carlo only): also the drawn responses, `sample_tokens` BxL (prompt-major),
    `sample_mask` BxL (Policy.response_mask) and their rewards `sample_phi`, `sample_phi_prime` B.
    `prompts_P` (Monte Carlo only): evaluate on these prompts of the policy's table instead of the
    task's P (a real model's held-out evaluation prompts)."""
    if enumerates(task, enumerate_max):
        return _enumerated(task, policy, params, ref_params, w)
    return _monte_carlo(task, policy, params, ref_params, w, key, samples, keep_samples, prompts_P)


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
