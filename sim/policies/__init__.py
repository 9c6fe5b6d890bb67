"""Policy families behind one interface (`base.Policy`); `build` picks one from the config."""
from __future__ import annotations

import jax

from sim.policies import lowrank, tabular
from sim.policies.base import Policy
from sim.task import Task

KINDS = ("tabular", "lowrank")
FACTORISED = ("tabular", "lowrank")  # positions independent given the prompt: exact per-position marginals


def build(kind: str, task: Task, ref_logits_PxLxV: jax.Array, hp: dict, key: jax.Array, width: int = 0) -> Policy:
    """The policy of family `kind`, started exactly at the reference. `key` draws fixed parts."""
    if kind == "tabular":
        return tabular.make(ref_logits_PxLxV)
    if kind == "lowrank":
        return lowrank.make(ref_logits_PxLxV, lowrank.features_PxLxD(task, width, hp["overlap"], key))
    raise ValueError(f"policy.kind={kind!r}; allowed: {', '.join(KINDS)}")
