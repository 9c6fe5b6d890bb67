"""From an Experiment to a batch of runs: sweep points x seeds, one row of hparams per run.

Runs of the same seed share their PRNG key across sweep points (common random numbers), so
differences between points are not blurred by different sampling noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import Experiment, resolve_kappa_targets


@dataclass(frozen=True)
class Batch:
    hparams_R: dict[str, np.ndarray]  # name -> value per run
    seeds_R: np.ndarray
    points_R: np.ndarray  # which sweep point each run belongs to
    point_values: list[dict]  # the swept values of each point ({} when nothing is swept)

    @property
    def size(self) -> int:
        return len(self.seeds_R)


def expand(exp: Experiment) -> Batch:
    points = [{}]
    seeds = np.array(exp.seeds)
    n, S = len(points), len(seeds)
    # each point's target kappas decide its competences (a kappa axis sweeps the competence)
    hp_points = [resolve_kappa_targets(exp.static.task, {**exp.hparams, **values}) for values in points]
    hparams_R = {k: np.repeat(np.array([hp[k] for hp in hp_points], np.float32), S) for k in exp.hparams}
    return Batch(hparams_R, np.tile(seeds, n), np.repeat(np.arange(n), S), points)
