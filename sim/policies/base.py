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


class BuildArgs(NamedTuple):
    """What a family's `build` may read (sim/policies/__init__.py's registry): the run's task,
    hparams and key (which draws the family's fixed parts, e.g. features), its reference, and the
    static settings its parser gave (`Family.parse`: width, arch, lm)."""
    task: Any  # tasks.toy.Task
    hp: dict
    key: jax.Array
    # factorised: the reference logits [P, L, V]; neural: the SFT-trained params; pretrained: pretrained.Frozen
    ref: Any
    width: int = 0
    arch: Any = None  # autoregressive.Arch
    lm: Any = None  # pretrained.Settings
    settings: Any = None  # config.Static.settings: a registered family's own static settings


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
    # tokens_BxL -> mask_BxL, True where a token belongs to its response: a real model's response
    # ends at its first EOS (included) and the tokens drawn after it are out of log-probs, KL,
    # entropy, rewards and the loss. None: every token counts (fixed-length responses, the toys)
    response_mask: Callable[[jax.Array], jax.Array] | None = None
    # (params, prompts_P, tokens_BxL) -> logits_BxLxV for G = B / P responses to each of the P
    # prompts (prompt-major), each prompt computed once: a real model's prompt is most of a short
    # response's sequence. None: token_logits on the repeated prompts (see group_token_logits)
    group_token_logits: Callable[[Params, jax.Array, jax.Array], jax.Array] | None = None
    # (params, prompts_P, tokens_BxL) -> log-probs BxL as group_log_probs computes them, without
    # the BxLxV logits (a real model's head in chunks); None: from group_token_logits
    group_log_probs: Callable[[Params, jax.Array, jax.Array], jax.Array] | None = None
    # () -> the reference's params when they are not init()'s: a LoRA run's reference is the frozen
    # base with the adapters off (no adapters at all), not init()'s zero-effect adapters
    reference: Callable[[], Params] | None = None


def reference_params(policy: Policy) -> Params:
    return policy.init() if policy.reference is None else policy.reference()


def _repeat(prompts_P: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    return jnp.repeat(prompts_P, tokens_BxL.shape[0] // prompts_P.shape[0])


def group_token_logits(policy: Policy, params: Params, prompts_P: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """token_logits of B = P x G responses, G to each of prompts_P, prompt-major."""
    if policy.group_token_logits is not None:
        return policy.group_token_logits(params, prompts_P, tokens_BxL)
    return policy.token_logits(params, _repeat(prompts_P, tokens_BxL), tokens_BxL)


def group_log_probs(policy: Policy, params: Params, prompts_P: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """log_probs of B = P x G responses, G to each of prompts_P, prompt-major."""
    if policy.group_log_probs is not None:
        return policy.group_log_probs(params, prompts_P, tokens_BxL)
    if policy.group_token_logits is None:
        return policy.log_probs(params, _repeat(prompts_P, tokens_BxL), tokens_BxL)
    logp_BxLxV = jax.nn.log_softmax(policy.group_token_logits(params, prompts_P, tokens_BxL))
    return jnp.take_along_axis(logp_BxLxV, tokens_BxL[..., None], -1)[..., 0]


def prompt_major(prompts: int, per_prompt: int) -> jax.Array:
    """prompts_B of a batch of per_prompt responses to each prompt, prompt 0's first: the layout of
    every batch sim draws (a batch's per-prompt statistics reshape it to P x per_prompt)."""
    return jnp.repeat(jnp.arange(prompts), per_prompt)


def sample_inverse_cdf(key: jax.Array, cdf: jax.Array, axis: int = -1) -> jax.Array:
    """Exact categorical sampling with one uniform per token: index = #{k : cdf_k < u * cdf_V}, for
    cdfs along `axis`.

    jax.random.categorical draws V Gumbels per token; on CPU the random bits dominate the step,
    and this is ~20x faster for V = 16 (python -m sim.bench). A token of probability 0 is never
    drawn (its cdf step is empty)."""
    # compared and summed along a major axis, which XLA's CPU code vectorises: the sampling
    # roofline ran 1.5x faster than with the sum over the minor V axis (python -m sim.bench roofline)
    cdf_VxN = jnp.moveaxis(cdf, axis, 0)
    u_N = jax.random.uniform(key, cdf_VxN.shape[1:])
    return jnp.sum(cdf_VxN < u_N * cdf_VxN[-1], 0)


def vocab_major(logits_PxLxV: jax.Array) -> jax.Array:
    """A factorised policy's table as V x P x L, the layout its table work runs in (see factorised)."""
    return jnp.moveaxis(logits_PxLxV, -1, 0)


def cdf_table(logits_PxLxV: jax.Array) -> jax.Array:
    """cdf_VxPxL: each (prompt, position)'s cumulative next-token probabilities, vocab-major."""
    return jnp.cumsum(jax.nn.softmax(vocab_major(logits_PxLxV), 0), 0)


def sample_table(key: jax.Array, cdf_VxPxL: jax.Array, per_prompt: int) -> jax.Array:
    """per_prompt responses to each prompt from a factorised policy's cdf table, prompt-major. The
    table is broadcast over each prompt's responses rather than gathered per response (a gather
    of rows cost ~9% of a training step, python -m sim.bench)."""
    return sample_inverse_cdf(key, jnp.repeat(cdf_VxPxL, per_prompt, 1), axis=0)


def token_log_probs(logits_PxLxV: jax.Array, prompts_B: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """log pi(token) of each sampled token under a factorised policy with this logits table.
    One flat index per token into the vocab-major log-softmax: XLA builds gather (and, for the
    gradient, scatter) indices per index column and per vmapped batch, and with a (prompt,
    position, token) index that cost ~10% of a training step."""
    logp_VxPxL = jax.nn.log_softmax(vocab_major(logits_PxLxV), 0)
    _, P, L = logp_VxPxL.shape
    return logp_VxPxL.reshape(-1)[tokens_BxL * (P * L) + prompts_B[:, None] * L + jnp.arange(L)]


def factorised(init: Callable[[], Params], logits_fn: Callable[[Params], jax.Array]) -> Policy:
    """A policy whose positions are independent given the prompt, from its logits table.

    Softmax, cdf and log-softmax are taken once on the table, which is then broadcast over each
    prompt's responses (sampling) or read at the sampled tokens (log-probs). That work runs on the
    table laid out vocab-major (V x P x L), so that its reductions over V (max, sum, cumsum, the
    sampler's count) run along the major axis, where XLA's CPU code vectorises them; along the
    minor axis of 16 it did not, and training took ~30% longer (python -m sim.bench). A family whose
    logits come out of a product can compute them vocab-major, so that the transposes cancel
    (lowrank)."""

    def sample(params, key, per_prompt):
        return sample_table(key, cdf_table(logits_fn(params)), per_prompt)

    def token_logits(params, prompts_B, tokens_BxL):
        return logits_fn(params)[prompts_B]  # positions are independent: the tokens do not matter

    def log_probs(params, prompts_B, tokens_BxL):
        return token_log_probs(logits_fn(params), prompts_B, tokens_BxL)

    return Policy(init=init, sample=sample, log_probs=log_probs, marginals=logits_fn, token_logits=token_logits)
