"""Sampling responses with the key/value cache, and teacher-forced log-probs on the same layout.

Layout: prompts are LEFT-padded to T slots (`prompt_mask_BxT` True on real tokens; the pad id is
irrelevant: padding is given by the mask, never by comparing ids, so a pad id equal to EOS cuts
nothing short). Positions count from each prompt's first real token. A response is exactly N new
tokens at slots T .. T+N-1, positions n_real .. n_real+N-1, so sampling and teacher forcing see
the same sequence at the same positions.

After EOS a response is finished: `generate` keeps decoding (shapes are fixed) and its later
tokens are whatever was sampled; `response_mask` is the one place that says which tokens count.

Position-split LoRA (`lora_split_at`, an int; None: one adapter set): the slot that predicts
response token i uses adapter set 1 if i >= lora_split_at, else set 0 (`lora_set`); every prompt
slot but the last predicts no response token (set 0), the last predicts token 0.
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


def lora_set(predicted_positions, split_at: int | None):
    """A position-split adapter's set of each slot, from the response position of the token the slot
    predicts (negative for prompt slots before the last): True (set 1) from split_at on; None
    without a split."""
    return None if split_at is None else jnp.asarray(predicted_positions) >= split_at


def _sample(key, logits_BxV, temperature, top_k: int, top_p: float) -> jax.Array:
    """Temperature 0 is greedy (argmax); the branch is a `where`, so temperature may be traced."""
    greedy_B = jnp.argmax(logits_BxV, -1)
    safe_t = jnp.where(temperature > 0, temperature, 1.0)
    sampled_B = jax.random.categorical(key, filter_logits(logits_BxV / safe_t, top_k, top_p), -1)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@partial(jax.jit, static_argnames=("cfg", "new_tokens", "top_k", "top_p", "per_prompt", "lora_scale",
                                   "lora_split_at"))
def generate(params: dict, cfg: LMConfig, key: jax.Array, prompt_ids_PxT: jax.Array, prompt_mask_PxT: jax.Array,
             new_tokens: int, temperature=1.0, top_k: int = 0, top_p: float = 1.0, per_prompt: int = 1,
             lora_scale: float = 1.0, lora_split_at: int | None = None) -> jax.Array:
    """N = new_tokens sampled tokens for each of `per_prompt` responses to each prompt, B x N int32
    with B = P x per_prompt, prompt-major: one prefill of the P prompts into a cache of T + N slots,
    that cache repeated per_prompt times (a group's prompt is computed once), then N - 1
    single-token decode steps in one `lax.scan`. The i-th token is drawn with the i-th of N keys
    split from `key`."""
    P, T = prompt_ids_PxT.shape
    G, N = per_prompt, new_tokens
    positions_PxT = model.positions_from_mask(prompt_mask_PxT)
    kv_mask_PxS = jnp.concatenate([prompt_mask_PxT.astype(bool), jnp.ones((P, N), bool)], 1)
    cache = model.init_cache(cfg, P, T + N, params["embed"].dtype)
    h_PxTxD, cache = model.hidden_cached(params, cfg, prompt_ids_PxT, positions_PxT, kv_mask_PxS, cache, 0, lora_scale,
                                         lora_set(jnp.arange(T) + 1 - T, lora_split_at))
    cache = jax.tree.map(lambda c_NxPxSxKxDh: jnp.repeat(c_NxPxSxKxDh, G, 1), cache)
    kv_mask_BxS = jnp.repeat(kv_mask_PxS, G, 0)
    keys = jax.random.split(key, N)
    first_logits_BxV = jnp.repeat(model.head(params, cfg, h_PxTxD[:, -1:])[:, 0], G, 0)
    first_B = _sample(keys[0], first_logits_BxV, temperature, top_k, top_p)
    next_position_B = jnp.repeat(positions_PxT[:, -1] + 1, G, 0)  # the last prompt slot is real (left padding)

    def step(carry, key_i):
        cache, token_B, i = carry  # token i of the response, at slot T + i
        h_Bx1xD, cache = model.hidden_cached(params, cfg, token_B[:, None], (next_position_B + i)[:, None],
                                             kv_mask_BxS, cache, T + i, lora_scale, lora_set(i + 1, lora_split_at))
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
                       tokens_BxN: jax.Array, remat: bool = False, lora_scale: float = 1.0,
                       lora_split_at: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced log pi(token_i | prompt, tokens_<i), B x N, and the logits B x N x V (float32)
    they come from: one forward pass over prompt + response; the head only on the N positions that
    predict response tokens. Not masked after EOS: multiply by `response_mask`."""
    B, T = prompt_ids_BxT.shape
    N = tokens_BxN.shape[1]
    ids_BxL = jnp.concatenate([jnp.asarray(prompt_ids_BxT, jnp.int32), jnp.asarray(tokens_BxN, jnp.int32)], 1)
    mask_BxL = jnp.concatenate([prompt_mask_BxT.astype(bool), jnp.ones((B, N), bool)], 1)
    h_BxLxD = model.hidden(params, cfg, ids_BxL, model.positions_from_mask(mask_BxL), mask_BxL, remat, lora_scale,
                           lora_set(jnp.arange(T + N) + 1 - T, lora_split_at))
    logits_BxNxV = model.head(params, cfg, h_BxLxD[:, T - 1:T + N - 1])
    logp_BxNxV = jax.nn.log_softmax(logits_BxNxV, -1)
    return jnp.take_along_axis(logp_BxNxV, ids_BxL[:, T:, None], -1)[..., 0], logits_BxNxV


def _group_hidden(params, cfg, prompt_ids_PxT, prompt_mask_PxT, tokens_BxN, remat, lora_scale, lora_split_at
                  ) -> jax.Array:
    """The final hidden states that predict each response token, B x N x D: the prompt's last slot
    (token 0, computed once per prompt) and response slot i - 1 (token i)."""
    P, T = prompt_ids_PxT.shape
    N = tokens_BxN.shape[1]
    sets = None if lora_split_at is None else (lora_set(jnp.arange(T) + 1 - T, lora_split_at),
                                               lora_set(jnp.arange(N) + 1, lora_split_at))
    h_PxTxD, h_BxNxD = model.hidden_grouped(params, cfg, prompt_ids_PxT, prompt_mask_PxT, tokens_BxN, remat,
                                            lora_scale, sets)
    return jnp.concatenate([jnp.repeat(h_PxTxD[:, -1:], tokens_BxN.shape[0] // P, 0), h_BxNxD[:, :-1]], 1)


def group_log_probs(params: dict, cfg: LMConfig, prompt_ids_PxT: jax.Array, prompt_mask_PxT: jax.Array,
                    tokens_BxN: jax.Array, remat: bool = False, lora_scale: float = 1.0,
                    lora_split_at: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`response_log_probs` of B = P x G responses, G to each prompt (prompt-major), with each
    prompt computed once (model.hidden_grouped)."""
    logits_BxNxV = model.head(params, cfg, _group_hidden(params, cfg, prompt_ids_PxT, prompt_mask_PxT, tokens_BxN,
                                                         remat, lora_scale, lora_split_at))
    logp_BxNxV = jax.nn.log_softmax(logits_BxNxV, -1)
    return jnp.take_along_axis(logp_BxNxV, jnp.asarray(tokens_BxN, jnp.int32)[..., None], -1)[..., 0], logits_BxNxV


HEAD_CHUNK = 256  # response tokens whose logits exist at once in group_token_log_probs


def group_token_log_probs(params: dict, cfg: LMConfig, prompt_ids_PxT: jax.Array, prompt_mask_PxT: jax.Array,
                          tokens_BxN: jax.Array, remat: bool = False, lora_scale: float = 1.0,
                          temperature=1.0, chunk: int = HEAD_CHUNK, lora_split_at: int | None = None) -> jax.Array:
    """log softmax(logits / temperature) at each response token, B x N, as group_log_probs, but
    without ever holding the B x N x V logits: the head and its log-softmax run on `chunk` tokens at
    a time and are recomputed in the backward pass (jax.checkpoint), so only the B x N x D hidden
    states are kept. At SmolLM2's 49k vocabulary the logits were most of a step's memory."""
    B, N = tokens_BxN.shape
    h_BNxD = _group_hidden(params, cfg, prompt_ids_PxT, prompt_mask_PxT, tokens_BxN, remat, lora_scale, lora_split_at)
    h_BNxD = h_BNxD.reshape(B * N, -1)
    tokens_BN = jnp.asarray(tokens_BxN, jnp.int32).reshape(-1)
    pad = -(B * N) % chunk
    h_KxCxD = jnp.pad(h_BNxD, ((0, pad), (0, 0))).reshape(-1, chunk, h_BNxD.shape[-1])
    tokens_KxC = jnp.pad(tokens_BN, (0, pad)).reshape(-1, chunk)

    @jax.checkpoint
    def one(h_CxD, tokens_C):
        logp_CxV = jax.nn.log_softmax(model.head(params, cfg, h_CxD) / temperature, -1)
        return jnp.take_along_axis(logp_CxV, tokens_C[:, None], -1)[:, 0]

    logp_KxC = lax.map(lambda a: one(*a), (h_KxCxD, tokens_KxC))
    return logp_KxC.reshape(-1)[:B * N].reshape(B, N)
