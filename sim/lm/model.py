"""The Llama architecture in plain JAX: a pure function of a parameter pytree (layout: config.py).

    x = embed[ids]
    for each block (one `lax.scan` over the stacked layer axis N):
        x = x + attention(rms_norm(x)) @ wo          grouped-query, rotary positions, causal + padding mask
        x = x + (silu(h @ w_gate) * (h @ w_up)) @ w_down     h = rms_norm(x)
    logits = rms_norm(x) @ lm_head                    (or embed.T when the embeddings are tied)

Shapes: B batch, T query tokens, S key slots, D model width, H query heads, K key/value heads,
G = H/K queries per key/value head, Dh head width, F feed-forward width, V vocabulary, N layers.

Precision: the compute dtype is the parameters' dtype (float32 or bfloat16); norms, rotary angles,
attention scores and the softmax are computed in float32, and logits are returned in float32.

Masks: `mask_BxT` is True on real tokens. A query attends to keys at earlier or equal slots that
are real, so left padding changes nothing for real tokens (their positions are counted from the
first real token by the caller). A padded query sees no key; its scores are all a large negative
number (not -inf), so its output is finite garbage that callers mask out.

Key/value cache (sampling): `init_cache` preallocates N x B x S x K x Dh for S = prompt + new
tokens; `hidden_cached` writes the T new keys/values at slot `index` and attends over all S slots
with `kv_mask_BxS` (True on real slots; slots not yet written are excluded by causality).

LoRA: `_dense` adds a block's adapters; a position-split adapter (two sets, docs/real-models.md)
takes a per-slot set selector (`lora_set_BxT`, True: set 1) in `hidden`, `hidden_grouped` and
`hidden_cached`; which slot predicts which response position is the caller's (sampling.lora_set).

Other families: Qwen2 is Llama with biases on q/k/v (`cfg.attn_bias`, handled in `_attention`).
GPT-2 would add learned positions in `_embed`, a LayerNorm in `_norm` and a GELU branch in `_mlp`
(with the extra parameters in the layout): each is one function below, not a copy of the model.
"""
from __future__ import annotations

import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from sim.lm.config import LMConfig

_MASKED = -1e30  # finite, so a fully masked (padded) query gives a uniform softmax, not NaN


# ---------------------------------------------------------------- parameters
@partial(jax.jit, static_argnums=(0, 2))
def init_params(cfg: LMConfig, key: jax.Array, dtype=jnp.float32) -> dict:
    """Random parameters in the shared layout (tests and benchmarks): matrices ~ N(0, 1/fan_in) so
    activations stay O(1) at any depth; norm scales near 1 and biases near 0, but not exactly, so
    tests exercise them. All leaves are cut from one normal draw: each random call costs about a
    second of compilation on the CPU, one per leaf would cost ten."""
    N, D, F, V = cfg.layers, cfg.d_model, cfg.ffn, cfg.vocab
    HD, KD = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    spec = {"wq": ((N, D, HD), D ** -0.5), "wk": ((N, D, KD), D ** -0.5), "wv": ((N, D, KD), D ** -0.5),
            "wo": ((N, HD, D), HD ** -0.5), "w_gate": ((N, D, F), D ** -0.5), "w_up": ((N, D, F), D ** -0.5),
            "w_down": ((N, F, D), F ** -0.5), "attn_norm": ((N, D), 0.1), "mlp_norm": ((N, D), 0.1)}
    if cfg.attn_bias:
        spec |= {"bq": ((N, HD), 0.1), "bk": ((N, KD), 0.1), "bv": ((N, KD), 0.1)}
    top = {"embed": ((V, D), 1.0), "final_norm": ((D,), 0.1)}
    if not cfg.tied_embeddings:
        top["lm_head"] = ((D, V), D ** -0.5)
    sizes = [math.prod(shape) for shape, _ in [*spec.values(), *top.values()]]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    pieces = iter(jnp.split(flat, list(itertools.accumulate(sizes))[:-1]))
    draw = lambda shape, scale: scale * next(pieces).reshape(shape)  # noqa: E731
    params = {"blocks": {name: draw(*s) for name, s in spec.items()}} | {name: draw(*s) for name, s in top.items()}
    for norm in ("attn_norm", "mlp_norm"):
        params["blocks"][norm] += 1.0
    params["final_norm"] += 1.0
    return jax.tree.map(lambda a: a.astype(dtype), params)


# ---------------------------------------------------------------- pieces
def _norm(cfg: LMConfig, x_BxTxD: jax.Array, scale_D: jax.Array) -> jax.Array:
    """RMSNorm in float32, cast back before the scale (HF Llama's order)."""
    x32 = x_BxTxD.astype(jnp.float32)
    x32 = x32 * lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + cfg.norm_eps)
    return x32.astype(x_BxTxD.dtype) * scale_D


def _rotary(cfg: LMConfig, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles, B x T x Dh/2, float32: frequency i is theta^(-2i/Dh)."""
    inv_freq = cfg.rope_theta ** (-jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim)
    angle_BxTxR = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angle_BxTxR), jnp.sin(angle_BxTxR)


def _rotate(x_BxTxHxDh: jax.Array, cos_sin) -> jax.Array:
    """HF's rotate-half layout: element i of a head pairs with element i + Dh/2."""
    cos, sin = (c[:, :, None, :] for c in cos_sin)
    x32 = x_BxTxHxDh.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x_BxTxHxDh.dtype)


def lora_shapes(cfg: LMConfig, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(fan in, fan out) of each targeted matrix of a block."""
    HD, KD = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    io = {"wq": (cfg.d_model, HD), "wk": (cfg.d_model, KD), "wv": (cfg.d_model, KD), "wo": (HD, cfg.d_model),
          "w_gate": (cfg.d_model, cfg.ffn), "w_up": (cfg.d_model, cfg.ffn), "w_down": (cfg.ffn, cfg.d_model)}
    return {name: io[name] for name in targets}


def _dense(p: dict, name: str, x: jax.Array, lora_scale: float, lora_set=None) -> jax.Array:
    """x @ W, plus the low-rank adapter's (lora_scale) * (x @ A) @ B where the block has one for W
    (p["lora"][name], LoRA: Hu et al. 2021). B starts at 0, so an untrained adapter adds exactly 0.
    The adapter is cast to the compute dtype; its float32 master copy stays with the optimizer.

    Position-split adapters (`lora_set` given, True where a token slot uses set 1, broadcastable to
    x's leading axes): A and B carry a set axis of 2 after the layer axis; both sets run on every
    token and each token keeps its own set's product (`where`, so the other set gets an exactly zero
    gradient from it). Adapters are rank r: the second product costs ~r/D of the base matmul."""
    y = x @ p[name]
    adapter = p.get("lora", {}).get(name)
    if adapter is not None:
        a, b = adapter["a"].astype(x.dtype), adapter["b"].astype(x.dtype)
        if lora_set is None:
            y = y + lora_scale * ((x @ a) @ b)
        else:
            y0, y1 = (x @ a[0]) @ b[0], (x @ a[1]) @ b[1]
            y = y + lora_scale * jnp.where(jnp.asarray(lora_set)[..., None], y1, y0)
    return y


def _mlp(cfg: LMConfig, p: dict, h_BxTxD: jax.Array, lora_scale: float = 1.0, lora_set=None) -> jax.Array:
    gate, up = _dense(p, "w_gate", h_BxTxD, lora_scale, lora_set), _dense(p, "w_up", h_BxTxD, lora_scale, lora_set)
    return _dense(p, "w_down", jax.nn.silu(gate) * up, lora_scale, lora_set)


def _attend(cfg: LMConfig, q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, allowed_BxTxS) -> jax.Array:
    """Softmax attention; query head h uses key/value head h // G (HF's repeat_kv), done by a
    grouped einsum instead of materialising the repeated keys."""
    B, T, H, Dh = q_BxTxHxDh.shape
    K = cfg.kv_heads
    q_BxTxKxGxDh = q_BxTxHxDh.reshape(B, T, K, H // K, Dh)
    s_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxDh, k_BxSxKxDh,
                             preferred_element_type=jnp.float32) * Dh ** -0.5
    s_BxKxGxTxS = jnp.where(allowed_BxTxS[:, None, None], s_BxKxGxTxS, _MASKED)
    w_BxKxGxTxS = jax.nn.softmax(s_BxKxGxTxS, -1).astype(v_BxSxKxDh.dtype)
    o_BxTxKxGxDh = jnp.einsum("bkgts,bskd->btkgd", w_BxKxGxTxS, v_BxSxKxDh)
    return o_BxTxKxGxDh.reshape(B, T, H * Dh)


def _qkv(cfg: LMConfig, p: dict, h_BxTxD: jax.Array, cos_sin, lora_scale: float = 1.0, lora_set=None):
    B, T, _ = h_BxTxD.shape
    q, k, v = (_dense(p, w, h_BxTxD, lora_scale, lora_set) for w in ("wq", "wk", "wv"))
    if cfg.attn_bias:  # Qwen2
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    q_BxTxHxDh = _rotate(q.reshape(B, T, cfg.heads, cfg.head_dim), cos_sin)
    k_BxTxKxDh = _rotate(k.reshape(B, T, cfg.kv_heads, cfg.head_dim), cos_sin)
    return q_BxTxHxDh, k_BxTxKxDh, v.reshape(B, T, cfg.kv_heads, cfg.head_dim)


def _embed(cfg: LMConfig, params: dict, ids_BxT: jax.Array) -> jax.Array:
    return jnp.take(params["embed"], ids_BxT, axis=0)


def head(params: dict, cfg: LMConfig, h_BxTxD: jax.Array) -> jax.Array:
    """Logits (float32) from final hidden states."""
    w_DxV = params["embed"].T if cfg.tied_embeddings else params["lm_head"]
    return jnp.matmul(h_BxTxD, w_DxV, preferred_element_type=jnp.float32)


# ---------------------------------------------------------------- the model
def _allowed_BxTxS(q_slot_T: jax.Array, kv_mask_BxS: jax.Array) -> jax.Array:
    """Causal (a key at a slot after the query's is hidden) and real keys only."""
    S = kv_mask_BxS.shape[1]
    return (jnp.arange(S)[None, :] <= q_slot_T[:, None])[None] & kv_mask_BxS[:, None, :]


def hidden(params: dict, cfg: LMConfig, ids_BxT: jax.Array, positions_BxT: jax.Array,
           mask_BxT: jax.Array, remat: bool = False, lora_scale: float = 1.0, lora_set_BxT=None) -> jax.Array:
    """Final-normed hidden states B x T x D of a whole sequence (training, teacher forcing).
    `lora_set_BxT` (broadcastable to B x T; None: one adapter set): True on the token slots that
    use a position-split adapter's set 1 (`_dense`)."""
    T = ids_BxT.shape[1]
    cos_sin = _rotary(cfg, positions_BxT)
    allowed = _allowed_BxTxS(jnp.arange(T), mask_BxT.astype(bool))
    lora = (lora_scale, lora_set_BxT)

    def block(x_BxTxD, p):
        q, k, v = _qkv(cfg, p, _norm(cfg, x_BxTxD, p["attn_norm"]), cos_sin, *lora)
        x_BxTxD = x_BxTxD + _dense(p, "wo", _attend(cfg, q, k, v, allowed), *lora)
        return x_BxTxD + _mlp(cfg, p, _norm(cfg, x_BxTxD, p["mlp_norm"]), *lora), None

    if remat:  # keep only each block's input for the backward pass; recompute the rest
        block = jax.checkpoint(block)
    x_BxTxD, _ = lax.scan(block, _embed(cfg, params, ids_BxT), params["blocks"])
    return _norm(cfg, x_BxTxD, params["final_norm"])


def _attend_grouped(cfg: LMConfig, q_BxNxHxDh, k_PxTxKxDh, v_PxTxKxDh, prompt_mask_PxT, k_BxNxKxDh, v_BxNxKxDh
                    ) -> jax.Array:
    """Attention of B = P x G continuations (prompt-major) to their prompt's keys and values, held
    once per prompt (P rows, never repeated G times), and causally to their own. The same softmax
    as `_attend` over the concatenated [prompt; continuation] slots, computed in two blocks."""
    B, N, H, Dh = q_BxNxHxDh.shape
    P, K = k_PxTxKxDh.shape[0], cfg.kv_heads
    q = q_BxNxHxDh.reshape(P, B // P, N, K, H // K, Dh)  # p g n k h d: h = queries per key/value head
    k_r, v_r = (x.reshape(P, B // P, N, K, Dh) for x in (k_BxNxKxDh, v_BxNxKxDh))
    s_prompt = jnp.einsum("pgnkhd,ptkd->pgkhnt", q, k_PxTxKxDh, preferred_element_type=jnp.float32) * Dh ** -0.5
    s_own = jnp.einsum("pgnkhd,pgmkd->pgkhnm", q, k_r, preferred_element_type=jnp.float32) * Dh ** -0.5
    s_prompt = jnp.where(prompt_mask_PxT[:, None, None, None, None, :], s_prompt, _MASKED)
    s_own = jnp.where(jnp.tril(jnp.ones((N, N), bool)), s_own, _MASKED)
    T = k_PxTxKxDh.shape[1]
    w = jax.nn.softmax(jnp.concatenate([s_prompt, s_own], -1), -1).astype(v_r.dtype)
    o = (jnp.einsum("pgkhnt,ptkd->pgnkhd", w[..., :T], v_PxTxKxDh)
         + jnp.einsum("pgkhnm,pgmkd->pgnkhd", w[..., T:], v_r))
    return o.reshape(B, N, H * Dh)


def hidden_grouped(params: dict, cfg: LMConfig, prompt_ids_PxT: jax.Array, prompt_mask_PxT: jax.Array,
                   ids_BxN: jax.Array, remat: bool = False, lora_scale: float = 1.0,
                   lora_sets: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """Teacher forcing of G continuations per prompt (B = P x G, prompt-major) with each prompt
    computed once: final-normed hidden states of the prompts (P x T x D, left-padded) and of the
    continuations (B x N x D). Equal to `hidden` on the concatenated [prompt; continuation]
    sequences up to float32 rounding, for 1/G of the prompts' work; gradients reach the
    prompt's keys and values through every continuation that attends to them.

    The dense layers run on the prompts' and continuations' tokens together (one M x D matmul,
    M = P*T + B*N); only the attention sees the two apart. `lora_sets`: a position-split adapter's
    set per slot (`_dense`), (prompt slots T, continuation slots N), the same for every row."""
    P, T = prompt_ids_PxT.shape
    B, N = ids_BxN.shape
    D = cfg.d_model
    pmask_PxT = prompt_mask_PxT.astype(bool)
    positions_PxT = positions_from_mask(pmask_PxT)
    positions_BxN = jnp.repeat(positions_PxT[:, -1:] + 1, B // P, 0) + jnp.arange(N)  # last prompt slot is real
    positions_1xM = jnp.concatenate([positions_PxT.reshape(-1), positions_BxN.reshape(-1)])[None]
    cos_sin = _rotary(cfg, positions_1xM)
    allowed_PxTxT = _allowed_BxTxS(jnp.arange(T), pmask_PxT)
    lora = (lora_scale, None)
    if lora_sets is not None:
        set_T, set_N = (jnp.broadcast_to(jnp.asarray(s, bool), (n,)) for s, n in zip(lora_sets, (T, N)))
        lora = (lora_scale, jnp.concatenate([jnp.tile(set_T, P), jnp.tile(set_N, B)])[None])

    def split(x_1xMx__):
        return x_1xMx__[0, :P * T].reshape(P, T, *x_1xMx__.shape[2:]), x_1xMx__[0, P * T:].reshape(B, N, *x_1xMx__.shape[2:])

    def block(x_1xMxD, p):
        q, k, v = (split(a) for a in _qkv(cfg, p, _norm(cfg, x_1xMxD, p["attn_norm"]), cos_sin, *lora))
        o_prompt = _attend(cfg, q[0], k[0], v[0], allowed_PxTxT).reshape(1, P * T, -1)
        o_cont = _attend_grouped(cfg, q[1], k[0], v[0], pmask_PxT, k[1], v[1]).reshape(1, B * N, -1)
        x_1xMxD = x_1xMxD + _dense(p, "wo", jnp.concatenate([o_prompt, o_cont], 1), *lora)
        return x_1xMxD + _mlp(cfg, p, _norm(cfg, x_1xMxD, p["mlp_norm"]), *lora), None

    if remat:
        block = jax.checkpoint(block)
    ids_1xM = jnp.concatenate([prompt_ids_PxT.reshape(-1), ids_BxN.reshape(-1)]).astype(jnp.int32)[None]
    x_1xMxD, _ = lax.scan(block, _embed(cfg, params, ids_1xM), params["blocks"])
    h_1xMxD = _norm(cfg, x_1xMxD, params["final_norm"])
    return h_1xMxD[0, :P * T].reshape(P, T, D), h_1xMxD[0, P * T:].reshape(B, N, D)


def forward(params: dict, cfg: LMConfig, ids_BxT: jax.Array, positions_BxT: jax.Array,
            mask_BxT: jax.Array, remat: bool = False, lora_scale: float = 1.0, lora_set_BxT=None) -> jax.Array:
    """Next-token logits B x T x V (float32) at every position."""
    return head(params, cfg, hidden(params, cfg, ids_BxT, positions_BxT, mask_BxT, remat, lora_scale, lora_set_BxT))


def init_cache(cfg: LMConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
    """Zeroed keys and values, N x B x S x K x Dh each, for S = `length` slots."""
    shape = (cfg.layers, batch, length, cfg.kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def hidden_cached(params: dict, cfg: LMConfig, ids_BxT: jax.Array, positions_BxT: jax.Array,
                  kv_mask_BxS: jax.Array, cache: dict, index, lora_scale: float = 1.0,
                  lora_set_BxT=None) -> tuple[jax.Array, dict]:
    """Hidden states of T new tokens placed at slots index .. index+T-1 of the cache, and the cache
    with their keys/values written. Prefill: index 0 and the whole prompt; decode: T = 1.
    `lora_set_BxT`: a position-split adapter's set of each new token (`hidden`).

    The cache is carried through the layer scan and updated in place (dynamic_update_slice on a
    loop carry), so a decode step copies nothing but the new keys and values."""
    T = ids_BxT.shape[1]
    cos_sin = _rotary(cfg, positions_BxT)
    allowed = _allowed_BxTxS(index + jnp.arange(T), kv_mask_BxS.astype(bool))
    lora = (lora_scale, lora_set_BxT)

    def block(carry, p_and_layer):
        x_BxTxD, k_NxBxSxKxDh, v_NxBxSxKxDh = carry
        p, layer = p_and_layer
        q, k, v = _qkv(cfg, p, _norm(cfg, x_BxTxD, p["attn_norm"]), cos_sin, *lora)
        k_NxBxSxKxDh = lax.dynamic_update_slice(k_NxBxSxKxDh, k[None].astype(k_NxBxSxKxDh.dtype), (layer, 0, index, 0, 0))
        v_NxBxSxKxDh = lax.dynamic_update_slice(v_NxBxSxKxDh, v[None].astype(v_NxBxSxKxDh.dtype), (layer, 0, index, 0, 0))
        o = _attend(cfg, q, k_NxBxSxKxDh[layer], v_NxBxSxKxDh[layer], allowed)
        x_BxTxD = x_BxTxD + _dense(p, "wo", o, *lora)
        x_BxTxD = x_BxTxD + _mlp(cfg, p, _norm(cfg, x_BxTxD, p["mlp_norm"]), *lora)
        return (x_BxTxD, k_NxBxSxKxDh, v_NxBxSxKxDh), None

    carry = (_embed(cfg, params, ids_BxT), cache["k"], cache["v"])
    (x_BxTxD, k, v), _ = lax.scan(block, carry, (params["blocks"], jnp.arange(cfg.layers)))
    return _norm(cfg, x_BxTxD, params["final_norm"]), {"k": k, "v": v}


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
    """Positions counted from each row's first real token (0 on left padding)."""
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), -1) - 1, 0)
