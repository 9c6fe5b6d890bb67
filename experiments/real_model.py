"""The blog's experiment on a real model (SmolLM2-135M-Instruct): `python -m experiments.real_model`.

    python -m experiments.real_model run [--only NAME ...] [--extra OVERRIDE ...]
    python -m experiments.real_model report

`run` trains each configuration of experiments/real_model.yaml through `python -m sim.run` (a
subprocess per configuration, its seeds one after another) into experiments/results/real_model/runs/<name>/
and keeps only the small files (STORED) plus run.json: the command, its wall time and the load
average around it. A run interrupted here is resumed by the next `run` (sim.run's resume); a
finished one is left alone. One configuration takes many minutes on a CPU, so
`python -m experiments.regenerate` does NOT rerun it: it re-renders the report's real-model
section from the stored results, as `report` does (experiments/real_model_report.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from experiments.real_model_report import RUNS, command, load_spec, overrides, render, replace_section

HERE = Path(__file__).resolve().parent
# what a run directory keeps (small text files, committed); provenance.json lets sim.run tell a
# finished run of the same configuration ("done": left alone) from another one
STORED = ("config.yaml", "provenance.json", "metrics.csv", "summary.json", "samples.jsonl", "run.json")


def prune(run_dir: Path) -> None:
    """Drop everything but STORED (figures, run.log, checkpoints of a finished run)."""
    for path in run_dir.iterdir():
        if path.name not in STORED and path.is_file():
            path.unlink()


def run_one(spec: dict, name: str, runs_dir: Path, extra: list[str], python: str = sys.executable) -> int:
    """Train one configuration into runs_dir/name through `python -m sim.run`; returns its exit status."""
    out = runs_dir / name
    out.mkdir(parents=True, exist_ok=True)
    args = overrides(spec, name) + list(extra)
    cmd = "python -m sim.run " + " ".join(shlex.quote(o) for o in args)
    args.append(f"hydra.run.dir={out}")
    print(f"{name}: {cmd}", file=sys.stderr, flush=True)
    load_start, t0 = os.getloadavg(), time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
    status = subprocess.run([python, "-m", "sim.run", *args], cwd=HERE.parent, env=env).returncode
    wall = time.perf_counter() - t0
    if status in (0, 3) and (out / "summary.json").exists():
        previous = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
        if previous is None or previous.get("overrides") != args[:-1]:  # "done" runs keep their first record
            (out / "run.json").write_text(json.dumps({
                "name": name, "command": cmd, "overrides": args[:-1], "wall_seconds": wall,
                "load_average": {"start": load_start[0], "end": os.getloadavg()[0]},
                "cpu_count": os.cpu_count(), "exit_status": status}, indent=2) + "\n")
        prune(out)
    print(f"{name}: exit {status} after {wall / 60:.1f} min", file=sys.stderr, flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.real_model", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p_run = sub.add_parser("run", help="train the configurations of experiments/real_model.yaml (slow)")
    p_run.add_argument("--only", nargs="+", metavar="NAME", help="only these configurations")
    p_run.add_argument("--extra", nargs="+", default=[], metavar="OVERRIDE",
                       help="more sim.run overrides for every configuration (e.g. a short smoke test)")
    p_run.add_argument("--runs", type=Path, default=RUNS, help="where the run directories go (default: %(default)s)")
    p_report = sub.add_parser("report", help="re-render REPORT.md's real-model section from the stored results")
    for p in (p_report,):
        p.add_argument("--runs", type=Path, default=RUNS, help="stored results (default: %(default)s)")
    p_report.add_argument("--out", type=Path, default=HERE, help="where REPORT.md and the figure are (default: %(default)s)")
    args = parser.parse_args(argv)
    spec = load_spec()
    if args.what == "run":
        names = args.only or list(spec["runs"])
        unknown = [n for n in names if n not in spec["runs"]]
        if unknown:
            print(f"real_model: error: --only {' '.join(unknown)}: unknown; allowed: {', '.join(spec['runs'])}",
                  file=sys.stderr)
            return 2
        statuses = [run_one(spec, name, args.runs, args.extra) for name in names]
        return max(statuses)
    report_path = args.out / "REPORT.md"
    section = render(spec, args.runs, args.out)
    report_path.write_text(replace_section(report_path.read_text() if report_path.exists() else "", section))
    print(f"wrote the real-model section of {report_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
