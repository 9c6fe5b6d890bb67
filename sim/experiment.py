"""Run a validated Experiment and write its outputs (the file-writing edge, no Hydra here).

Order of writes: nothing until a pretrained checkpoint is read (its refusals write nothing);
then provenance.json and config.yaml; for neural policies the SFT stage
(reference.prepare: its cache, not the run directory); metrics.csv rows and a checkpoint after
every chunk (record=points: checkpoints only, with the per-point moments; points.csv at the end);
rewards.png and sweep.png; summary.json last (its presence marks the run complete); then the checkpoints
are deleted. See sim/output/rundir.py for what happens to an existing run directory.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import jax
import numpy as np
import yaml
from tqdm import tqdm

from sim.output import per_point as analysis
from sim.analysis import diagnostics, stats
from sim.reward_models import hacking
from sim.stages import proxy
from sim.output import interrupt, plots, results, rundir, trackers
from sim.stages import references as reference
from sim.output.snapshots import CheckpointError, Checkpoints
from sim.config import ConfigError, Experiment
from sim.output.rundir import config_hash, versions  # noqa: F401  (re-exported: part of this module's API)
from sim.rl.sweep import Batch, expand
from sim.rl.layout import PointStats
from sim.rl.runs import metric_names
from sim.rl.train import Snapshot, TrainResult, make_train, run_keys, snapshot_template


def train_with_progress(exp: Experiment, batch: Batch, **train_kw) -> TrainResult:
    """Train with a progress bar on stderr; the bar starts after compilation so steps/s is honest.
    `train_kw` goes to train() (start, on_snapshot, shared, on_samples)."""
    train = make_train(exp.static, exp.rows_per_chunk)
    print(f"sim: compiling {batch.size} runs ({batch.n_points} sweep points x {len(exp.seeds)} seeds) x "
          f"{exp.static.steps} steps ...", file=sys.stderr, flush=True)
    bars = []

    def on_chunk(done, total, rows):
        step = done * exp.static.log_every
        if not bars:
            bars.append(tqdm(total=exp.static.steps, initial=step, unit="step",
                             file=sys.stderr, dynamic_ncols=True, desc=f"{batch.size} runs", mininterval=0.2))
        bars[0].update(step - bars[0].n)
        bars[0].set_postfix(phi=f"{np.mean(rows['phi'][-1]):.3f}", phi_prime=f"{np.mean(rows['phi_prime'][-1]):.3f}")

    try:
        return train(batch.hparams_R, run_keys(batch.seeds_R), on_chunk=on_chunk, **train_kw)
    finally:
        for bar in bars:
            bar.close()


def run_columns(batch: Batch) -> dict[str, np.ndarray]:
    """Per-run columns of metrics.csv: run index, seed, sweep point and the swept values."""
    columns = {"run": np.arange(batch.size), "seed": batch.seeds_R, "point": batch.points_R}
    for name in sorted({k for v in batch.point_values for k in v}):
        columns[name] = np.array([batch.point_values[p][name] for p in batch.points_R])
    return columns


def diverged_runs(batch: Batch, result: TrainResult) -> list[dict]:
    return [{"run": int(r), "seed": int(batch.seeds_R[r]), "point": int(batch.points_R[r]),
             "step": int(result.diverged_at_step_R[r])} for r in np.flatnonzero(result.diverged_at_step_R >= 0)]


def summary(exp: Experiment, plain_cfg: dict, batch: Batch, result: TrainResult, provenance: dict,
            overrides=()) -> dict:
    diverged = diverged_runs(batch, result)
    points = results.point_summaries(result.metrics, batch.points_R, batch.point_values, result.diverged_at_step_R,
                                     result.steps_T, exp.verdict_margin)
    for point, hp in zip(points, batch.point_hparams):
        point["hparams"] = hp  # what the point trained with (derived settings resolved)
    return {
        "config_hash": provenance["config_hash"],
        "overrides": list(overrides),  # the command line's, so a multirun's jobs can be told apart
        "axes": {k: list(v) for k, v in exp.axes.items()},
        "record": exp.record,
        "n_runs": batch.size,
        "n_points": len(batch.point_values),
        # runs whose loss, sampled rewards or parameters went non-finite: frozen at that step,
        # left out of every statistic below (n_seeds counts the healthy runs of a point)
        "n_diverged": len(diverged),
        "diverged": diverged,
        # healthy runs whose policy ended (near-)deterministic; per point in points[*]
        "n_deterministic": sum(p["n_deterministic"] or 0 for p in points),
        "deterministic_entropy": results.DETERMINISTIC_ENTROPY,
        # each metric's verdict per point (sim/analysis/stats.py): its family is the metric's sweep points
        "verdict_rules": {"margin": exp.verdict_margin, "alpha": stats.ALPHA, "correction": "holm",
                          "contrast": "end - start per seed, Student t", "equivalence": "TOST"},
        "points": points,
        "compile_seconds": result.compile_seconds,
        "run_seconds": result.run_seconds,
        "devices": provenance["devices"],
        "versions": provenance["versions"],
        "git": provenance["git"],
    }


def _resume_from(exp: Experiment, batch: Batch, out: Path, checkpoints: Checkpoints, ref_R,
                 proxy_R=None, shared=None) -> Snapshot | None:
    keys_R = run_keys(batch.seeds_R)
    n_points = batch.n_points if exp.record == "points" else None
    try:
        start = checkpoints.latest(lambda rows: snapshot_template(exp.static, batch.hparams_R, keys_R, rows, ref_R,
                                                                  proxy_R, shared, n_points))
    except CheckpointError as e:
        raise ConfigError(f"hydra.run.dir={out}: {e}; pass overwrite=true to start again") from None
    for bad, why in checkpoints.damaged:
        print(f"sim: warning: the checkpoint at step {bad} is damaged ({why}); deleted", file=sys.stderr)
    step = start.rows_done * exp.static.log_every if start else 0
    print(f"sim: resuming the interrupted run in {out} from step {step}", file=sys.stderr, flush=True)
    return start


def _check_provenance(out: Path, now: dict) -> None:
    """A resumed run continues bit-identically only under the same software and devices."""
    try:
        before = json.loads((out / "provenance.json").read_text())
    except (OSError, ValueError):
        return
    changed = [k for k in ("versions", "git", "devices") if before.get(k) != now[k]]
    if changed:
        print(f"sim: warning: {', '.join(changed)} changed since this run started; the resumed metrics may "
              "differ from an uninterrupted run's", file=sys.stderr)


def write_diagnostic_figures(out: Path, exp: Experiment, result: TrainResult, point0: dict, arrays: dict,
                             points_R: np.ndarray, labels: list[str], title: str) -> None:
    """diagnostics.png, and unless analysis=none kl_cost.png and orthogonality.png (for sweep point 0)."""
    plots.diagnostics_figure(out / "diagnostics.png", result.steps_T, result.metrics, points_R, labels, title)
    if not arrays:  # analysis=none
        return
    plots.kl_cost_figure(out / "kl_cost.png", arrays["curves"], exp.static.policy, title + " — reference of point 0")
    values_J, values_K, ref_JxK, final_RxJxK = arrays["joints"]  # final: healthy runs only
    ortho = point0["orthogonality"]
    if ortho["final"] is None:  # every run of point 0 diverged: no final policy to show
        return
    vj, vk, ref = diagnostics.collapse(values_J, values_K, ref_JxK)
    final = diagnostics.collapse(values_J, values_K, np.mean(final_RxJxK, 0))[2]
    plots.orthogonality_figure(out / "orthogonality.png", vj, vk, ref, final, ortho["reference"]["corr"],
                               ortho["final"]["corr_mean"])


def one_line_diagnostics(point: dict) -> str:
    """The reference's kappa per reward and whether the blog's quadrant inequality held."""
    if "geometry" not in point:
        return "no analysis (analysis=none)"
    geo, quadrants = point["geometry"], point["quadrants"]  # quadrants: None when every run diverged
    def kappas(kind: str) -> str:
        values = {name: geo[name][kind]["kappa"] for name in ("phi", "phi_prime")}
        return ", ".join(f"{name} {'n/a' if k is None else format(k, '.3f')}" for name, k in values.items())

    kappa = kappas("tilt")
    if "teacher" in geo["phi"]:  # a neural policy: the runs start from the SFT reference, not the teacher
        kappa = f"{kappa} (SFT reference; teacher {kappas('teacher')})"
    held = "n/a (no healthy run)" if quadrants is None else (
        {"up": "held", "down": "reversed", "equivalent": "no difference (equivalent)",
         "inconclusive": "inconclusive"}[quadrants["blog_inequality"]["verdict"]]
        + f", ties {quadrants['blog_inequality']['tie_share']:.0%} of samples")
    return (f"reference kappa(+-{geo['delta']:g}): {kappa}; blog's p(phi up, phi_prime down) > p(both up) "
            f"among untied samples over training: {held}")


def _sft_label(point: dict) -> str:
    m = point["measured"]
    return (f"teacher φ {point['teacher']['phi']:.2f}, φ′ {point['teacher']['phi_prime']:.2f} → "
            f"measured φ {m['phi']:.3f}, φ′ {m['phi_prime']:.3f}")


def write_points_csv(path: Path, stats: PointStats, batch: Batch) -> None:
    """record=points: one row per sweep point and logged step, mean and std over seeds."""
    index = np.arange(batch.n_points)
    columns = {"point": index, **{k: np.array([v[k] for v in batch.point_values]) for k in batch.point_values[0]}}
    header, table = results.points_table(stats.steps_T, stats.count_N, stats.mean, stats.m2, columns)
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        np.savetxt(f, table, fmt=["%d"] + ["%.9g"] * (table.shape[1] - 1), delimiter=",")


def run_experiment(exp: Experiment, plain_cfg: dict, out: Path, overrides=()) -> dict:
    """Run `exp` into `out` (fresh, resumed or already done: see rundir.plan) and return the summary.
    Raises ConfigError when `out` holds a run it must not touch."""
    prov = rundir.provenance(plain_cfg, [str(d) for d in jax.local_devices()])
    action = rundir.plan(out, prov["config_hash"], exp.resume, exp.overwrite)
    if action == "done":
        print(f"sim: {out} already holds this completed run; left alone (overwrite=true runs it again)",
              file=sys.stderr)
        return json.loads((out / "summary.json").read_text())
    loaded, lm_kw = None, {}
    if exp.static.lm is not None:  # a pretrained checkpoint: read it, and its tokenizer's text task
        from sim import lm_setup

        loaded = lm_setup.load(exp)  # before anything is written: its refusals leave the directory alone
        exp = loaded.exp
    out.mkdir(parents=True, exist_ok=True)
    if action == "fresh":
        rundir.clear(out)
        rundir.write_atomic(out / "provenance.json", json.dumps(prov, indent=2))
        rundir.write_atomic(out / "config.yaml", yaml.safe_dump(plain_cfg, sort_keys=False))
    else:
        _check_provenance(out, prov)
    batch = expand(exp)
    if loaded is not None:
        lm_kw = {"shared": loaded.shared,
                 "on_samples": lm_setup.SamplesWriter(out / "samples.jsonl", loaded.text, batch, action == "fresh",
                                                         exp.static.eval_prompts)}
    refs = reference.prepare(exp, batch.hparams_R) if exp.sft is not None else None  # the SFT stage
    ref_R = refs.params_R if refs is not None else None
    proxies = proxy.prepare(exp, batch) if exp.reward_fit is not None else None  # the reward-model stage
    if proxies is not None:
        lm_kw = lm_kw | {"proxy_R": proxies.params_R}
    checkpoints = Checkpoints(out / "checkpoints", prov["config_hash"], exp.static.log_every, exp.checkpoint_seconds)
    tracker = None
    try:
        start = (_resume_from(exp, batch, out, checkpoints, ref_R, lm_kw.get("proxy_R"), lm_kw.get("shared"))
                 if action == "resume" else None)
        if action == "resume" and "on_samples" in lm_kw:  # drop the samples drawn after the checkpoint
            lm_kw["on_samples"].reset(start.rows_done * exp.static.log_every if start is not None else -1)
        table = None  # record=points reduces rows as they come: no per-run table to stream
        if exp.record == "points":
            lm_kw = lm_kw | {"points_R": batch.points_R}
        else:
            steps_T = np.arange(exp.static.steps // exp.static.log_every + 1) * exp.static.log_every
            table = rundir.MetricsCsv(out / "metrics.csv", metric_names(exp.static) + ("diverged_at_step",), steps_T,
                                      run_columns(batch))
            if start is not None:
                table.reset(start.rows)  # drop rows written after the checkpoint; they are recomputed identically
            tracker = trackers.open_trackers(exp.logger, out, plain_cfg, run_columns(batch), steps_T,
                                             start.rows_done if start is not None else 0)

        # the newest snapshot in metrics.csv, and the rows done of the newest one checkpointed
        last = {"snap": None, "saved": start.rows_done if start is not None else 0}

        def on_snapshot(snap: Snapshot) -> None:
            with interrupt.deferred():  # a Ctrl-C waits for these writes: rows whole, checkpoint started
                if table is not None:
                    table.extend(snap.rows)  # rows first: a checkpoint never claims rows the file lacks
                if tracker is not None:
                    tracker.log(snap.rows)
                if exp.checkpoint_seconds is not None:  # kept for a Ctrl-C checkpoint; it holds a whole state alive
                    last["snap"] = snap
                if checkpoints.maybe_save(snap):
                    last["saved"] = snap.rows_done

        try:
            result = train_with_progress(exp, batch, start=start, on_snapshot=on_snapshot, ref_R=ref_R, **lm_kw)
        except KeyboardInterrupt:
            with interrupt.deferred():  # Ctrl-C: checkpoint the rows in metrics.csv on the way out
                snap = last["snap"]
                if snap is not None and snap.rows_done > last["saved"] and exp.checkpoint_seconds is not None:
                    checkpoints.save(snap)
                    last["saved"] = snap.rows_done
                checkpoints.close()
            raise interrupt.Interrupted(last["saved"] * exp.static.log_every) from None
        finally:
            checkpoints.close()
        if exp.record == "points":
            write_points_csv(out / "points.csv", result.point_stats, batch)
        info = _finish(exp, plain_cfg, batch, result, prov, out, overrides, refs, proxies)
        if tracker is not None:
            tracker.finish(out)  # the figures and summary.json, now written
        return info
    finally:  # a run that failed or was interrupted closes its trackers too, marked unfinished
        checkpoints.close()
        if tracker is not None:
            tracker.close()


def _finish(exp: Experiment, plain_cfg: dict, batch: Batch, result: TrainResult, prov: dict, out: Path,
            overrides, refs: reference.References | None, proxies: proxy.Proxies | None = None) -> dict:
    info = summary(exp, plain_cfg, batch, result, prov, overrides)
    if refs is not None:
        info["sft"] = {"seconds": refs.seconds, "points": refs.points}
    if proxies is not None:
        reward_hacking(out, exp, batch, result, info, proxies)
    t0 = time.perf_counter()
    if exp.static.lm is not None and exp.analysis != "none":  # kappa from the reference's sampled rewards
        from sim import lm_setup

        ref_rewards = lm_setup.reference_rewards(out / "samples.jsonl")
        extras, arrays = analysis.sampled_report(batch, result, ref_rewards, exp.verdict_margin), {}
    else:
        extras, arrays = analysis.report(exp, batch, result)  # kappa, orthogonality, quadrant table
    for point, extra in zip(info["points"], extras):
        point.update(extra)
    info["analysis_seconds"] = time.perf_counter() - t0
    info = results.json_safe(info)
    if exp.plots:
        write_figures(out, exp, batch, result, info, arrays)
        if refs is not None:
            plots.sft_loss_figure(out / "sft_loss.png", refs.loss_KxS, [p["loss_floor"] for p in refs.points],
                                  [_sft_label(p) for p in refs.points], f"SFT of the {exp.static.policy} reference")
    rundir.write_atomic(out / "summary.json", json.dumps(info, indent=2, allow_nan=False))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
    if info["n_deterministic"]:
        print(f"sim: note: {info['n_deterministic']} of {info['n_runs']} runs ended deterministic (entropy < "
              f"{results.DETERMINISTIC_ENTROPY:g} nats; per point: n_deterministic in summary.json)", file=sys.stderr)
    print(closing_line(info, out, "points.csv" if exp.record == "points" else "metrics.csv"))
    print(one_line_diagnostics(info["points"][0]))
    return info


def closing_line(info: dict, out: Path, table: str) -> str:
    """phi and phi_prime from start to end: of the one point, or their range over every sweep point;
    and where the outputs are (a sweep's per-point numbers: summary.json's "points" and the table)."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731  (None: every run of the point diverged)

    def span(name: str, field: str) -> str:
        values = [p["metrics"][name][field] for p in info["points"]]
        known = [v for v in values if v is not None]
        if len(values) == 1 or not known:
            return fmt(values[0])
        lo, hi = fmt(min(known)), fmt(max(known))
        text = lo if lo == hi else f"{lo}..{hi}"
        return text + (f" ({len(values) - len(known)} n/a)" if len(known) < len(values) else "")

    times = f"(compile {info['compile_seconds']:.1f}s, run {info['run_seconds']:.1f}s)"
    moves = ", ".join(f"{m} {span(m, 'start')} -> {span(m, 'end')}" for m in ("phi", "phi_prime"))
    if len(info["points"]) == 1:
        return f"{moves} {times}; outputs in {out}"
    return (f"{len(info['points'])} sweep points, range over points: {moves} {times}; each point in "
            f"{out / 'summary.json'} (\"points\") and {out / table}")


def title(exp: Experiment, batch: Batch) -> str:
    w = [{hp[k] for hp in batch.point_hparams} for k in ("w_phi", "w_phi_prime")]
    w1, w2 = (f"{next(iter(v)):g}" if len(v) == 1 else sym for v, sym in zip(w, ("w₁", "w₂")))
    return f"{exp.static.advantage}, {exp.static.policy} policy, r = {w1}·φ + {w2}·φ′"


def write_figures(out: Path, exp: Experiment, batch: Batch, result: TrainResult, info: dict, arrays: dict) -> None:
    """rewards.png and the diagnostic figures over the healthy runs (diverged runs are left out and
    counted in the labels; with record=points the bands come from the device's moments, which
    include them, and the diagnostics see each run's key rows only), and sweep.png for 1 or 2
    sweep axes."""
    healthy_R = result.diverged_at_step_R < 0
    labels = []
    for p, values in enumerate(batch.point_values):
        parts = [f"{k}={v:g}" for k, v in values.items()]
        lost = int(np.sum((batch.points_R == p) & ~healthy_R))
        parts += [f"{lost} diverged run{'s' * (lost > 1)} left out"] if lost and result.point_stats is None else []
        labels.append(", ".join(parts))
    points_R = np.where(healthy_R, batch.points_R, -1)  # -1: in no point's band
    if result.point_stats is None:
        steps_T, bands = result.steps_T, results.bands_from_runs(result.metrics, points_R, batch.n_points)
    else:
        st = result.point_stats
        steps_T, bands = st.steps_T, results.bands_from_moments(st.count_N, st.mean, st.m2)
    plots.rewards_figure(out / "rewards.png", steps_T, bands, labels, title(exp, batch), len(exp.seeds))
    write_diagnostic_figures(out, exp, result, info["points"][0], arrays, points_R, labels, title(exp, batch))
    if 1 <= len(exp.axes) <= 2:
        plots.sweep_figure(out / "sweep.png", info["points"], list(exp.axes), title(exp, batch))
    elif exp.axes:
        print(f"sim: no sweep.png: sweep figures are drawn for 1 or 2 axes, not {len(exp.axes)}", file=sys.stderr)


def reward_hacking(out: Path, exp: Experiment, batch: Batch, result: TrainResult, info: dict,
                   proxies: proxy.Proxies) -> None:
    """With a learned reward model: info["reward_model"] (its fits), each point's "hacking" summary
    (hacking.summary of its mean curves over healthy seeds), and hacking.png and rm_loss.png."""
    healthy_R = np.where(result.diverged_at_step_R < 0, batch.points_R, -1)
    if result.point_stats is None:
        steps_T, bands = result.steps_T, results.bands_from_runs(result.metrics, healthy_R, batch.n_points)
    else:
        st = result.point_stats
        steps_T, bands = st.steps_T, results.bands_from_moments(st.count_N, st.mean, st.m2)
    gold, prox, d = (bands[k][0] for k in ("gold", "proxy", "sqrt_kl"))
    for p, point in enumerate(info["points"]):
        point["hacking"] = hacking.summary(steps_T, gold[:, p], prox[:, p], d[:, p])
    rm = exp.static.reward_model
    info["reward_model"] = {"family": rm.family, "model": asdict(rm), "fit": asdict(exp.reward_fit),
                            "seconds": proxies.seconds, "variants": proxies.variants}
    if exp.plots:
        labels = [", ".join(f"{k.split('.')[-1]}={v:g}" for k, v in values.items()) for values in batch.point_values]
        plots.hacking_figure(out / "hacking.png", d, gold, prox, labels, [pt["hacking"]["gao_fit"] for pt in info["points"]],
                             f"{rm.family} reward model: gold vs proxy, {exp.static.advantage}, {exp.static.policy} policy")
        plots.rm_loss_figure(out / "rm_loss.png", proxies.loss_KxS,
                             [f"pairs={v['pairs']}, noise={v['noise']:g}, seed={v['seed']}: held-out agreement "
                              f"{v['agreement_held_out']:.2f}" for v in proxies.variants], f"{rm.family} reward model fits")
