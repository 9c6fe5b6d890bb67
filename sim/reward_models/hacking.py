"""Reward hacking in numbers: the gold curve's peak, the final gold - proxy gap, and the fit of
Gao, Schulman & Hilton (2022, "Scaling laws for reward model overoptimization") to the gold curve
(pure numpy, no files).

Their RL form: the gold reward gained at distance d = sqrt(KL(pi || ref)) from the reference is
R(d) = d * (alpha - beta * log d). For fixed d it is linear in (alpha, beta), so the least-squares
fit is closed form: regress R on the columns (d, -d log d). R here is gold(d) - gold(0), the
gain, as in the paper (their curves start at 0); rows with d = 0 carry no information (both
columns vanish) and are left out. R^2 = 1 - SS_res / SS_tot about the mean of the fitted R.
"""
from __future__ import annotations

import numpy as np

MIN_ROWS = 3  # a two-parameter fit needs at least three points to say anything with its R^2


def gao_fit(d_T: np.ndarray, gain_T: np.ndarray) -> dict:
    """{alpha, beta, r2, rows, d_min, d_max, d_peak, peak_in_data}: least squares of
    gain = d * (alpha - beta * log d) over rows with d > 0 (None values when fewer than MIN_ROWS rows
    have d > 0 or the gain does not vary). d_peak = exp(alpha / beta - 1), where dR/dd = 0, is the
    fitted curve's peak (None when beta <= 0: no peak); peak_in_data says whether it lies within the
    observed d. A peak beyond the data is an extrapolation: the fit does not describe the peak."""
    with np.errstate(over="ignore"):  # a tiny beta puts the peak at exp(huge): inf, i.e. far beyond the data
        return fit_gain(d_T, gain_T, np.log, lambda alpha, beta: float(np.exp(alpha / beta - 1)))


def fit_gain(d_T: np.ndarray, gain_T: np.ndarray, shape, peak) -> dict:
    """Least squares of gain = d (alpha - beta shape(d)) over rows with d > 0: Gao et al.'s two forms
    (shape = log for RL, identity for best-of-n). `peak(alpha, beta)` is where dR/dd = 0, asked only
    for beta > 0. The dict of gao_fit; None values with fewer than MIN_ROWS rows."""
    d_T, gain_T = np.asarray(d_T, np.float64), np.asarray(gain_T, np.float64)
    keep = np.isfinite(d_T) & np.isfinite(gain_T) & (d_T > 0)
    d, y = d_T[keep], gain_T[keep]
    if d.size < MIN_ROWS:
        return {"alpha": None, "beta": None, "r2": None, "rows": int(d.size), "d_min": None, "d_max": None,
                "d_peak": None, "peak_in_data": False}
    X = np.stack([d, -d * shape(d)], 1)
    (alpha, beta), *_ = np.linalg.lstsq(X, y, rcond=None)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - X @ np.array([alpha, beta])) ** 2)) / ss_tot if ss_tot > 0 else None
    d_peak = peak(alpha, beta) if beta > 0 else None
    return {"alpha": float(alpha), "beta": float(beta), "r2": r2, "rows": int(d.size),
            "d_min": float(d.min()), "d_max": float(d.max()), "d_peak": d_peak,
            "peak_in_data": d_peak is not None and bool(d.min() <= d_peak <= d.max())}


def gao_curve(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R(d) = d * (alpha - beta * log d), with R(0) = 0."""
    d = np.asarray(d, np.float64)
    return np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1.0))), 0.0)


def gold_at_d(d_T: np.ndarray, gold_T: np.ndarray, d_star: float) -> float:
    """The gold where the run first reaches distance d_star, linearly interpolated between the two
    logged rows around it (None-like nan when it never does): how to compare runs at the same KL."""
    d_T, gold_T = np.asarray(d_T, np.float64), np.asarray(gold_T, np.float64)
    after = np.flatnonzero(d_T >= d_star)
    if after.size == 0:
        return float("nan")
    k = int(after[0])
    if k == 0 or d_T[k] == d_star:
        return float(gold_T[k])
    w = (d_star - d_T[k - 1]) / (d_T[k] - d_T[k - 1])
    return float(gold_T[k - 1] + w * (gold_T[k] - gold_T[k - 1]))


def summary(steps_T: np.ndarray, gold_T: np.ndarray, proxy_T: np.ndarray, d_T: np.ndarray) -> dict:
    """One sweep point's curves (means over its seeds) -> peak gold, the end, the gap and the Gao fit."""
    gold_T, proxy_T, d_T = (np.asarray(x, np.float64) for x in (gold_T, proxy_T, d_T))
    if not np.any(np.isfinite(gold_T)):  # every run of the point diverged
        return {"peak_gold": None, "final": None, "final_gap": None, "gao_fit": None}
    k = int(np.nanargmax(gold_T))
    return {
        "peak_gold": {"value": float(gold_T[k]), "step": int(steps_T[k]), "d": float(d_T[k])},
        "final": {"gold": float(gold_T[-1]), "proxy": float(proxy_T[-1]), "d": float(d_T[-1])},
        "final_gap": float(gold_T[-1] - proxy_T[-1]),  # gold - proxy: < 0 when the proxy overstates
        "gao_fit": gao_fit(d_T, gold_T - gold_T[0]),
    }
