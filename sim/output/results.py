"""From metrics arrays to the metrics table and summary statistics (pure numpy, no files).

A batch of R runs is a set of sweep points x seeds; `points_R` says which point each run
belongs to. Confidence intervals are Student-t 95% intervals of the mean over seeds.
"""
from __future__ import annotations

import numpy as np
# Student t's inverse cdf; scipy.special imports in a fraction of scipy.stats' second (a run's wall time)
from scipy.special import stdtrit

from sim.analysis import stats


def mean_ci95(x_N: np.ndarray) -> tuple[float, float, float]:
    """(mean, lo, hi) of a 95% Student-t interval of the mean; lo = hi = nan for fewer than 2 values
    or a value that is not finite (a kappa is inf once a gain is out of reach: no interval)."""
    n = len(x_N)
    mean = float(np.mean(x_N))
    if n < 2 or not np.all(np.isfinite(x_N)):
        return mean, float("nan"), float("nan")
    half = float(stdtrit(n - 1, 0.975) * np.std(x_N, ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def slope_ci95(x_TxN: np.ndarray, steps_T: np.ndarray) -> tuple[float, float, float]:
    """Each run's least-squares slope of x against step (per step), then mean_ci95 over the N runs:
    whether a trajectory still moves over a stretch of training (e.g. its last quarter)."""
    return mean_ci95(np.polyfit(np.asarray(steps_T, np.float64), np.asarray(x_TxN, np.float64), 1)[0])


def _band(mean, std, n: int):
    if n < 2:
        return mean, mean, mean
    half = stdtrit(n - 1, 0.975) * std / np.sqrt(n)
    return mean, mean - half, mean + half


def band_TxN(x_TxN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step mean and 95% band over the N runs of one point (band = mean when N < 2). A step with
    an inf value (a kappa once a gain is out of reach) has a NaN band: inf - inf, not a warning."""
    n = x_TxN.shape[1]
    with np.errstate(invalid="ignore"):
        std = np.std(x_TxN, 1, ddof=1) if n > 1 else None
    return _band(np.mean(x_TxN, 1), std, n)


# name -> (mean, lo, hi) of the 95% band over seeds, each [T, N] for N sweep points
Bands = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def bands_from_runs(metrics: dict[str, np.ndarray], points_R: np.ndarray, n_points: int) -> Bands:
    """Bands per point; runs marked -1 (e.g. diverged) are in no point, and a point left with no
    run gets NaN bands."""
    def band(x_TxN):
        nan = np.full(x_TxN.shape[0], np.nan)
        return band_TxN(x_TxN) if x_TxN.shape[1] else (nan, nan, nan)

    per_point = [{k: band(v[:, points_R == p]) for k, v in metrics.items()} for p in range(n_points)]
    return {k: tuple(np.stack([b[k][i] for b in per_point], 1) for i in range(3)) for k in metrics}


def bands_from_moments(count_N: np.ndarray, mean: dict, m2: dict) -> Bands:
    """The same bands from per-point moments (mean and sum of squared deviations) over seeds."""
    out = {}
    for k in mean:
        cols = [_band(mean[k][:, p], np.sqrt(m2[k][:, p] / max(n - 1, 1)), int(n)) for p, n in enumerate(count_N)]
        out[k] = tuple(np.stack([c[i] for c in cols], 1) for i in range(3))
    return out


def metric_summary(x_TxN: np.ndarray, steps_T: np.ndarray | None = None) -> dict:
    """start, end, delta (mean and 95% CI) of one metric over the N seeds of one point.

    Only rows with a value for every seed count: leading rows that are NaN (batch statistics
    before the first step) are skipped, so `start` is the first logged value the metric has, and
    `end` is the last row the table has a value in for every seed, at `end_step`. `end_is_last`
    says whether that is the last logged step: False when the metric went NaN before it (e.g. a
    kappa once float32 has made the policy deterministic), so that a summary never shows a value
    at the end that the table does not have. No delta when start and end are the same row.
    `steps_T` names the rows (default: their indices).
    """
    T, N = x_TxN.shape
    steps_T = np.arange(T) if steps_T is None else np.asarray(steps_T)
    rows = _complete_rows(x_TxN)
    if rows.size == 0:
        return {"start": None, "start_step": None, "end": None, "end_step": None, "end_is_last": False,
                "delta_mean": None, "delta_ci95": [None, None], "n_seeds": N}
    first, last = rows[0], rows[-1]
    start, end = x_TxN[first], x_TxN[last]
    mean, lo, hi = mean_ci95(end - start) if last > first else (float("nan"),) * 3
    return {
        "start": float(np.mean(start)),
        "start_step": int(steps_T[first]),
        "end": float(np.mean(end)),
        "end_step": int(steps_T[last]),
        "end_is_last": bool(last == T - 1),
        "delta_mean": _none_if_nan(mean),
        "delta_ci95": [_none_if_nan(lo), _none_if_nan(hi)],
        "n_seeds": int(N),
    }


def _complete_rows(x_TxN: np.ndarray) -> np.ndarray:
    """The rows with a value for every seed (none without seeds)."""
    return np.flatnonzero(~np.any(np.isnan(x_TxN), 1)) if x_TxN.shape[1] else np.array([], int)


def delta_N(x_TxN: np.ndarray) -> np.ndarray:
    """Each seed's end - start, between the rows metric_summary reads (empty when it has no delta)."""
    rows = _complete_rows(x_TxN)
    if rows.size < 2:
        return np.zeros(0)
    return np.asarray(x_TxN[rows[-1]], np.float64) - np.asarray(x_TxN[rows[0]], np.float64)


def _none_if_nan(v: float):
    return None if np.isnan(v) else v


# A run "ended deterministic" when its last logged entropy (mean over prompts of the response
# entropy, nats) is below this: a prompt with entropy h < 0.01 has a response of probability
# above 0.998 (h is at least the binary entropy of the most likely response's probability).
# Not a fault in itself (a policy may converge), but it is what an absurd learning rate leaves.
DETERMINISTIC_ENTROPY = 0.01


def point_summaries(metrics: dict[str, np.ndarray], points_R: np.ndarray, point_values: list[dict],
                    diverged_R: np.ndarray | None = None, steps_T: np.ndarray | None = None,
                    margin: float = stats.DEFAULT_MARGIN) -> list[dict]:
    """One entry per sweep point: its swept values and a metric_summary per metric over its
    healthy runs; runs flagged in `diverged_R` (step >= 0) are left out and counted. `steps_T`:
    the logged step of each row. Each metric_summary also gets the delta's verdict (stats.py:
    up, down, equivalent within +-margin, inconclusive); the declared family of a verdict is the
    sweep points of its metric, over which the tests are Holm-corrected."""
    healthy_R = np.ones(len(points_R), bool) if diverged_R is None else np.asarray(diverged_R) < 0
    runs_P = [np.flatnonzero((points_R == p) & healthy_R) for p in range(len(point_values))]
    out = []
    for p, (values, runs) in enumerate(zip(point_values, runs_P)):
        out.append({"values": values,
                    "n_diverged": int(np.sum((points_R == p) & ~healthy_R)),
                    # of its healthy runs, those whose last entropy is below DETERMINISTIC_ENTROPY
                    "n_deterministic": (int(np.sum(metrics["entropy"][-1, runs] < DETERMINISTIC_ENTROPY))
                                        if "entropy" in metrics else None),
                    "metrics": {k: metric_summary(v[:, runs], steps_T) for k, v in metrics.items()}})
    for k, v in metrics.items():
        for point, test in zip(out, stats.family_verdicts([delta_N(v[:, runs]) for runs in runs_P], margin)):
            point["metrics"][k] |= {"verdict": test.pop("verdict"), "test": test}
    return out


def table_rows(metrics: dict[str, np.ndarray], steps_T: np.ndarray, columns_R: dict[str, np.ndarray]):
    """The long metrics table: one row per (logged step, run), in step order so that it can be
    appended chunk by chunk; `columns_R` are per-run columns (run index, seed, swept values)
    repeated on each of the run's rows. Integer metrics stay integers."""
    names = list(metrics)
    header = list(columns_R) + ["step"] + names
    T, R = metrics[names[0]].shape
    rows = []
    for t in range(T):
        for r in range(R):
            lead = [columns_R[c][r] for c in columns_R]
            rows.append(lead + [int(steps_T[t])] + [metrics[k][t, r].item() for k in names])
    return header, rows


def json_safe(obj):
    """A copy with every non-finite float replaced by None: strict JSON has no NaN or Infinity
    (an undefined statistic, or a kappa whose move is out of reach)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def points_table(stats_steps_T: np.ndarray, count_N: np.ndarray, mean: dict, m2: dict,
                 columns_N: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """One row per (sweep point, logged step): per-point columns, step, n_seeds, then each metric's
    mean and std over seeds; point-major."""
    T, N = len(stats_steps_T), len(count_N)
    header = list(columns_N) + ["step", "n_seeds"] + [f"{k}_{s}" for k in mean for s in ("mean", "std")]
    cols = [np.repeat(np.asarray(columns_N[c], np.float64), T) for c in columns_N]
    cols += [np.tile(np.asarray(stats_steps_T, np.float64), N), np.repeat(count_N.astype(np.float64), T)]
    for k in mean:
        std_TxN = np.sqrt(m2[k] / np.maximum(count_N - 1, 1))
        cols += [mean[k].T.reshape(-1), std_TxN.T.reshape(-1)]
    return header, np.stack(cols, 1)


SUMMARY_FIELDS = ("start", "end", "delta_mean", "delta_lo", "delta_hi", "verdict")


def summary_table(points: list[dict], axes: list[str], metrics: tuple[str, ...],
                  margin: float = stats.DEFAULT_MARGIN) -> tuple[list[str], list[list]]:
    """Flat table of point summaries (as in summary.json): axis values, n_seeds, then per metric
    start, end, delta mean and 95% CI, and the delta's verdict with the table's rows as the family
    (Holm over every row, e.g. every job of a multirun, not per job; stats.interval_verdicts). Axis
    values may be numbers or strings (static axes)."""
    header = list(axes) + ["n_seeds"] + [f"{m}_{f}" for m in metrics for f in SUMMARY_FIELDS]
    verdicts = {m: stats.interval_verdicts([(p["metrics"][m]["delta_mean"], *p["metrics"][m]["delta_ci95"],
                                             p["metrics"][m]["n_seeds"]) for p in points], margin) for m in metrics}
    rows = []
    for i, point in enumerate(points):
        row = [point["values"].get(a) for a in axes]
        row.append(next(iter(point["metrics"].values()))["n_seeds"])
        for m in metrics:
            s = point["metrics"][m]
            row += [s["start"], s["end"], s["delta_mean"], *s["delta_ci95"], verdicts[m][i]]
        rows.append(row)
    return header, rows
