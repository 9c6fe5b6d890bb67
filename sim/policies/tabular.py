"""Independent logits per (prompt, position): no parameter is shared, the no-interference control."""
from __future__ import annotations

import jax

from sim.policies.base import Policy, factorised


def make(ref_logits_PxLxV: jax.Array) -> Policy:
    return factorised(init=lambda: ref_logits_PxLxV, logits_fn=lambda logits_PxLxV: logits_PxLxV)
