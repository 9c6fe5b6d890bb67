"""A small causal transformer language model in plain JAX, and the transformer policy built on it.

The model is generic (the module a real-checkpoint path reuses): pre-norm blocks (RMSNorm,
multi-head causal self-attention, GELU feed-forward, residuals), learned or rotary positions,
an untied output head, and a key/value cache for decoding one token at a time. No biases, as in
Llama-style models. The blocks' parameters are stacked on a leading layer axis (one array per
kind of weight, as checkpoints are usually sharded); the layers are a Python loop, not a `scan`:
on CPU the backward pass of a scan over layers measured ~2x slower for these small models.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sim.config_values import ConfigError, choice, integer
from sim.policies import autoregressive as ar
from sim.policies.base import BuildArgs, Policy
from sim.tasks.toy import Task

KEYS = ar.KEYS | {"layers", "heads", "positions"}


@dataclass(frozen=True)
class Config:
    vocab_in: int
    vocab_out: int
    max_len: int
    d_model: int = 32
    layers: int = 2
    heads: int = 2
    d_ff: int = 64
    positions: str = "rope"  # learned | rope
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


def init(key: jax.Array, cfg: Config) -> dict:
    D, F, NL = cfg.d_model, cfg.d_ff, cfg.layers
    k = jax.random.split(key, 7)
    out_scale = 1.0 / jnp.sqrt(2.0 * NL)  # residual branches add up over 2*layers writes
    params = {
        "embed_VxD": jax.random.normal(k[0], (cfg.vocab_in, D)),
        "blocks": {
            "attn_norm_NxD": jnp.ones((NL, D)),
            "wqkv_NxDx3D": ar.dense_init(k[1], D, (NL, D, 3 * D)),
            "wo_NxDxD": ar.dense_init(k[2], D, (NL, D, D)) * out_scale,
            "mlp_norm_NxD": jnp.ones((NL, D)),
            "w_in_NxDxF": ar.dense_init(k[3], D, (NL, D, F)),
            "w_out_NxFxD": ar.dense_init(k[4], F, (NL, F, D)) * out_scale,
        },
        "final_norm_D": jnp.ones(D),
        "head_DxV": ar.dense_init(k[5], D, (D, cfg.vocab_out)),
    }
    if cfg.positions == "learned":
        params["pos_TxD"] = jax.random.normal(k[6], (cfg.max_len, D))
    return params


def _layer(params: dict, i: int) -> dict:
    """Block i's weights (the names keep the stacked shapes; here the leading N is gone)."""
    return {name: w[i] for name, w in params["blocks"].items()}


def rms_norm(x, scale, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def rope(x_BxTxHxK: jax.Array, pos_T: jax.Array, base: float) -> jax.Array:
    """Rotary embedding (rotate-half convention, as in Llama/GPT-NeoX)."""
    half = x_BxTxHxK.shape[-1] // 2
    freq_K2 = base ** (-jnp.arange(half) / half)
    angle_Tx1xK2 = (pos_T[:, None] * freq_K2)[:, None, :]
    cos, sin = jnp.cos(angle_Tx1xK2), jnp.sin(angle_Tx1xK2)
    x1, x2 = x_BxTxHxK[..., :half], x_BxTxHxK[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _embed(params, cfg: Config, ids_BxT, pos_T):
    x = params["embed_VxD"][ids_BxT]
    if cfg.positions == "learned":
        x = x + params["pos_TxD"][pos_T]
    return x


def _qkv(blk, cfg: Config, x_BxTxD, pos_T):
    B, T, _ = x_BxTxD.shape
    h = rms_norm(x_BxTxD, blk["attn_norm_NxD"], cfg.norm_eps)
    q, k, v = jnp.split((h @ blk["wqkv_NxDx3D"]).reshape(B, T, 3 * cfg.heads, cfg.head_dim), 3, 2)
    if cfg.positions == "rope":
        q, k = rope(q, pos_T, cfg.rope_base), rope(k, pos_T, cfg.rope_base)
    return q, k, v


def _attend(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_TxS):
    scores = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK) / jnp.sqrt(q_BxTxHxK.shape[-1])
    weights = jax.nn.softmax(jnp.where(mask_TxS, scores, -jnp.inf), -1)
    out = jnp.einsum("bhts,bshk->bthk", weights, v_BxSxHxK)
    return out.reshape(*out.shape[:2], -1)


def _mlp_residual(blk, cfg: Config, x_BxTxD):
    h = rms_norm(x_BxTxD, blk["mlp_norm_NxD"], cfg.norm_eps)
    return x_BxTxD + jax.nn.gelu(h @ blk["w_in_NxDxF"]) @ blk["w_out_NxFxD"]


def _head(params, cfg: Config, x):
    return rms_norm(x, params["final_norm_D"], cfg.norm_eps) @ params["head_DxV"]


def forward(params: dict, cfg: Config, ids_BxT: jax.Array) -> jax.Array:
    """Causal logits_BxTxV for every position of ids_BxT (teacher forcing)."""
    T = ids_BxT.shape[1]
    pos_T = jnp.arange(T)
    causal_TxT = pos_T[:, None] >= pos_T[None, :]

    x = _embed(params, cfg, ids_BxT, pos_T)
    for i in range(cfg.layers):
        blk = _layer(params, i)
        q, k, v = _qkv(blk, cfg, x, pos_T)
        x = x + _attend(q, k, v, causal_TxT) @ blk["wo_NxDxD"]
        x = _mlp_residual(blk, cfg, x)
    return _head(params, cfg, x)


def init_cache(cfg: Config, batch: int, dtype=jnp.float32) -> dict:
    shape = (cfg.layers, batch, cfg.max_len, cfg.heads, cfg.head_dim)
    return {"k_NxBxTxHxK": jnp.zeros(shape, dtype), "v_NxBxTxHxK": jnp.zeros(shape, dtype)}


def decode(params: dict, cfg: Config, cache: dict, ids_B: jax.Array, t: jax.Array) -> tuple[dict, jax.Array]:
    """Feed the token at position t (earlier positions are in the cache): (new cache, logits_BxV)."""
    pos_1 = jnp.reshape(t, (1,))
    visible_1xS = (jnp.arange(cfg.max_len) <= t)[None, :]
    k_all, v_all = cache["k_NxBxTxHxK"], cache["v_NxBxTxHxK"]
    x = _embed(params, cfg, ids_B[:, None], pos_1)
    for i in range(cfg.layers):
        blk = _layer(params, i)
        q, k, v = _qkv(blk, cfg, x, pos_1)
        k_all = jax.lax.dynamic_update_slice(k_all, k[None], (i, 0, t, 0, 0))
        v_all = jax.lax.dynamic_update_slice(v_all, v[None], (i, 0, t, 0, 0))
        x = x + _attend(q, k_all[i], v_all[i], visible_1xS) @ blk["wo_NxDxD"]
        x = _mlp_residual(blk, cfg, x)
    return {"k_NxBxTxHxK": k_all, "v_NxBxTxHxK": v_all}, _head(params, cfg, x)[:, 0]


def config(arch: ar.Arch, task: Task) -> Config:
    return Config(vocab_in=ar.input_vocab(task), vocab_out=task.vocab, max_len=task.length,
                  d_model=arch.d_model, layers=arch.layers, heads=arch.heads, d_ff=arch.hidden,
                  positions=arch.positions)


def net(arch: ar.Arch, task: Task) -> ar.Net:
    cfg = config(arch, task)
    return ar.Net(
        init=lambda key: init(key, cfg),
        logits=lambda params, ids_BxL: forward(params, cfg, ids_BxL),
        start=lambda params, batch: init_cache(cfg, batch),
        step=lambda params, cache, ids_B, t: decode(params, cfg, cache, ids_B, t),
    )


def parse(cfg) -> dict:
    widths = ar.widths(cfg)
    layers, heads = integer(cfg, "policy.layers", 1), integer(cfg, "policy.heads", 1)
    positions = choice(cfg, "policy.positions", ar.POSITIONS)
    if widths["d_model"] % heads or (positions == "rope" and widths["d_model"] // heads % 2):
        raise ConfigError(f"policy.heads={heads}: must divide policy.d_model={widths['d_model']}"
                          + (" into heads of even width (rope)" if positions == "rope" else ""))
    return ar.static_fields(cfg, ar.Arch("transformer", **widths, layers=layers, heads=heads, positions=positions))


def build(args: BuildArgs) -> Policy:
    return ar.build(net, args)
