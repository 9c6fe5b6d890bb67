"""Run a validated Experiment and write its outputs (the file-writing edge, no Hydra here)."""
from __future__ import annotations

import csv
import hashlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import yaml
from tqdm import tqdm

from sim import analysis, diagnostics, plots, results
from sim.config import Experiment
from sim.sweep import Batch, expand
from sim.train import TrainResult, make_train, run_keys

PACKAGES = ("sim", "jax", "jaxlib", "optax", "numpy", "hydra-core", "matplotlib")


def config_hash(plain_cfg: dict) -> str:
    """Hash of what determines the numbers: the config less `runtime` (where and how it ran)."""
    what = {k: v for k, v in plain_cfg.items() if k != "runtime"}
    blob = json.dumps(what, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def train_with_progress(exp: Experiment, batch: Batch) -> TrainResult:
    """Train with a progress bar on stderr; the bar starts after compilation so steps/s is honest."""
    train = make_train(exp.static)
    print(f"sim: compiling {batch.size} runs x {exp.static.steps} steps ...", file=sys.stderr, flush=True)
    bars = []

    def on_chunk(done, total, rows):
        step = done * exp.static.log_every
        if not bars:
            bars.append(tqdm(total=exp.static.steps, initial=step, unit="step", file=sys.stderr,
                             dynamic_ncols=True, desc=f"{batch.size} runs", mininterval=0.2))
        bars[0].update(step - bars[0].n)
        bars[0].set_postfix(phi=f"{np.mean(rows['phi'][-1]):.3f}", phi_prime=f"{np.mean(rows['phi_prime'][-1]):.3f}")

    try:
        return train(batch.hparams_R, run_keys(batch.seeds_R), on_chunk=on_chunk)
    finally:
        for bar in bars:
            bar.close()


def write_metrics_csv(path: Path, result: TrainResult, batch: Batch) -> None:
    columns = {"run": np.arange(batch.size), "seed": batch.seeds_R, "point": batch.points_R}
    for name in sorted({k for v in batch.point_values for k in v}):
        columns[name] = np.array([batch.point_values[p][name] for p in batch.points_R])
    header, rows = results.table_rows(result.metrics, result.steps_T, columns)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def summary(exp: Experiment, plain_cfg: dict, batch: Batch, result: TrainResult) -> dict:
    return {
        "config_hash": config_hash(plain_cfg),
        "n_runs": batch.size,
        "n_points": len(batch.point_values),
        "points": results.point_summaries(result.metrics, batch.points_R, batch.point_values),
        "compile_seconds": result.compile_seconds,
        "run_seconds": result.run_seconds,
        "devices": [str(d) for d in jax.local_devices()],
        "versions": versions(),
    }


def write_diagnostic_figures(out: Path, exp: Experiment, batch: Batch, result: TrainResult, point0: dict,
                             arrays: dict, labels: list[str], title: str) -> None:
    """kl_cost.png, diagnostics.png and orthogonality.png (the last two for sweep point 0)."""
    plots.diagnostics_figure(out / "diagnostics.png", result.steps_T, result.metrics, batch.points_R, labels, title)
    plots.kl_cost_figure(out / "kl_cost.png", arrays["curves"], exp.static.policy, title + " — reference of point 0")
    values_J, values_K, ref_JxK, final_RxJxK = arrays["joints"]
    ortho = point0["orthogonality"]
    values_J, values_K, ref = diagnostics.collapse(values_J, values_K, ref_JxK)
    final = diagnostics.collapse(*arrays["joints"][:2], np.mean(final_RxJxK, 0))[2]
    plots.orthogonality_figure(out / "orthogonality.png", values_J, values_K, ref, final,
                               ortho["reference"]["corr"], ortho["final"]["corr_mean"])


def one_line_diagnostics(point: dict) -> str:
    """The reference's kappa per reward and whether the blog's quadrant inequality held."""
    geo, blog = point["geometry"], point["quadrants"]["blog_inequality"]
    kappa = {name: geo[name]["tilt"]["kappa"] for name in ("phi", "phi_prime")}
    kappa = ", ".join(f"{name} {'n/a' if k is None else format(k, '.3f')}" for name, k in kappa.items())
    return (f"reference kappa(+-{geo['delta']:g}): {kappa}; blog's p(phi up, phi_prime not up) > p(both up) "
            f"{'held' if blog['holds'] else 'did not hold'} over training")


def run_experiment(exp: Experiment, plain_cfg: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(plain_cfg, sort_keys=False))
    batch = expand(exp)
    result = train_with_progress(exp, batch)
    write_metrics_csv(out / "metrics.csv", result, batch)
    info = summary(exp, plain_cfg, batch, result)
    t0 = time.perf_counter()
    extras, arrays = analysis.report(exp, batch, result)  # kappa, orthogonality, quadrant table
    for point, extra in zip(info["points"], extras):
        point.update(extra)
    info["analysis_seconds"] = time.perf_counter() - t0
    info = results.json_safe(info)
    (out / "summary.json").write_text(json.dumps(info, indent=2, allow_nan=False))
    if exp.plots:
        labels = [", ".join(f"{k}={v:g}" for k, v in values.items()) for values in batch.point_values]
        title = (f"{exp.static.advantage}, {exp.static.policy} policy, "
                 f"r = {exp.hparams['w_phi']:g}·φ + {exp.hparams['w_phi_prime']:g}·φ′")
        plots.rewards_figure(out / "rewards.png", result.steps_T, result.metrics, batch.points_R, labels, title)
        write_diagnostic_figures(out, exp, batch, result, info["points"][0], arrays, labels, title)
    point = info["points"][0]["metrics"]
    print(f"phi {point['phi']['start']:.3f} -> {point['phi']['end']:.3f}, "
          f"phi_prime {point['phi_prime']['start']:.3f} -> {point['phi_prime']['end']:.3f} "
          f"(compile {result.compile_seconds:.1f}s, run {result.run_seconds:.1f}s); outputs in {out}")
    print(one_line_diagnostics(info["points"][0]))
    return info
