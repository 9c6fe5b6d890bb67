"""An MLP policy: the next token's logits from the prompt, the position and the last `window` inputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sim.policies import autoregressive as ar
from sim.config_values import integer
from sim.policies.base import BuildArgs, Policy
from sim.tasks.toy import Task

KEYS = ar.KEYS | {"layers", "window"}


def init(key: jax.Array, arch: ar.Arch, task: Task) -> dict:
    D, H, W = arch.d_model, arch.hidden, arch.window
    k = jax.random.split(key, 3 + arch.layers)
    widths = [(W + 2) * D] + [H] * arch.layers  # input: prompt, position, window of W ids
    return {
        "embed_VxD": jax.random.normal(k[0], (ar.input_vocab(task), D)),
        "pos_LxD": jax.random.normal(k[1], (task.length, D)),
        "hidden": [{"w": ar.dense_init(k[3 + i], a, (a, b)), "b": jnp.zeros(b)}
                   for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))],
        "head_HxV": ar.dense_init(k[2], H, (H, task.vocab)),
        "head_b_V": jnp.zeros(task.vocab),
    }


def apply(params: dict, prompt_ids_B: jax.Array, window_BxW: jax.Array, t) -> jax.Array:
    """logits_BxV from the prompt id, the position t and the last W input ids (oldest first)."""
    B = window_BxW.shape[0]
    parts = [params["embed_VxD"][prompt_ids_B], jnp.broadcast_to(params["pos_LxD"][t], (B, params["pos_LxD"].shape[1])),
             params["embed_VxD"][window_BxW].reshape(B, -1)]
    x = jnp.concatenate(parts, -1)
    for layer in params["hidden"]:
        x = jax.nn.gelu(x @ layer["w"] + layer["b"])
    return x @ params["head_HxV"] + params["head_b_V"]


def net(arch: ar.Arch, task: Task) -> ar.Net:
    W, pad = arch.window, ar.pad_id(task)

    def start(params, batch):
        # (prompt id, last W ids); the prompt id is the first id fed, at t = 0
        return jnp.full((batch,), pad, jnp.int32), jnp.full((batch, W), pad, jnp.int32)

    def step(params, state, ids_B, t):
        prompt_B, window_BxW = state
        prompt_B = jnp.where(t == 0, ids_B, prompt_B)
        window_BxW = jnp.concatenate([window_BxW[:, 1:], ids_B[:, None]], 1)
        return (prompt_B, window_BxW), apply(params, prompt_B, window_BxW, t)

    def logits(params, ids_BxL):
        B, L = ids_BxL.shape
        padded_BxWL = jnp.concatenate([jnp.full((B, W - 1), pad, jnp.int32), ids_BxL], 1)
        windows_BxLxW = padded_BxWL[:, jnp.arange(L)[:, None] + jnp.arange(W)[None, :]]
        out = jax.vmap(lambda win_BxW, t: apply(params, ids_BxL[:, 0], win_BxW, t), in_axes=(1, 0), out_axes=1)
        return out(windows_BxLxW, jnp.arange(L))

    return ar.Net(init=lambda key: init(key, arch, task), logits=logits, start=start, step=step)


def parse(cfg) -> dict:
    arch = ar.Arch("mlp", **ar.widths(cfg), layers=integer(cfg, "policy.layers", 1),
                   window=integer(cfg, "policy.window", 1))
    return ar.static_fields(cfg, arch)


def build(args: BuildArgs) -> Policy:
    return ar.build(net, args)
