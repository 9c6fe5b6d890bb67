"""`python -m experiments.regenerate`: run every experiment of experiments/*.yaml in this process
and write the figures (experiments/*.png) and experiments/REPORT.md.

An experiment file names one or more runs; each run is a list of Hydra overrides of
conf/config.yaml (in-process sweep axes as lists), exactly what `python -m sim.run` takes, with
the file's `common` overrides first. Runs of the same shapes share one compiled program.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ORDER = ("blog", "controls", "floor", "phase_diagram", "sharing", "mechanism", "reward_hacking")
# experiments too slow to rerun here: their sections are re-rendered from stored results (their own command)
STORED_ONLY = ("real_model",)


@dataclass(frozen=True)
class Run:
    label: str
    overrides: tuple[str, ...]
    exp: object  # sim.config.Experiment
    batch: object  # sim.rl.sweep.Batch
    result: object  # sim.rl.train.TrainResult

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


def train_run(label: str, overrides: list[str]) -> Run:
    from sim.run import validate
    from sim.rl.sweep import expand
    from sim.rl.train import make_train, run_keys

    exp = validate(overrides)[0]  # as `python -m sim.run <overrides>` would: runtime settings, then parse
    batch = expand(exp)
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
    return Run(label, tuple(overrides), exp, batch, result)


def run_experiment(name: str) -> dict[str, Run]:
    spec = load(name)
    common = list(spec.get("common", []))
    print(f"{name}: {spec['title']}", file=sys.stderr, flush=True)
    return {label: train_run(label, common + list(extra)) for label, extra in spec["runs"].items()}


def dirty_outside_experiments(porcelain: str) -> bool:
    """Whether `git status --porcelain` output (unstripped: each line is 'XY path') lists a change
    outside experiments/ (the report's own outputs are rewritten by every regeneration)."""
    return any(line[3:] and not line[3:].startswith("experiments/") for line in porcelain.splitlines())


def git_state() -> tuple[str, bool]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short=12", "HEAD").strip() or "unknown"
    return commit, dirty_outside_experiments(git("status", "--porcelain"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.regenerate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where REPORT.md and the figures go (default: %(default)s)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()  # the wall time reported covers imports, compiles, training and writing
    load_start = os.getloadavg()

    import jax

    from sim.run import validate

    cache = validate([])[1]["runtime"]["compilation_cache"]  # the default settings apply to every run

    from experiments import report

    t1 = time.perf_counter()
    runs = {name: run_experiment(name) for name in ORDER}
    train_seconds = time.perf_counter() - t1
    args.out.mkdir(parents=True, exist_ok=True)
    body = report.write(args.out, runs)
    from experiments import real_model, real_model_report

    body += real_model.replace_section("", real_model_report.render(real_model.load_spec(), real_model.RUNS, args.out))
    wall = time.perf_counter() - t0
    commit, dirty = git_state()
    header = report.header(
        command="python -m experiments.regenerate", commit=commit + (" (with uncommitted changes)" if dirty else ""),
        wall_seconds=wall, train_seconds=train_seconds,
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, {len(jax.local_devices())} JAX devices, "
                f"jax {jax.__version__}",
        load=(load_start, os.getloadavg()), cache=cache)
    (args.out / "REPORT.md").write_text(header + body)
    print(f"wrote {args.out / 'REPORT.md'} and its figures in {wall / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
