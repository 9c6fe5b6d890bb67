"""A GRU policy: one gated recurrent cell reads the prompt token, then each sampled token."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sim.policies import autoregressive as ar
from sim.policies.base import BuildArgs, Policy
from sim.tasks.toy import Task

KEYS = ar.KEYS


def init(key: jax.Array, arch: ar.Arch, task: Task) -> dict:
    D, H = arch.d_model, arch.hidden
    k = jax.random.split(key, 5)
    return {
        "embed_VxD": jax.random.normal(k[0], (ar.input_vocab(task), D)),
        "pos_LxD": jax.random.normal(k[1], (task.length, D)),
        "w_x_Dx3H": ar.dense_init(k[2], D, (D, 3 * H)),  # input -> (update, reset, candidate)
        "w_h_Hx3H": ar.dense_init(k[3], H, (H, 3 * H)),
        "b_3H": jnp.zeros(3 * H),
        "head_HxV": ar.dense_init(k[4], H, (H, task.vocab)),
        "head_b_V": jnp.zeros(task.vocab),
    }


def cell(params: dict, h_BxH: jax.Array, x_BxD: jax.Array) -> jax.Array:
    """GRU update (Cho et al. 2014, with the reset gate applied after the recurrent matmul, as in cuDNN/PyTorch)."""
    H = h_BxH.shape[-1]
    gx = x_BxD @ params["w_x_Dx3H"] + params["b_3H"]
    gh = h_BxH @ params["w_h_Hx3H"]
    z = jax.nn.sigmoid(gx[:, :H] + gh[:, :H])
    r = jax.nn.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = jnp.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h_BxH


def _inputs(params, ids_B, t):
    return params["embed_VxD"][ids_B] + params["pos_LxD"][t]


def _head(params, h_BxH):
    return h_BxH @ params["head_HxV"] + params["head_b_V"]


def net(arch: ar.Arch, task: Task) -> ar.Net:
    def start(params, batch):
        return jnp.zeros((batch, arch.hidden))

    def step(params, h_BxH, ids_B, t):
        h_BxH = cell(params, h_BxH, _inputs(params, ids_B, t))
        return h_BxH, _head(params, h_BxH)

    def logits(params, ids_BxL):
        B, L = ids_BxL.shape
        _, logits_LxBxV = jax.lax.scan(lambda h, it: step(params, h, it[0], it[1]), start(params, B),
                                       (ids_BxL.T, jnp.arange(L)))
        return jnp.swapaxes(logits_LxBxV, 0, 1)

    return ar.Net(init=lambda key: init(key, arch, task), logits=logits, start=start, step=step)


def parse(cfg) -> dict:
    return ar.static_fields(cfg, ar.Arch("gru", **ar.widths(cfg)))


def build(args: BuildArgs) -> Policy:
    return ar.build(net, args)
