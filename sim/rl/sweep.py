"""From an Experiment to a batch of runs: sweep points x seeds, one row of hparams per run.

The sweep points are the cartesian product of the in-process axes (config keys given as lists),
the last axis varying fastest. Each point's hparams are resolved here, in one place: swept
values replace the configured ones, then derived settings (`hparams.DERIVED_KEYS`) set the
hparams they stand for. Runs of the same seed share their PRNG key across sweep points (common
random numbers), so differences between points are not blurred by different sampling noise.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from sim.config import Experiment
from sim.hparams import DERIVED_KEYS, HPARAM_KEYS, SWEEP_KEYS, resolve_kappa_targets

_NAME_OF_KEY = {key: name for name, key in SWEEP_KEYS.items()}


@dataclass(frozen=True)
class Batch:
    hparams_R: dict[str, np.ndarray]  # name -> value per run
    seeds_R: np.ndarray
    points_R: np.ndarray  # which sweep point each run belongs to
    point_values: list[dict]  # the swept values of each point, by config key ({} when nothing is swept)
    point_hparams: list[dict]  # the resolved hparams of each point

    @property
    def size(self) -> int:
        return len(self.seeds_R)

    @property
    def n_points(self) -> int:
        return len(self.point_values)


def resolve(hparams: dict[str, float], derived: dict[str, float]) -> dict[str, float]:
    """The hparams a sweep point trains with, given its derived settings."""
    hp = dict(hparams)
    if derived.get("relative_weight") is not None:
        hp["w_phi_prime"] = derived["relative_weight"] * hp["w_phi"]
    return hp


def point_values(exp: Experiment) -> list[dict[str, float]]:
    """The swept values of each sweep point (config key -> value), last axis fastest."""
    keys = list(exp.axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*exp.axes.values())]


def point_hparams(exp: Experiment, values: dict[str, float]) -> dict[str, float]:
    named = {_NAME_OF_KEY[k]: v for k, v in values.items()}
    hparams = {**exp.hparams, **{n: v for n, v in named.items() if n in HPARAM_KEYS}}
    derived = {**exp.derived, **{n: v for n, v in named.items() if n in DERIVED_KEYS}}
    # then each target kappa decides its competence (a kappa axis sweeps the competence)
    return resolve_kappa_targets(exp.static.task, resolve(hparams, derived))


def expand(exp: Experiment) -> Batch:
    values_N = point_values(exp)
    hp_N = [point_hparams(exp, v) for v in values_N]
    seeds = np.array(exp.seeds)
    n, S = len(values_N), len(seeds)
    hparams_R = {k: np.repeat(np.array([hp[k] for hp in hp_N], np.float32), S) for k in exp.hparams}
    return Batch(hparams_R, np.tile(seeds, n), np.repeat(np.arange(n), S), values_N, hp_N)
