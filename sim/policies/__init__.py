"""Policy families behind one interface (`base.Policy`), registered by name in FAMILIES.

A family is one module (its config keys, `parse`, `build`), one line below and one YAML file in
conf/policy/. Everything else asks the registry: config.py which keys and parser a kind has,
train.py how to build it and whether it reads reference logits, the SFT stage which families it
trains (and the modules whose code its cache key hashes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from sim.policies import autoregressive, gru, lowrank, mlp, pretrained, tabular, transformer
from sim.policies.autoregressive import Arch
from sim.policies.base import BuildArgs, Policy
from sim.tasks.toy import Task

# What the loop needs to know of a family: where its reference comes from.
FACTORISED = "factorised"  # the task's reference logits, exactly (the world of the theory)
NEURAL = "neural"  # an autoregressive network whose reference is SFT-trained on the task's teacher
PRETRAINED = "pretrained"  # a real checkpoint; its frozen reference is shared by every run (train.py)


@dataclass(frozen=True)
class Family:
    kind: str  # FACTORISED | NEURAL | PRETRAINED
    keys: frozenset[str]  # the keys the policy section accepts
    parse: Callable[[Mapping], dict]  # config -> the family's fields of config.Static (one-line ConfigErrors)
    build: Callable[[BuildArgs], Policy]  # the run's policy, started exactly at its reference
    sections: Mapping[str, frozenset[str]] = field(default_factory=dict)  # "policy.<sub>" -> its keys
    list_keys: frozenset[str] = frozenset()  # static keys whose value is itself a list
    net: Callable[[Arch, Task], autoregressive.Net] | None = None  # neural: its network as pure functions
    sources: tuple[Any, ...] = ()  # modules whose code computes its reference (the SFT cache key hashes them)

    @property
    def needs_sft(self) -> bool:
        """Its reference is SFT-trained (sim/stages/references.py); config.py then reads policy.sft (sft.KEYS)."""
        return self.kind == NEURAL


def _neural(module) -> Family:
    return Family(NEURAL, frozenset(module.KEYS), module.parse, module.build,
                  {"policy.eval": frozenset(autoregressive.EVAL_KEYS)}, net=module.net, sources=(autoregressive, module))


FAMILIES: dict[str, Family] = {
    "tabular": Family(FACTORISED, frozenset(tabular.KEYS), tabular.parse, tabular.build),
    "lowrank": Family(FACTORISED, frozenset(lowrank.KEYS), lowrank.parse, lowrank.build),
    "mlp": _neural(mlp),
    "gru": _neural(gru),
    "transformer": _neural(transformer),
    "pretrained": Family(PRETRAINED, frozenset(pretrained.KEYS), pretrained.parse, pretrained.build,
                         {"policy.eval": frozenset(pretrained.EVAL_KEYS), "policy.lora": frozenset(pretrained.LORA_KEYS)},
                         list_keys=frozenset({"policy.lora.targets"})),
}


def register(name: str, family: Family) -> None:
    """Add a family (tests register toy ones); a name is registered once."""
    if name in FAMILIES:
        raise ValueError(f"policy family {name!r} is already registered")
    FAMILIES[name] = family


def names(kind: str | None = None) -> tuple[str, ...]:
    """The registered families (of one kind), in registration order: the allowed policy.kind values."""
    return tuple(n for n, f in FAMILIES.items() if kind is None or f.kind == kind)


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"policy.kind={name!r}; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def net(arch: Arch, task: Task) -> autoregressive.Net:
    """The network of a neural family, as pure functions of its params."""
    return family(arch.kind).net(arch, task)


def build(kind: str, args: BuildArgs) -> Policy:
    """The policy of family `kind`, started exactly at the reference (see BuildArgs)."""
    return family(kind).build(args)
