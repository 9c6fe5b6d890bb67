"""The one interface every policy family implements.

A `Policy` is a bundle of pure functions closed over the family's frozen parts (reference
logits, features, ...). `params` holds only what training changes; `init()` returns the params
at which the policy equals the reference, so the reference is always `init()` itself.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Params = Any


class Policy(NamedTuple):
    init: Callable[[], Params]
    # (params, key, per_prompt) -> tokens_BxL: per_prompt responses to each of the task's P prompts,
    # prompt-major (B = P * per_prompt, prompts_B = prompt_major(P, per_prompt))
    sample: Callable[[Params, jax.Array, int], jax.Array]
    # (params, prompts_B, tokens_BxL) -> log pi(token_t | prompt, tokens_<t), shape BxL
    log_probs: Callable[[Params, jax.Array, jax.Array], jax.Array]
    # factorised families only: (params) -> logits_PxLxV, the exact per-position marginals
    marginals: Callable[[Params], jax.Array] | None = None
    # (params, prompts_B, tokens_BxL) -> logits_BxLxV of each token's next-token distribution
    # (teacher-forced); the entropy bonus and the exact per-token KL read the full distribution
    token_logits: Callable[[Params, jax.Array, jax.Array], jax.Array] | None = None


def prompt_major(prompts: int, per_prompt: int) -> jax.Array:
    """prompts_B of a batch of per_prompt responses to each prompt, prompt 0's first: the layout of
    every batch sim draws (a batch's per-prompt statistics reshape it to P x per_prompt)."""
    return jnp.repeat(jnp.arange(prompts), per_prompt)


def sample_inverse_cdf(key: jax.Array, cdf_NxV: jax.Array) -> jax.Array:
    """Exact categorical sampling with one uniform per token: index = #{k : cdf_k < u * cdf_V}.

    jax.random.categorical draws V Gumbels per token; on CPU the random bits dominate the step,
    and this is ~20x faster for V = 16 (python -m sim.bench). A token of probability 0 is never
    drawn (its cdf step is empty)."""
    u_N = jax.random.uniform(key, cdf_NxV.shape[:-1])
    # compared and summed along a major axis, which XLA's CPU code vectorises: the sampling
    # roofline ran 1.5x faster than with the sum over the minor V axis (python -m sim.bench roofline)
    cdf_VxN = jnp.moveaxis(cdf_NxV, -1, 0)
    return jnp.sum(cdf_VxN < u_N * cdf_VxN[-1], 0)


def sample_table(key: jax.Array, cdf_PxLxV: jax.Array, per_prompt: int) -> jax.Array:
    """per_prompt responses to each prompt from a factorised policy's cdf table, prompt-major. The
    table is broadcast over each prompt's responses rather than gathered per response (a gather
    of rows cost ~9% of a training step, python -m sim.bench)."""
    return sample_inverse_cdf(key, jnp.repeat(cdf_PxLxV, per_prompt, 0))


def token_log_probs(logp_PxLxV: jax.Array, prompts_B: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """log pi(token) of each sampled token, read from a factorised policy's log-probability table.
    One flat index per token: XLA builds gather (and, for the gradient, scatter) indices per index
    column and per vmapped batch, and with a (prompt, position, token) index that cost ~10% of a
    training step."""
    _, L, V = logp_PxLxV.shape
    return logp_PxLxV.reshape(-1)[(prompts_B[:, None] * L + jnp.arange(L)) * V + tokens_BxL]


def factorised(init: Callable[[], Params], logits_fn: Callable[[Params], jax.Array]) -> Policy:
    """A policy whose positions are independent given the prompt, from its logits table.

    Softmax, cdf and log-softmax are taken once on the P x L x V table, which is then broadcast
    over each prompt's responses (sampling) or read at the sampled tokens (log-probs)."""

    def sample(params, key, per_prompt):
        return sample_table(key, jnp.cumsum(jax.nn.softmax(logits_fn(params)), -1), per_prompt)

    def token_logits(params, prompts_B, tokens_BxL):
        return logits_fn(params)[prompts_B]  # positions are independent: the tokens do not matter

    def log_probs(params, prompts_B, tokens_BxL):
        return token_log_probs(jax.nn.log_softmax(logits_fn(params)), prompts_B, tokens_BxL)

    return Policy(init=init, sample=sample, log_probs=log_probs, marginals=logits_fn, token_logits=token_logits)
