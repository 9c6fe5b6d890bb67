"""`python -m sim.aggregate <multirun dir>`: combine the jobs of a Hydra multirun (`sim.run -m`)
into one table, `aggregate.csv`, and the sweep figure, `sweep.png`, in that directory.

Each job is self-contained: its summary.json has its point summaries and the overrides it ran
with. The static axes are the override keys whose values differ between jobs (e.g. `policy`,
`algo`, `task.length`); a job's in-process sweep axes come on top. One row per job and sweep point.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from sim.output import plots, results
from sim.analysis import stats

SUMMARY_METRICS = ("phi", "phi_prime", "reward", "kl", "entropy")


def load_jobs(root: Path) -> list[tuple[Path, dict]]:
    """(job dir, summary) of every job under root, in job-number order where dirs are numbers."""
    paths = sorted(root.rglob("summary.json"), key=lambda p: [int(s) if s.isdigit() else s for s in p.parent.parts])
    return [(p.parent, json.loads(p.read_text())) for p in paths]


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.lstrip("+~").partition("=")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def static_axes(summaries: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs, in order of first appearance. Keys that are
    in-process axes of some job are left to the point values."""
    swept_in_process = {k for s in summaries for k in s.get("axes", {})}
    per_job = [dict(_override(o) for o in s.get("overrides", [])) for s in summaries]
    keys = list(dict.fromkeys(k for job in per_job for k in job))
    return [k for k in keys if k not in swept_in_process
            and len({json.dumps(job.get(k), sort_keys=True) for job in per_job}) > 1]


def combine(jobs: list[tuple[Path, dict]]) -> tuple[list[str], list[dict]]:
    """(axes, points): every job's sweep points, their values extended by the job's static axis
    values and tagged with the job's directory."""
    summaries = [s for _, s in jobs]
    static = static_axes(summaries)
    in_process = list(dict.fromkeys(k for s in summaries for k in s.get("axes", {})))
    points = []
    for job_dir, s in jobs:
        job_values = dict(_override(o) for o in s.get("overrides", []))
        for point in s["points"]:
            values = {**{k: job_values.get(k) for k in static}, **point["values"]}
            points.append({**point, "values": values, "job": str(job_dir)})
    return static + in_process, points


def write_table(path: Path, axes: list[str], points: list[dict], margin: float = stats.DEFAULT_MARGIN) -> None:
    metrics = tuple(m for m in SUMMARY_METRICS if m in points[0]["metrics"])
    header, rows = results.summary_table(points, axes, metrics, margin)  # verdicts: Holm over every job's points
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["job"] + header)
        writer.writerows([p["job"]] + row for p, row in zip(points, rows))


def aggregate(root: Path) -> tuple[list[str], list[dict]]:
    jobs = load_jobs(root)
    if not jobs:
        raise FileNotFoundError(f"{root}: no summary.json under it (is it a multirun directory of sim.run -m?)")
    axes, points = combine(jobs)
    margin = jobs[0][1].get("verdict_rules", {}).get("margin", stats.DEFAULT_MARGIN)  # the jobs' own margin
    write_table(root / "aggregate.csv", axes, points, margin)
    if 1 <= len(axes) <= 2:
        plots.sweep_figure(root / "sweep.png", points, axes, f"{root.name}: {len(jobs)} jobs")
    else:
        print(f"sim.aggregate: no sweep.png: sweep figures are drawn for 1 or 2 axes, not {len(axes)} "
              f"({', '.join(axes) or 'none'})", file=sys.stderr)
    return axes, points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.aggregate", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        axes, points = aggregate(args.multirun_dir)
    except FileNotFoundError as e:
        print(f"sim.aggregate: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(points)} rows ({', '.join(axes) or 'no axes'}) -> {args.multirun_dir / 'aggregate.csv'}")


if __name__ == "__main__":
    main()
