"""`python -m experiments.regenerate`: run every experiment of experiments/*.yaml in this process,
store their results and write the figures (experiments/*.png) and experiments/REPORT.md.

    python -m experiments.regenerate                      # train every experiment, store, write
    python -m experiments.regenerate --only floor blog    # retrain these; the rest from stored results
    python -m experiments.regenerate --stored             # train nothing: render from stored results

Results are stored under experiments/results/ (runs.py: toy/<name>.npz and .json; the real-model
runs in real_model/, trained by `python -m experiments.real_model run`). The report's header (commit,
wall time, machine, load) is stored with them (results/toy/regenerate.json), and so is best-of-n against the reward-hacking proxies
(results/toy/reward_hacking_best_of_n.json, experiments/best_of_n.py), so --stored reproduces
REPORT.md byte for byte. Runs of the same shapes share one compiled program.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from experiments import best_of_n, decisive, decisive_report, real_model_report, report, runs as runs_lib

HERE = Path(__file__).resolve().parent
PROVENANCE = runs_lib.RESULTS / "regenerate.json"
ORDER = ("blog", "controls", "floor", "phase_diagram", "kappa_competence", "sharing", "mechanism", "reward_hacking")
# experiments too slow to rerun here: their sections are re-rendered from stored results (their own command)
STORED_ONLY = ("real_model",)


def dirty_outside_experiments(porcelain: str) -> bool:
    """Whether `git status --porcelain` output (unstripped: each line is 'XY path') lists a change
    outside experiments/ (the report's own outputs are rewritten by every regeneration)."""
    return any(line[3:] and not line[3:].startswith("experiments/") for line in porcelain.splitlines())


def git_state() -> tuple[str, bool]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short=12", "HEAD").strip() or "unknown"
    return commit, dirty_outside_experiments(git("status", "--porcelain"))


def stored_runs(name: str) -> dict:
    """An experiment's stored runs; an error naming the fix when its file changed since they were stored."""
    spec = runs_lib.load(name)
    want = {label: list(spec.get("common", [])) + list(extra) for label, extra in spec["runs"].items()}
    try:
        runs = runs_lib.restore(name)
    except FileNotFoundError:
        sys.exit(f"regenerate: error: no stored results of {name}; run `python -m experiments.regenerate --only {name}`")
    if {label: list(run.overrides) for label, run in runs.items()} != want:
        sys.exit(f"regenerate: error: experiments/{name}.yaml changed since its results were stored; "
                 f"run `python -m experiments.regenerate --only {name}`")
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.regenerate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where REPORT.md and the figures go (default: %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", nargs="+", choices=ORDER, metavar="NAME",
                       help=f"retrain only these experiments (one of {', '.join(ORDER)}); the rest from stored results")
    which.add_argument("--stored", action="store_true", help="train nothing: render REPORT.md from the stored results")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()  # the wall time reported covers imports, compiles, training and writing
    load_start = os.getloadavg()

    import jax

    from sim.run import validate

    cache = validate([])[1]["runtime"]["compilation_cache"]  # the default settings apply to every run

    retrain = () if args.stored else (args.only or ORDER)
    t1 = time.perf_counter()
    runs = {}
    for name in ORDER:
        if name in retrain:
            runs[name] = runs_lib.run_experiment(name)
            runs_lib.store(name, runs[name])
            if name == "reward_hacking":  # best-of-n against the same proxies, stored beside them
                best_of_n.store(best_of_n.compute(runs[name]))
        else:
            runs[name] = stored_runs(name)
    train_seconds = time.perf_counter() - t1
    args.out.mkdir(parents=True, exist_ok=True)
    body = report.write(args.out, runs)
    body += "\n" + decisive_report.section(decisive.load_spec(), decisive.RESULTS, args.out) + "\n"
    spec = real_model_report.load_spec()
    body += real_model_report.replace_section("", real_model_report.render(spec, real_model_report.RUNS, args.out))
    if args.stored:
        header = json.loads(PROVENANCE.read_text())
    else:
        commit, dirty = git_state()
        header = dict(
            command="python -m experiments.regenerate" + (f" --only {' '.join(args.only)}" if args.only else ""),
            commit=commit + (" (with uncommitted changes)" if dirty else ""),
            wall_seconds=time.perf_counter() - t0, train_seconds=train_seconds,
            machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, {len(jax.local_devices())} JAX devices, "
                    f"jax {jax.__version__}",
            load=(load_start, os.getloadavg()), cache=cache)
        PROVENANCE.write_text(json.dumps(header, indent=1) + "\n")
        header = json.loads(PROVENANCE.read_text())  # what --stored will read (tuples as lists)
    (args.out / "REPORT.md").write_text(report.header(**header) + body)
    print(f"wrote {args.out / 'REPORT.md'} and its figures in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
