"""Independent logits per (prompt, position): no parameter is shared, the no-interference control."""
from __future__ import annotations

import jax

from sim.policies.base import BuildArgs, Policy, factorised

KEYS = {"kind"}


def make(ref_logits_PxLxV: jax.Array) -> Policy:
    return factorised(init=lambda: ref_logits_PxLxV, logits_fn=lambda logits_PxLxV: logits_PxLxV)


def parse(cfg) -> dict:
    return {}


def build(args: BuildArgs) -> Policy:
    return make(args.ref)
