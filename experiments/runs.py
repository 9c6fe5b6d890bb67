"""The toy experiments' runs: train them (as `python -m sim.run` would) and store or restore their
metrics under experiments/results/toy/, so that the report can be rendered without training.

An experiment file (experiments/<name>.yaml) names one or more runs; each run is a list of Hydra
overrides of conf/config.yaml (in-process sweep axes as lists), the file's `common` overrides
first. A stored experiment is <name>.npz (each run's logged metrics, steps and divergence, by the
run's index) beside <name>.json (its labels, overrides and timings). A restored run rebuilds its
configuration and batch from the overrides (no training), so the report reads the same `Run`.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "toy"


class Stored(NamedTuple):
    """What the report reads of a TrainResult."""
    metrics: dict  # name -> [T, R]
    steps_T: np.ndarray
    diverged_at_step_R: np.ndarray
    compile_seconds: float
    run_seconds: float


@dataclass(frozen=True)
class Run:
    label: str
    overrides: tuple[str, ...]
    exp: object  # sim.config.Experiment
    batch: object  # sim.rl.sweep.Batch
    result: Stored

    def runs(self, point: int = 0) -> np.ndarray:
        return np.flatnonzero(self.batch.points_R == point)

    def metric(self, name: str, point: int = 0) -> np.ndarray:
        """[T, N]: the metric's logged rows for the seeds of one sweep point."""
        return self.result.metrics[name][:, self.runs(point)]

    def row(self, step: int) -> int:
        return int(np.flatnonzero(self.result.steps_T == step)[0])

    @property
    def steps_T(self) -> np.ndarray:
        return self.result.steps_T

    @property
    def command(self) -> str:
        return "python -m sim.run " + " ".join(_quote(o) for o in self.overrides)


def _quote(override: str) -> str:
    return f"'{override}'" if any(c in override for c in "[]() ,") else override


def load(name: str) -> dict:
    return yaml.safe_load((HERE / f"{name}.yaml").read_text())


def _configure(overrides: list[str]):
    from sim.rl.sweep import expand
    from sim.run import validate

    exp = validate(overrides)[0]  # as `python -m sim.run <overrides>` would: runtime settings, then parse
    return exp, expand(exp)


def train_run(label: str, overrides: list[str]) -> Run:
    from sim.rl.train import make_train, run_keys

    exp, batch = _configure(overrides)
    t = time.perf_counter()
    inputs = {}
    if exp.reward_fit is not None:  # a learned reward model: fit (or load) each run's frozen proxy first
        from sim.stages import proxy

        inputs["proxy_R"] = proxy.prepare(exp, batch).params_R
    result = make_train(exp.static)(batch.hparams_R, run_keys(batch.seeds_R), **inputs)
    if np.any(result.diverged_at_step_R >= 0):  # none of these configurations should; say so if one does
        print(f"  {label}: {int(np.sum(result.diverged_at_step_R >= 0))} runs diverged", file=sys.stderr)
    print(f"  {label}: {batch.size} runs x {exp.static.steps} steps in {time.perf_counter() - t:.1f}s "
          f"(compile {result.compile_seconds:.1f}s)", file=sys.stderr, flush=True)
    stored = Stored({k: np.asarray(v) for k, v in result.metrics.items()}, np.asarray(result.steps_T),
                    np.asarray(result.diverged_at_step_R), float(result.compile_seconds), float(result.run_seconds))
    return Run(label, tuple(overrides), exp, batch, stored)


def run_experiment(name: str) -> dict[str, Run]:
    spec = load(name)
    common = list(spec.get("common", []))
    print(f"{name}: {spec['title']}", file=sys.stderr, flush=True)
    return {label: train_run(label, common + list(extra)) for label, extra in spec["runs"].items()}


def store(name: str, runs: dict[str, Run], results: Path = RESULTS) -> None:
    """Write <name>.npz and <name>.json (numbers exactly as trained: arrays keep their dtypes)."""
    results.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, run in enumerate(runs.values()):
        arrays |= {f"{i}/metric/{k}": v for k, v in run.result.metrics.items()}
        arrays |= {f"{i}/steps_T": run.result.steps_T, f"{i}/diverged_at_step_R": run.result.diverged_at_step_R}
    np.savez_compressed(results / f"{name}.npz", **arrays)
    index = {"experiment": name, "runs": [
        {"label": run.label, "overrides": list(run.overrides), "compile_seconds": run.result.compile_seconds,
         "run_seconds": run.result.run_seconds} for run in runs.values()]}
    (results / f"{name}.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")


def restore(name: str, results: Path = RESULTS) -> dict[str, Run]:
    """The stored runs of one experiment, their configurations rebuilt from their overrides."""
    index = json.loads((results / f"{name}.json").read_text())
    runs = {}
    with np.load(results / f"{name}.npz") as f:
        for i, entry in enumerate(index["runs"]):
            prefix = f"{i}/metric/"
            metrics = {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
            stored = Stored(metrics, f[f"{i}/steps_T"], f[f"{i}/diverged_at_step_R"], entry["compile_seconds"],
                            entry["run_seconds"])
            exp, batch = _configure(entry["overrides"])
            runs[entry["label"]] = Run(entry["label"], tuple(entry["overrides"]), exp, batch, stored)
    return runs
