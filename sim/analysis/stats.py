"""The statistical rules every verdict in summaries and reports follows (pure numpy, no files).

A contrast is a per-seed difference (arm − control, or end − start of one run) with its mean,
Student-t interval and two-sided p-value. A family of contrasts (declared by the caller: e.g.
the sweep points of one metric) is Holm-corrected. "No effect" needs an equivalence test: TOST
with a stated margin m, i.e. both one-sided tests reject |mean| >= m. A verdict is then

  up / down    the Holm-adjusted two-sided t-test rejects 0 (sign of the mean);
  equivalent   otherwise, the Holm-adjusted TOST rejects |mean| >= m;
  inconclusive otherwise, or with fewer than 2 finite seeds, or a degenerate contrast.

A degenerate contrast has zero spread (every seed read the same value, e.g. the same multiple of
1/16): its interval [v, v] is not a measurement, only a sign that the spread is below the
evaluation's resolution, so no test is made on it.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
# Student t's cdf and inverse cdf: scipy.special imports in a fraction of scipy.stats' second
from scipy.special import stdtr, stdtrit

ALPHA = 0.05
# The default equivalence margin m, absolute, in each metric's own units (verdict.margin in the
# config): a change of 0.02 in a reward in [0, 1] is two percentage points of success, below what
# the reports call an effect, and about what 8 to 32 seeds resolve (the reviewer's d = 16 interval
# was +-0.03 wide); in nats (kl, entropy) it is as small. A claim of "no effect" must show |delta| < m.
DEFAULT_MARGIN = 0.02
VERDICTS = ("up", "down", "equivalent", "inconclusive")


class Contrast(NamedTuple):
    mean: float
    lo: float  # 1 - alpha Student-t interval of the mean (nan: no interval)
    hi: float
    p: float  # two-sided p-value of mean = 0 (nan: no test)
    n: int
    degenerate: bool  # zero spread: [lo, hi] = [mean, mean] is not a measurement


def _t(x_N: np.ndarray) -> tuple[float, float, int]:
    """(mean, standard error, degrees of freedom)."""
    n = x_N.size
    return float(np.mean(x_N)), float(np.std(x_N, ddof=1) / np.sqrt(n)), n - 1


def degenerate(x_N: np.ndarray) -> bool:
    """Every value the same: the spread is below the evaluation's resolution, not measured as 0."""
    x_N = np.asarray(x_N, np.float64)
    return x_N.size >= 2 and bool(np.all(x_N == x_N[0]))


def contrast(x_N: np.ndarray, alpha: float = ALPHA) -> Contrast:
    """One-sample contrast of per-seed values against 0 (ttest_1samp); no interval and no test for
    fewer than 2 values, a value that is not finite, or zero spread (degenerate)."""
    x_N = np.asarray(x_N, np.float64)
    n = int(x_N.size)
    mean = float(np.mean(x_N)) if n else float("nan")
    if n < 2 or not np.all(np.isfinite(x_N)):
        return Contrast(mean, float("nan"), float("nan"), float("nan"), n, False)
    if degenerate(x_N):
        return Contrast(mean, mean, mean, float("nan"), n, True)
    mean, se, df = _t(x_N)
    half = float(stdtrit(df, 1 - alpha / 2) * se)
    p = float(2 * stdtr(df, -abs(mean) / se))
    return Contrast(mean, mean - half, mean + half, p, n, False)


def paired_contrast(arm_N: np.ndarray, control_N: np.ndarray, alpha: float = ALPHA) -> Contrast:
    """arm − control paired by seed (entry i of both is seed i): ttest_rel."""
    arm_N, control_N = np.asarray(arm_N, np.float64), np.asarray(control_N, np.float64)
    if arm_N.shape != control_N.shape:
        raise ValueError(f"paired by seed: arm has {arm_N.shape}, control {control_N.shape}")
    return contrast(arm_N - control_N, alpha)


def slopes_N(x_TxN: np.ndarray, steps_T: np.ndarray) -> np.ndarray:
    """Each seed's least-squares slope of x against step (per step)."""
    return np.polyfit(np.asarray(steps_T, np.float64), np.asarray(x_TxN, np.float64), 1)[0]


def slope_contrast(x_TxN: np.ndarray, steps_T: np.ndarray, alpha: float = ALPHA) -> Contrast:
    """The per-seed slope endpoint: a slope per seed, then its contrast against 0 over seeds. Uses
    every logged row, not only the two ends, so it is less noisy than end − start for a steady trend."""
    return contrast(slopes_N(x_TxN, steps_T), alpha)


def tost_p(x_N: np.ndarray, margin: float) -> float:
    """p-value of TOST (Schuirmann 1987) for |mean| < margin: the larger of the one-sided p-values of
    mean <= -margin and mean >= +margin. Equivalent at level alpha iff the 1 - 2 alpha interval lies
    inside (-margin, margin). nan where contrast() makes no test."""
    x_N = np.asarray(x_N, np.float64)
    if x_N.size < 2 or not np.all(np.isfinite(x_N)) or degenerate(x_N) or not margin > 0:
        return float("nan")
    mean, se, df = _t(x_N)
    p_lower = stdtr(df, -(mean + margin) / se)  # H0: mean <= -margin, against mean > -margin
    p_upper = stdtr(df, (mean - margin) / se)  # H0: mean >= +margin, against mean < +margin
    return float(max(p_lower, p_upper))


def holm(p_K: Sequence[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """(adjusted p-values, rejections) of Holm's step-down correction (Holm 1979) over one family.
    A nan p-value (no test) is no member of the family: it stays nan and is not rejected."""
    p_K = np.asarray(p_K, np.float64)
    tested = np.flatnonzero(~np.isnan(p_K))
    adjusted_K = np.full(p_K.shape, np.nan)
    m = tested.size
    order = tested[np.argsort(p_K[tested], kind="stable")]
    # the i-th smallest p is multiplied by (m - i); running max keeps the step-down order monotone
    adjusted_K[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p_K[order]))
    return adjusted_K, np.nan_to_num(adjusted_K, nan=1.0) <= alpha


def resolution(x_N: np.ndarray, rtol: float = 1e-6) -> float | None:
    """The smallest step of a quantised metric, read off its values: the smallest gap between two
    distinct values if every value is a whole number of such steps from the smallest; None when
    the values are not on one grid (a continuous metric) or are all the same."""
    v = np.unique(np.asarray(x_N, np.float64)[np.isfinite(x_N)])
    if v.size < 2:
        return None
    step = float(np.min(np.diff(v)))
    k = (v - v[0]) / step
    return step if np.allclose(k, np.round(k), rtol=0, atol=rtol * max(1.0, float(k.max()))) else None


def verdict(c: Contrast, p_equivalence: float, alpha: float = ALPHA) -> str:
    """up / down / equivalent / inconclusive from a contrast whose `p` and an equivalence p-value
    (both already Holm-adjusted where a family was declared). A significant difference wins over
    equivalence: an effect smaller than the margin is still an effect."""
    if c.degenerate or np.isnan(c.p):
        return "inconclusive"
    if c.p <= alpha:
        return "up" if c.mean > 0 else "down"
    if p_equivalence <= alpha:
        return "equivalent"
    return "inconclusive"


def family_verdicts(x: Sequence[np.ndarray], margin: float, alpha: float = ALPHA) -> list[dict]:
    """One verdict per member of a declared family (e.g. the per-seed deltas of one metric at each
    sweep point): the two-sided tests are Holm-corrected over the family, and so, separately, are the
    TOST tests. Each entry: verdict, margin, p and p_holm (difference), p_tost and p_tost_holm,
    degenerate, resolution (the values' grid step, or None)."""
    contrasts = [contrast(x_N, alpha) for x_N in x]
    p_eq = [tost_p(x_N, margin) for x_N in x]
    p_holm, _ = holm([c.p for c in contrasts], alpha)
    p_eq_holm, _ = holm(p_eq, alpha)
    out = []
    for x_N, c, pe, ph, peh in zip(x, contrasts, p_eq, p_holm, p_eq_holm):
        adjusted = c._replace(p=float(ph))
        out.append({"verdict": verdict(adjusted, float(peh), alpha), "margin": float(margin), "alpha": alpha,
                    "p": _finite(c.p), "p_holm": _finite(ph), "p_tost": _finite(pe), "p_tost_holm": _finite(peh),
                    "degenerate": c.degenerate, "resolution": resolution(x_N), "family_size": len(x)})
    return out


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def verdicts_of(family: dict, margin: float = DEFAULT_MARGIN, alpha: float = ALPHA) -> dict:
    """key -> verdict of each per-seed contrast of one declared family (family_verdicts by name)."""
    return dict(zip(family, (v["verdict"] for v in family_verdicts(list(family.values()), margin, alpha))))


def interval_tests(mean: float, lo: float, hi: float, n: int, margin: float,
                   alpha: float = ALPHA) -> tuple[float, float]:
    """(two-sided p, TOST p) of a contrast known only by its stored 1 - alpha Student-t interval
    over n seeds (a summary.json's delta_ci95): the interval gives the standard error back,
    se = (hi - lo) / (2 t_{n-1, 1 - alpha/2}), so both tests are exactly those of the per-seed values.
    nan for no interval or a zero-width one (degenerate)."""
    if n is None or n < 2 or not all(v is not None and np.isfinite(v) for v in (mean, lo, hi)) or not hi > lo:
        return float("nan"), float("nan")
    df = n - 1
    se = (hi - lo) / (2 * stdtrit(df, 1 - alpha / 2))
    p = float(2 * stdtr(df, -abs(mean) / se))
    p_tost = float(max(stdtr(df, -(mean + margin) / se), stdtr(df, (mean - margin) / se)))
    return p, p_tost


def interval_verdicts(rows: Sequence[tuple], margin: float = DEFAULT_MARGIN, alpha: float = ALPHA) -> list[str]:
    """family_verdicts' verdicts for a family of stored contrasts (mean, lo, hi, n), e.g. the sweep
    points of every job of a multirun: Holm over all of them, not per job."""
    tests = [interval_tests(*row, margin=margin, alpha=alpha) for row in rows]
    p_holm, _ = holm([t[0] for t in tests], alpha)
    p_eq_holm, _ = holm([t[1] for t in tests], alpha)
    return [verdict(Contrast(row[0], row[1], row[2], float(ph), row[3] or 0, False), float(pe), alpha)
            for row, ph, pe in zip(rows, p_holm, p_eq_holm)]
