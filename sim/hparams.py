"""The numeric knobs of a run (`hparams`: one float per run, so a batch of runs with different
values shares one compiled program): their config keys, their rules, which of them may be swept
in-process, and the competences solved from target kappas. config.py composes this section with
the others; sweep.py resolves each sweep point through `resolve_kappa_targets`.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping

from sim.analysis import geometry
from sim.config_values import (CLIP, EPS_HIGH, FINITE_NONNEG, KAPPA, POSITIVE, PROBABILITY, UNIT, ConfigError,
                               is_list, lookup, real, sweep_axis)
from sim.tasks.toy import Task

# hparam name -> its key in the config. Every numeric knob a sweep may vary lives here.
HPARAM_KEYS: dict[str, str] = {
    "w_phi": "task.phi.weight",
    "w_phi_prime": "task.phi_prime.weight",
    "competence_phi": "task.phi.competence",
    "competence_phi_prime": "task.phi_prime.competence",
    "competence_spread": "task.competence_spread",
    "overlap": "policy.overlap",
    "beta": "algo.kl.beta",
    "eps_low": "algo.loss.eps_low",
    "eps_high": "algo.loss.eps_high",
    "entropy_coef": "algo.loss.entropy_coef",
    "lr": "optim.lr",
    "max_grad_norm": "optim.max_grad_norm",
    # A target KL-cost asymmetry per reward (NaN = none); when set it decides the competence.
    "kappa_phi_target": "task.phi.kappa",
    "kappa_phi_prime_target": "task.phi_prime.kappa",
    "kappa_delta": "task.kappa_delta",
}

# Settings that are not hparams themselves but set hparams per sweep point (`sweep.resolve`):
# relative_weight r sets w_phi_prime = r * w_phi, so r = 0 drops phi_prime from the reward.
DERIVED_KEYS: dict[str, str] = {
    "relative_weight": "task.phi_prime.relative_weight",
    # a learned reward model's preference pairs and label noise: they select the run's proxy (sim/stages/proxy.py)
    "rm_pairs": "reward_model.pairs",
    "rm_noise": "reward_model.noise",
    "rm_seed": "reward_model.seed",
}
# Every key that may be given as a list, an in-process sweep axis (name -> config key).
SWEEP_KEYS: dict[str, str] = {**HPARAM_KEYS, **DERIVED_KEYS}

_RULES = {
    "w_phi": FINITE_NONNEG, "w_phi_prime": FINITE_NONNEG,
    "competence_phi": PROBABILITY, "competence_phi_prime": PROBABILITY,
    "competence_spread": FINITE_NONNEG, "overlap": UNIT, "beta": FINITE_NONNEG,
    "eps_low": UNIT, "eps_high": EPS_HIGH, "entropy_coef": FINITE_NONNEG,
    "lr": POSITIVE, "max_grad_norm": CLIP,
    "kappa_phi_target": KAPPA, "kappa_phi_prime_target": KAPPA, "kappa_delta": PROBABILITY,
    "relative_weight": FINITE_NONNEG,
    "rm_pairs": POSITIVE, "rm_noise": FINITE_NONNEG, "rm_seed": FINITE_NONNEG,
}
# Keys that may be absent (or null, for derived keys: not set), and what that means.
OPTIONAL = {"overlap": 0.0, "relative_weight": None, "rm_pairs": None, "rm_noise": None,
            "rm_seed": None}  # overlap: families without features ignore it
# the toy's hparams a text task has no use for (the reference is the checkpoint): NaN, so a use shows
TEXT_ABSENT = {"competence_phi": math.nan, "competence_phi_prime": math.nan, "competence_spread": 0.0,
               "kappa_phi_target": math.nan, "kappa_phi_prime_target": math.nan}


def parse(cfg: Mapping, optional: dict = OPTIONAL
          ) -> tuple[dict[str, float], dict[str, tuple[float, ...]], dict[str, float]]:
    """(hparams, axes, derived): scalars per hparam name, sweep axes per config key (in SWEEP_KEYS
    order), and the derived settings that are set to one value."""
    hparams, axes, derived = {}, {}, {}
    for name, key in SWEEP_KEYS.items():
        section, _, leaf = key.rpartition(".")
        absent = leaf not in lookup(cfg, section) or (name in DERIVED_KEYS and lookup(cfg, key) is None)
        if name in optional and absent:
            if name in HPARAM_KEYS:
                hparams[name] = optional[name]
            continue
        check, allowed = _RULES[name]
        v = lookup(cfg, key)
        if check is KAPPA[0] and v is None:
            hparams[name] = math.nan  # no target kappa: the competence stands
            continue
        if is_list(v):
            axes[key] = sweep_axis(key, v, check, allowed)
            value = axes[key][0]
        else:
            value = real(cfg, key, check, allowed)
        if name in HPARAM_KEYS:
            hparams[name] = value
        elif key not in axes:
            derived[name] = value
    rel = SWEEP_KEYS["relative_weight"]
    w2 = SWEEP_KEYS["w_phi_prime"]
    if w2 in axes and (rel in axes or "relative_weight" in derived):
        raise ConfigError(f"{w2}={list(axes[w2])}: cannot be swept while {rel} is set "
                          f"(it sets w2 = {rel} x task.phi.weight)")
    return hparams, axes, derived


def resolve_kappa_targets(task: Task, hp: dict[str, float]) -> dict[str, float]:
    """One sweep point's hparams with each reward's competence solved from its target kappa
    (where one is set). Idempotent; raises ConfigError naming the key when a target is unreachable."""
    out = dict(hp)
    for which, name in enumerate(("phi", "phi_prime")):
        target = hp[f"kappa_{name}_target"]
        if math.isnan(target):
            continue
        try:
            out[f"competence_{name}"] = geometry.competence_for_kappa(
                task, which, target, hp["kappa_delta"], hp["competence_spread"])
        except ValueError as e:
            spec = task.specs[which]
            raise ConfigError(f"task.{name}.kappa={target:g}: unreachable at task.kappa_delta={hp['kappa_delta']:g} "
                              f"for shape {spec.shape} over {len(spec.positions)} positions; {e}") from None
    return out


def check_kappa_axes(task: Task, hparams: dict[str, float], axes: dict[str, tuple[float, ...]]) -> None:
    """Every combination of swept values that a target kappa depends on must be reachable: found
    here, before compilation, rather than when sweep.expand resolves the points."""
    names = ("kappa_phi_target", "kappa_phi_prime_target", "kappa_delta", "competence_spread")
    keys = [HPARAM_KEYS[n] for n in names if HPARAM_KEYS[n] in axes]
    name_of = {HPARAM_KEYS[n]: n for n in names}
    for combo in itertools.product(*(axes[k] for k in keys)):
        resolve_kappa_targets(task, {**hparams, **{name_of[k]: v for k, v in zip(keys, combo)}})
