"""Figures. Each function takes arrays and a path, draws with matplotlib's Agg backend, and closes."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim.analysis.diagnostics import TIED  # noqa: E402
from sim.output.results import Bands, band_TxN  # noqa: E402

REWARD_STYLE = {"phi": ("C0", "φ"), "phi_prime": ("C3", "φ′")}
MAX_BANDED_POINTS = 4  # beyond this many sweep points, curves are drawn without bands or legend

# Readable names for sweep axes in figures; other keys are shown as they are.
AXIS_LABELS = {
    "task.phi.weight": "w₁ (task.phi.weight)",
    "task.phi_prime.weight": "w₂ (task.phi_prime.weight)",
    "task.phi_prime.relative_weight": "w₂/w₁ (task.phi_prime.relative_weight)",
    "task.phi.competence": "reference competence at φ",
    "task.phi_prime.competence": "reference competence at φ′",
    "algo.kl.beta": "β (algo.kl.beta)",
    "optim.lr": "learning rate (optim.lr)",
}


def save(fig, path) -> None:
    """Lay out, write and close: every figure of sim and of the experiments report. tight_layout
    leaves a placeholder layout engine behind, for which savefig would first draw the whole figure
    once more (0.75 -> 0.51 s of saving for a default run's four figures): dropped."""
    fig.tight_layout()
    fig.set_layout_engine(None)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def band(ax, steps_T, x_TxN, color, label, ls="-"):
    """The mean over runs (x_TxN's columns) against step, with its 95% band."""
    mean, lo, hi = band_TxN(x_TxN)
    ax.plot(steps_T, mean, color=color, label=label, ls=ls)
    ax.fill_between(steps_T, lo, hi, color=color, alpha=0.25, linewidth=0)


def rewards_figure(path: Path, steps_T: np.ndarray, bands: Bands, point_labels: list[str], title: str,
                   n_seeds: int) -> None:
    """phi and phi_prime against step (mean and 95% band over seeds), the total reward and the KL.
    Up to MAX_BANDED_POINTS sweep points get their own line style; more are drawn as mean curves
    shaded from light (first point) to dark (last)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    n_points = len(point_labels)
    banded = n_points <= MAX_BANDED_POINTS
    styles = ["-", "--", ":", "-."]
    panels = [(axes[0], name, color, sym) for name, (color, sym) in REWARD_STYLE.items()]
    panels += [(axes[1], "reward", "C2", "r"), (axes[2], "kl", "C4", "KL")]
    for p, label in enumerate(point_labels):
        if np.all(np.isnan(bands["phi"][0][:, p])):  # every run of the point left out (diverged)
            continue
        suffix = f" ({label})" if label else ""
        for ax, name, color, sym in panels:
            mean, lo, hi = (b[:, p] for b in bands[name])
            if banded:
                ax.plot(steps_T, mean, color=color, ls=styles[p % len(styles)], label=sym + suffix)
                ax.fill_between(steps_T, lo, hi, color=color, alpha=0.25, linewidth=0)
            else:
                ax.plot(steps_T, mean, color=color, alpha=0.25 + 0.75 * p / max(n_points - 1, 1), lw=0.8,
                        label=sym if p == n_points - 1 else None)
    axes[0].set(title="expected rewards", xlabel="step", ylabel="E[reward]", ylim=(-0.02, 1.02))
    axes[1].set(title="total reward r", xlabel="step", ylabel="E[r]")
    axes[2].set(title="KL(π ‖ π_ref)", xlabel="step", ylabel="nats")
    if axes[0].lines:  # every run of every point may have been left out (diverged)
        axes[0].legend(fontsize=8)
    what = f"mean and 95% band over {n_seeds} seeds" if banded else f"{n_points} sweep points, mean of {n_seeds} seeds"
    fig.suptitle(f"{title}  ({what})", fontsize=10)
    save(fig, path)


def _positions(values: list) -> tuple[np.ndarray, bool, str]:
    """x positions for axis values: the values themselves (log scale when positive and spanning
    20x or more), or evenly spaced categories for strings and non-finite numbers."""
    numeric = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    if not numeric:
        return np.arange(len(values), dtype=float), True, "linear"
    x = np.array(values, float)
    log = np.all(x > 0) and x.max() >= 20 * x.min()
    return x, False, "log" if log else "linear"


def _sorted_unique(values: list) -> list:
    uniq = list(dict.fromkeys(values))
    try:
        return sorted(uniq)
    except TypeError:  # mixed types: keep the order of appearance
        return uniq


def _delta(point: dict, metric: str) -> tuple[float, float, float]:
    s = point["metrics"][metric]
    nan = float("nan")
    mean, (lo, hi) = s["delta_mean"], s["delta_ci95"]
    return (nan if mean is None else mean), (nan if lo is None else lo), (nan if hi is None else hi)


def sweep_figure(path: Path, points: list[dict], axes: list[str], title: str,
                 metrics: tuple[str, ...] = ("phi", "phi_prime")) -> None:
    """The final change (end - start) of each metric against the sweep axes, from point summaries
    ({"values": {axis: value}, "metrics": {name: metric_summary}}). One axis: lines with 95% CI
    bands; two axes: one heatmap per metric (first axis down, second across)."""
    if len(axes) == 1:
        _sweep_lines(path, points, axes[0], title, metrics)
    elif len(axes) == 2:
        _sweep_heatmaps(path, points, axes, title, metrics)
    else:
        raise ValueError(f"sweep figures need 1 or 2 axes, got {len(axes)}: {axes}")


def _label(metric: str) -> str:
    return "Δ" + REWARD_STYLE.get(metric, (None, metric))[1]


def _sweep_lines(path, points, axis, title, metrics):
    order = _sorted_unique([p["values"][axis] for p in points])
    ordered = sorted(points, key=lambda p: order.index(p["values"][axis]))
    values = [p["values"][axis] for p in ordered]
    x, categorical, scale = _positions(values)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, metric in enumerate(metrics):
        color = REWARD_STYLE.get(metric, (f"C{i}",))[0]
        mean, lo, hi = np.array([_delta(p, metric) for p in ordered]).T
        ax.plot(x, mean, "o-", color=color, label=_label(metric))
        ax.fill_between(x, lo, hi, color=color, alpha=0.25, linewidth=0)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale(scale)
    if categorical:
        ax.set_xticks(x, [f"{v:g}" if isinstance(v, float) else str(v) for v in values])
    n = next(iter(ordered[0]["metrics"].values()))["n_seeds"]
    ax.set(xlabel=AXIS_LABELS.get(axis, axis), ylabel="final change (end − start)",
           title=f"{title}\n(mean and 95% CI over {n} seeds)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    save(fig, path)


def _sweep_heatmaps(path, points, axes, title, metrics):
    rows, cols = (_sorted_unique([p["values"][a] for p in points]) for a in axes)
    fig, panels = plt.subplots(1, len(metrics), figsize=(1.0 + 0.75 * len(cols) * len(metrics) + 2 * len(metrics),
                                                         1.5 + 0.5 * len(rows)), squeeze=False)
    for ax, metric in zip(panels[0], metrics):
        grid = np.full((len(rows), len(cols)), np.nan)
        for p in points:
            grid[rows.index(p["values"][axes[0]]), cols.index(p["values"][axes[1]])] = _delta(p, metric)[0]
        lim = np.nanmax(np.abs(grid)) if np.any(np.isfinite(grid)) else 1.0
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
        if len(rows) * len(cols) <= 100:
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(cols)), [f"{v:g}" if isinstance(v, float) else str(v) for v in cols], fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{v:g}" if isinstance(v, float) else str(v) for v in rows], fontsize=7)
        ax.set(xlabel=AXIS_LABELS.get(axes[1], axes[1]), ylabel=AXIS_LABELS.get(axes[0], axes[0]),
               title=f"{_label(metric)} (mean over seeds)")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def _plain_log_ticks(ax) -> None:
    """Ticks 0.1, 0.2, 0.5, 1, 2, 5 labelled plainly on a log axis of ratios."""
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20]))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _per_point(ax, steps_T, metrics, points_R, point_labels, series) -> None:
    """One band per (sweep point, (metric, colour, label) in series); points differ by line style."""
    styles = ["-", "--", ":", "-."]
    for p, label in enumerate(point_labels):
        runs = np.flatnonzero(points_R == p)
        suffix = f" ({label})" if label else ""
        for name, color, text in series:
            x_TxN = metrics[name][:, runs]
            keep = ~np.all(np.isnan(x_TxN), 1)  # batch metrics have no row 0
            band(ax, steps_T[keep], x_TxN[keep], color, text + suffix)
            ax.lines[-1].set_linestyle(styles[p % len(styles)])


def diagnostics_figure(path: Path, steps_T: np.ndarray, metrics: dict[str, np.ndarray], points_R: np.ndarray,
                       point_labels: list[str], title: str) -> None:
    """Over steps: the blog's quadrant fractions and mean advantages (Table 1), each reward's
    share of the advantage variance, and kappa(delta) under the current policy."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    quads = [("uu", "C2", "φ↑ φ′↑"), ("ud", "C1", "φ↑ φ′↓"), ("du", "C0", "φ↓ φ′↑"), ("dd", "C7", "φ↓ φ′↓")]
    ties = {"quad_frac_ties": sum(metrics[f"quad_frac_{c}"] for c in TIED)} if f"quad_frac_{TIED[0]}" in metrics else {}
    _per_point(axes[0], steps_T, metrics | ties, points_R, point_labels,
               [(f"quad_frac_{q}", c, t) for q, c, t in quads] + [("quad_frac_ties", "k", "a tie")] * bool(ties))
    _per_point(axes[1], steps_T, metrics, points_R, point_labels, [(f"quad_adv_{q}", c, t) for q, c, t in quads])
    shares = [(f"adv_share_{n}", c, s) for n, (c, s) in REWARD_STYLE.items()]
    _per_point(axes[2], steps_T, metrics, points_R, point_labels, shares)
    kappas = [(f"kappa_{n}", c, s) for n, (c, s) in REWARD_STYLE.items() if f"kappa_{n}" in metrics]
    with np.errstate(invalid="ignore"):
        finite = {k: np.where(np.isfinite(v), v, np.nan) for k, v in metrics.items() if k.startswith("kappa_")}
    _per_point(axes[3], steps_T, finite, points_R, point_labels, kappas)
    axes[0].set(title="quadrants (↑ above the group mean, ↓ below; ties apart)", xlabel="step",
                ylabel="fraction of batch")
    axes[1].set(title="mean advantage per quadrant", xlabel="step", ylabel="advantage")
    axes[2].set(title="share of advantage variance", xlabel="step", ylabel="squared correlation", ylim=(0, 1))
    axes[3].set(title="κ(δ) under the current policy", xlabel="step", ylabel="C(+δ)/C(−δ)")
    axes[3].axhline(1.0, color="k", lw=0.6)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # a pretrained policy logs no kappa: its panel stays empty
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def kl_cost_figure(path: Path, curves: dict, family: str, title: str) -> None:
    """C(delta) for gains and losses of phi and phi_prime, over all policies (the exponential
    tilt) and within the policy family, and kappa(delta) = C(+delta) / C(-delta)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    d = curves["delta"]
    for ax, (name, (color, sym)) in zip(axes[:2], REWARD_STYLE.items()):
        c = curves[name]
        ax.plot(d, c["tilt_gain"], color=color, label="gain, all policies")
        ax.plot(d, c["tilt_loss"], color=color, ls="--", label="loss, all policies")
        if "family_gain" in c:  # computed with analysis=full only
            ax.plot(d, c["family_gain"], color=color, marker="o", ms=3, alpha=0.5, label=f"gain, {family}")
            ax.plot(d, c["family_loss"], color=color, marker="o", ms=3, ls="--", alpha=0.5, label=f"loss, {family}")
        ax.set(title=f"{sym}: KL cost of moving E[{sym}] by ±δ", xlabel="δ", ylabel="min KL (nats)", yscale="log")
        ax.legend(fontsize=7)
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (color, sym) in REWARD_STYLE.items():
            c = curves[name]
            kinds = (("tilt", {}, "all policies"), ("family", dict(marker="o", ms=3, alpha=0.5), family))
            for kind, style, label in kinds[:2 if "family_gain" in c else 1]:
                kappa_D = c[f"{kind}_gain"] / c[f"{kind}_loss"]
                kappa_D = np.where((kappa_D > 0) & np.isfinite(kappa_D), kappa_D, np.nan)  # 0, inf: out of reach
                axes[2].plot(d, kappa_D, color=color, label=f"{sym}, {label}", **style)
    axes[2].axhline(1.0, color="k", lw=0.6)
    axes[2].set(title="κ(δ) = C(+δ) / C(−δ)", xlabel="δ", ylabel="κ", yscale="log")
    _plain_log_ticks(axes[2])
    axes[2].legend(fontsize=7)
    missing = "out of reach, or the family solve missed it by > 1%" if "family_gain" in curves["phi"] else "out of reach"
    fig.suptitle(f"{title}  (a missing point: that move is {missing})", fontsize=10)
    save(fig, path)


def orthogonality_figure(path: Path, values_J: np.ndarray, values_K: np.ndarray, ref_JxK: np.ndarray,
                         final_JxK: np.ndarray, corr_ref: float, corr_final: float) -> None:
    """The joint distribution of (phi, phi_prime) under the reference and the final policy (log10
    probability; every cell coloured = every pair reachable), with the correlation in the title."""
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.8))
    for ax, joint, name, corr in ((axes[0], ref_JxK, "reference", corr_ref), (axes[1], final_JxK, "final policy", corr_final)):
        with np.errstate(divide="ignore"):
            img = ax.imshow(np.log10(joint).T, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(values_J)), [f"{v:.2g}" for v in values_J])
        ax.set_yticks(range(len(values_K)), [f"{v:.2g}" for v in values_K])
        ax.set(title=f"{name}: corr(φ, φ′) = {corr:.3f}", xlabel="φ", ylabel="φ′")
        fig.colorbar(img, ax=ax, label="log10 P(φ, φ′)")
    save(fig, path)


def sft_loss_figure(path: Path, loss_KxS: np.ndarray, floor_K: list[float], labels: list[str], title: str) -> None:
    """The SFT loss (mean per-token NLL) of each reference against step, with its floor (the
    teacher's per-token entropy) dashed."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps_S = np.arange(1, loss_KxS.shape[1] + 1)
    for k, (loss_S, floor, label) in enumerate(zip(loss_KxS, floor_K, labels)):
        ax.plot(steps_S, loss_S, color=f"C{k}", lw=1, label=label)
        ax.axhline(floor, color=f"C{k}", ls="--", lw=1)
    ax.set(title=title, xlabel="SFT step", ylabel="NLL per token (nats)")
    ax.legend(fontsize=7, title="dashed: teacher entropy", title_fontsize=7)
    save(fig, path)


def rm_loss_figure(path: Path, loss_KxS: np.ndarray, labels: list[str], title: str) -> None:
    """The Bradley-Terry loss (mean NLL per pair, plus the l2 term) of each reward-model fit against step."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps_S = np.arange(1, loss_KxS.shape[1] + 1)
    for k, (loss_S, label) in enumerate(zip(loss_KxS, labels)):
        ax.plot(steps_S, loss_S, color=f"C{k % 10}", lw=1, label=label)
    ax.axhline(np.log(2), color="gray", ls=":", lw=1, label="log 2 (a constant model)")
    ax.set(title=title, xlabel="fit step", ylabel="Bradley–Terry NLL per pair")
    ax.legend(fontsize=7)
    save(fig, path)


def hacking_figure(path: Path, d_TxN: np.ndarray, gold_TxN: np.ndarray, proxy_TxN: np.ndarray, labels: list[str],
                   fits: list[dict | None], title: str) -> None:
    """Gold (solid) and proxy (dashed) reward against d = sqrt(KL(pi || ref)) for each sweep point (means
    over its seeds), the gold's peak marked, and the fit gold(0) + d (alpha - beta log d) dotted: the
    picture of Gao, Schulman & Hilton (2022)."""
    from sim.reward_models.hacking import gao_curve

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for p, label in enumerate(labels):
        d, gold, proxy = d_TxN[:, p], gold_TxN[:, p], proxy_TxN[:, p]
        if not np.any(np.isfinite(gold)):
            continue
        c = f"C{p % 10}"
        ax.plot(d, gold, color=c, lw=1.5, label=f"gold ({label})" if label else "gold")
        ax.plot(d, proxy, color=c, lw=1, ls="--")
        k = int(np.nanargmax(gold))
        ax.plot(d[k], gold[k], "o", color=c, ms=4)
        fit = fits[p] if p < len(fits) else None
        if fit and fit.get("alpha") is not None:
            grid = np.linspace(0, np.nanmax(d), 100)
            ax.plot(grid, gold[0] + gao_curve(grid, fit["alpha"], fit["beta"]), color=c, lw=0.8, ls=":")
    ax.set(title=title, xlabel="d = √KL(π ‖ π_ref)  (nats^½)", ylabel="E[reward]")
    ax.legend(fontsize=7, title="dashed: proxy; dotted: Gao fit; ●: gold peak", title_fontsize=7)
    save(fig, path)
