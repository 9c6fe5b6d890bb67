"""logits = reference + features . W: every (prompt, position) slot reads one shared matrix W.

Features are fixed per run. With random features, the smaller the width d compared with the
P*L slots, the more the slots' updates interfere (random sign, so it shows up only through
curvature and noise). `overlap` rho mixes each phi_prime slot's feature with the feature of a
phi slot of the same prompt, which makes the spill-over systematic: whatever raises phi's good
tokens at phi's positions also raises them at phi_prime's positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sim.config_values import integer
from sim.policies.base import BuildArgs, Policy, factorised, vocab_major
from sim.tasks.toy import Task

KEYS = {"kind", "width", "overlap"}  # overlap is an hparam (hparams.HPARAM_KEYS): sweepable


def features_PxLxD(task: Task, width: int, overlap: jax.Array, key: jax.Array) -> jax.Array:
    z_PxLxD = jax.random.normal(key, (task.prompts, task.length, width)) / jnp.sqrt(width)
    src, dst = jnp.array(task.phi.positions), jnp.array(task.phi_prime.positions)
    src = src[jnp.arange(dst.size) % src.size]  # pair the k-th phi_prime position with a phi one
    mixed_PxKxD = jnp.sqrt(1.0 - overlap**2) * z_PxLxD[:, dst] + overlap * z_PxLxD[:, src]
    return z_PxLxD.at[:, dst].set(mixed_PxKxD)


def make(ref_logits_PxLxV: jax.Array, features: jax.Array) -> Policy:
    V, D = ref_logits_PxLxV.shape[-1], features.shape[-1]
    ref_VxPxL = vocab_major(ref_logits_PxLxV)

    def logits_PxLxV(W_DxV):
        # computed vocab-major and handed over as P x L x V: factorised's transpose back cancels this
        # one (with the product laid out P x L x V, XLA transposed it every step: training ran ~8% slower)
        return jnp.moveaxis(ref_VxPxL + jnp.einsum("dv,pld->vpl", W_DxV, features), 0, -1)

    return factorised(init=lambda: jnp.zeros((D, V)), logits_fn=logits_PxLxV)


def parse(cfg) -> dict:
    return {"width": integer(cfg, "policy.width", 1)}


def build(args: BuildArgs) -> Policy:
    return make(args.ref, features_PxLxD(args.task, args.width, args.hp["overlap"], args.key))
