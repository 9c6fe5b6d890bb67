"""SFT references for a batch of runs: one per distinct competence point, cached on disk.

An edge module (file I/O and a progress bar), like experiment.py; the training is sft.py. All
seeds of a sweep point share one reference (their RL sampling differs); points that differ only
in numbers SFT does not read (learning rate, beta, reward weights, ...) share one too.

A reference is stored as `<cache dir>/<key>.npz` by the shared cache stage (cache.py); the key
hashes everything that determines it: the task, the architecture, the SFT settings, the point's
competences, the jax version and the source code of the modules that compute it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from sim import policies
from sim.policies import base, estimates, sft
from sim.stages import cache
from sim.tasks import toy as task_lib
from sim.config import Experiment
from sim.rl.train import auto_rows_per_chunk

COMPETENCE_HPARAMS = ("competence_phi", "competence_phi_prime", "competence_spread")
_SOURCES = (sft, estimates, task_lib, base)  # and the family's own (policies.Family.sources)
_MEASURED = ("competence_phi", "competence_phi_prime", "competence_phi_se", "competence_phi_prime_se",
             "teacher_competence_phi", "teacher_competence_phi_prime", "loss_floor")


def default_cache_dir() -> Path:
    """Where references go when `runtime.sft_cache` is null: $SIM_CACHE_DIR/sft if set, else
    $XDG_CACHE_HOME/sim/sft (~/.cache/sim/sft, next to the XLA compilation cache)."""
    root = os.environ.get("SIM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sim"
    return Path(root) / "sft"


def cache_key(exp: Experiment, competence_3: np.ndarray) -> str:
    return cache.key({"task": asdict(exp.static.task), "arch": asdict(exp.static.arch), "sft": asdict(exp.sft),
                      "competence": [float(np.float32(c)) for c in competence_3]},
                     _SOURCES + policies.family(exp.static.policy).sources)


class References(NamedTuple):
    params_R: object  # reference params of every run (leading [R] axis), for train(..., ref_R=...)
    loss_KxS: np.ndarray  # SFT loss curve of each distinct point
    points: list[dict]  # per distinct point: competences (teacher's and measured), losses, cache file
    seconds: float  # SFT time of this call (0 when every reference was cached)


def _train_missing(exp: Experiment, competence_Mx3: np.ndarray):
    chunk = auto_rows_per_chunk(exp.sft.steps, 20)
    print(f"sim: SFT of {len(competence_Mx3)} reference(s), compiling ...", file=sys.stderr, flush=True)
    with tqdm(total=exp.sft.steps, unit="step", file=sys.stderr, dynamic_ncols=True, desc="SFT",
              mininterval=0.2) as bar:
        params_M, loss_MxS = sft.train(exp.static.task, exp.static.arch, exp.sft, competence_Mx3, chunk,
                                       on_chunk=lambda done: bar.update(done - bar.n))
        bar.set_postfix(loss=f"{np.mean(loss_MxS[:, -chunk:]):.4f}")
    measured = sft.measure(exp.static.task, exp.static.arch, params_M, competence_Mx3, exp.sft.seed)
    return params_M, loss_MxS, measured


def prepare(exp: Experiment, hparams_R: dict[str, np.ndarray]) -> References:
    """Load or train the reference of every run's competence point (the SFT stage)."""
    competence_Rx3 = np.stack([np.asarray(hparams_R[k], np.float32) for k in COMPETENCE_HPARAMS], 1)
    competence_Kx3, point_R = np.unique(competence_Rx3, axis=0, return_inverse=True)
    point_R = point_R.reshape(-1)
    cache_dir = Path(exp.runtime.sft_cache).expanduser() if exp.runtime.sft_cache else default_cache_dir()
    paths = [cache_dir / f"{cache_key(exp, c)}.npz" for c in competence_Kx3]
    template = jax.eval_shape(policies.net(exp.static.arch, exp.static.task).init, jax.random.key(0))

    def fit(missing: list[int]):
        params_M, loss_MxS, measured = _train_missing(exp, competence_Kx3[missing])
        return [(jax.tree.map(lambda x: np.asarray(x[m]), params_M), loss_MxS[m],
                 {name: float(v[m]) for name, v in measured.items()}) for m in range(len(missing))]

    stage = cache.run(paths, point_R, template, _MEASURED, fit)
    if any(item.cached for item in stage.items):
        print(f"sim: {sum(item.cached for item in stage.items)} SFT reference(s) loaded from {cache_dir}", file=sys.stderr)
    loss_KxS = stage.loss_KxS
    tail = max(1, exp.sft.steps // 10)
    points = [{
        **{name: float(c) for name, c in zip(COMPETENCE_HPARAMS, competence_Kx3[k])},
        "teacher": {"phi": m["teacher_competence_phi"], "phi_prime": m["teacher_competence_phi_prime"]},
        "measured": {"phi": m["competence_phi"], "phi_se": m["competence_phi_se"],
                     "phi_prime": m["competence_phi_prime"], "phi_prime_se": m["competence_phi_prime_se"]},
        "final_loss": float(np.mean(loss_KxS[k, -tail:])),  # mean over the last 10% of steps
        "loss_floor": m["loss_floor"],
        "cached": item.cached,
        "file": str(item.path),
    } for k, (item, m) in enumerate((i, i.measured) for i in stage.items)]
    return References(stage.params_R, loss_KxS, points, stage.seconds)
