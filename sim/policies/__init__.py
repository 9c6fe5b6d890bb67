"""Policy families behind one interface (`base.Policy`); `build` picks one from the config."""
from __future__ import annotations

import jax

from sim.policies import autoregressive, gru, lowrank, mlp, pretrained, tabular, transformer
from sim.policies.autoregressive import Arch
from sim.policies.base import Params, Policy
from sim.tasks.toy import Task

FACTORISED = ("tabular", "lowrank")
NEURAL = ("mlp", "gru", "transformer")  # autoregressive networks; their reference comes from SFT
PRETRAINED = ("pretrained",)  # a real checkpoint; its frozen reference is shared by every run (train.py)
KINDS = FACTORISED + NEURAL + PRETRAINED


def net(arch: Arch, task: Task) -> autoregressive.Net:
    """The network of a neural family, as pure functions of its params."""
    return {"mlp": mlp.net, "gru": gru.net, "transformer": transformer.net}[arch.kind](arch, task)


def build(kind: str, task: Task, ref_logits_PxLxV: jax.Array, hp: dict, key: jax.Array, width: int = 0,
          arch: Arch | None = None, ref_params: Params | None = None,
          lm: pretrained.Settings | None = None) -> Policy:
    """The policy of family `kind`, started exactly at the reference. `key` draws fixed parts.

    Factorised families take the reference as logits; neural ones as their SFT-trained params;
    a pretrained checkpoint as `pretrained.Frozen` (its params and the task's prompt tokens)."""
    if kind == "tabular":
        return tabular.make(ref_logits_PxLxV)
    if kind == "lowrank":
        return lowrank.make(ref_logits_PxLxV, lowrank.features_PxLxD(task, width, hp["overlap"], key))
    if kind in NEURAL:
        if arch is None or ref_params is None:
            raise ValueError(f"policy.kind={kind!r} needs its architecture and SFT-trained reference params")
        return autoregressive.make(net(arch, task), ref_params, task)
    if kind == "pretrained":
        if lm is None or ref_params is None:
            raise ValueError("policy.kind='pretrained' needs its settings and the loaded checkpoint")
        return pretrained.make(lm, ref_params, task.length, key, task.prompts, pretrained.split_boundary(lm, task))
    raise ValueError(f"policy.kind={kind!r}; allowed: {', '.join(KINDS)}")
