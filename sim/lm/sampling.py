"""Sampling responses with the key/value cache, and teacher-forced log-probs on the same layout.

Layout: prompts are LEFT-padded to T slots (`prompt_mask_BxT` True on real tokens; the pad id is
irrelevant: padding is given by the mask, never by comparing ids, so a pad id equal to EOS cuts
nothing short). Positions count from each prompt's first real token. A response is exactly N new
tokens at slots T .. T+N-1, positions n_real .. n_real+N-1, so sampling and teacher forcing see
the same sequence at the same positions.

After EOS a response is finished: `generate` keeps decoding (shapes are fixed) and its later
tokens are whatever was sampled; `response_mask` is the one place that says which tokens count.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from sim.lm import model
from sim.lm.config import LMConfig


def filter_logits(logits_BxV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits with the tokens outside the top k (0: no limit) and outside the nucleus (the smallest
    set of most probable tokens whose probability reaches top_p; 1: no limit) set to -inf."""
    if top_k:
        kth_B = lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_B, -jnp.inf, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, -1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, -1)
        before_BxV = jnp.cumsum(probs_BxV, -1) - probs_BxV  # probability of the more likely tokens
        # the least likely token kept: the last one whose predecessors have not yet reached top_p
        cutoff_B = jnp.min(jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf), -1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_B, -jnp.inf, logits_BxV)
    return logits_BxV


def _sample(key, logits_BxV, temperature, top_k: int, top_p: float) -> jax.Array:
    """Temperature 0 is greedy (argmax); the branch is a `where`, so temperature may be traced."""
    greedy_B = jnp.argmax(logits_BxV, -1)
    safe_t = jnp.where(temperature > 0, temperature, 1.0)
    sampled_B = jax.random.categorical(key, filter_logits(logits_BxV / safe_t, top_k, top_p), -1)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@partial(jax.jit, static_argnames=("cfg", "new_tokens", "top_k", "top_p"))
def generate(params: dict, cfg: LMConfig, key: jax.Array, prompt_ids_BxT: jax.Array, prompt_mask_BxT: jax.Array,
             new_tokens: int, temperature=1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """N = new_tokens sampled tokens per prompt, B x N int32: one prefill of the prompts into a cache
    of T + N slots, then N - 1 single-token decode steps in one `lax.scan`. The i-th token is drawn
    with the i-th of N keys split from `key`."""
    B, T = prompt_ids_BxT.shape
    N = new_tokens
    kv_mask_BxS = jnp.concatenate([prompt_mask_BxT.astype(bool), jnp.ones((B, N), bool)], 1)
    positions_BxT = model.positions_from_mask(prompt_mask_BxT)
    cache = model.init_cache(cfg, B, T + N, params["embed"].dtype)
    h_BxTxD, cache = model.hidden_cached(params, cfg, prompt_ids_BxT, positions_BxT, kv_mask_BxS, cache, 0)
    keys = jax.random.split(key, N)
    first_B = _sample(keys[0], model.head(params, cfg, h_BxTxD[:, -1:])[:, 0], temperature, top_k, top_p)
    next_position_B = positions_BxT[:, -1] + 1  # the last prompt slot is real (left padding)

    def step(carry, key_i):
        cache, token_B, i = carry  # token i of the response, at slot T + i
        h_Bx1xD, cache = model.hidden_cached(params, cfg, token_B[:, None], (next_position_B + i)[:, None],
                                             kv_mask_BxS, cache, T + i)
        new_B = _sample(key_i, model.head(params, cfg, h_Bx1xD)[:, 0], temperature, top_k, top_p)
        return (cache, new_B, i + 1), new_B

    _, rest_NxB = lax.scan(step, (cache, first_B, 0), keys[1:])
    return jnp.concatenate([first_B[:, None], rest_NxB.T], 1)


def response_mask(tokens_BxN: jax.Array, eos_id: int | None) -> jax.Array:
    """True on a response's tokens up to and including its first EOS (all True without EOS)."""
    if eos_id is None:
        return jnp.ones(tokens_BxN.shape, bool)
    is_eos_BxN = tokens_BxN == eos_id
    return (jnp.cumsum(is_eos_BxN, -1) - is_eos_BxN) == 0  # no EOS strictly before


def response_log_probs(params: dict, cfg: LMConfig, prompt_ids_BxT: jax.Array, prompt_mask_BxT: jax.Array,
                       tokens_BxN: jax.Array, remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced log pi(token_i | prompt, tokens_<i), B x N, and the logits B x N x V (float32)
    they come from: one forward pass over prompt + response; the head only on the N positions that
    predict response tokens. Not masked after EOS: multiply by `response_mask`."""
    B, T = prompt_ids_BxT.shape
    N = tokens_BxN.shape[1]
    ids_BxL = jnp.concatenate([jnp.asarray(prompt_ids_BxT, jnp.int32), jnp.asarray(tokens_BxN, jnp.int32)], 1)
    mask_BxL = jnp.concatenate([prompt_mask_BxT.astype(bool), jnp.ones((B, N), bool)], 1)
    h_BxLxD = model.hidden(params, cfg, ids_BxL, model.positions_from_mask(mask_BxL), mask_BxL, remat)
    logits_BxNxV = model.head(params, cfg, h_BxLxD[:, T - 1:T + N - 1])
    logp_BxNxV = jax.nn.log_softmax(logits_BxNxV, -1)
    return jnp.take_along_axis(logp_BxNxV, ids_BxL[:, T:, None], -1)[..., 0], logits_BxNxV
