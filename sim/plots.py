"""Figures. Each function takes arrays and a path, draws with matplotlib's Agg backend, and closes."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim.results import band_TxN  # noqa: E402

REWARD_STYLE = {"phi": ("C0", "φ"), "phi_prime": ("C3", "φ′")}


def _band(ax, steps_T, x_TxN, color, label):
    mean, lo, hi = band_TxN(x_TxN)
    ax.plot(steps_T, mean, color=color, label=label)
    ax.fill_between(steps_T, lo, hi, color=color, alpha=0.25, linewidth=0)


def rewards_figure(path: Path, steps_T: np.ndarray, metrics: dict[str, np.ndarray], points_R: np.ndarray,
                   point_labels: list[str], title: str) -> None:
    """phi and phi_prime against step (mean and 95% band over seeds), the total reward and the KL.
    With several sweep points, each point gets its own line style."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = ["-", "--", ":", "-."]
    for p, label in enumerate(point_labels):
        runs = np.flatnonzero(points_R == p)  # runs marked -1 (e.g. diverged) belong to no point
        if runs.size == 0:
            continue
        suffix = f" ({label})" if label else ""
        ls = styles[p % len(styles)]
        for name, (color, sym) in REWARD_STYLE.items():
            _band(axes[0], steps_T, metrics[name][:, runs], color, sym + suffix)
            axes[0].lines[-1].set_linestyle(ls)
        _band(axes[1], steps_T, metrics["reward"][:, runs], "C2", "r" + suffix)
        _band(axes[2], steps_T, metrics["kl"][:, runs], "C4", "KL" + suffix)
        axes[1].lines[-1].set_linestyle(ls)
        axes[2].lines[-1].set_linestyle(ls)
    n = int(np.sum(points_R == 0))
    axes[0].set(title="expected rewards", xlabel="step", ylabel="E[reward]", ylim=(-0.02, 1.02))
    axes[1].set(title="total reward r", xlabel="step", ylabel="E[r]")
    axes[2].set(title="KL(π ‖ π_ref)", xlabel="step", ylabel="nats")
    if axes[0].lines:  # every run of every point may have been left out (diverged)
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}  (mean and 95% band over {n} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _per_point(ax, steps_T, metrics, points_R, point_labels, series) -> None:
    """One band per (sweep point, (metric, colour, label) in series); points differ by line style."""
    styles = ["-", "--", ":", "-."]
    for p, label in enumerate(point_labels):
        runs = np.flatnonzero(points_R == p)
        suffix = f" ({label})" if label else ""
        for name, color, text in series:
            x_TxN = metrics[name][:, runs]
            keep = ~np.all(np.isnan(x_TxN), 1)  # batch metrics have no row 0
            _band(ax, steps_T[keep], x_TxN[keep], color, text + suffix)
            ax.lines[-1].set_linestyle(styles[p % len(styles)])


def diagnostics_figure(path: Path, steps_T: np.ndarray, metrics: dict[str, np.ndarray], points_R: np.ndarray,
                       point_labels: list[str], title: str) -> None:
    """Over steps: the blog's quadrant fractions and mean advantages (Table 1), each reward's
    share of the advantage variance, and kappa(delta) under the current policy."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    quads = [("uu", "C2", "φ↑ φ′↑"), ("ud", "C1", "φ↑ φ′↓="), ("du", "C0", "φ↓= φ′↑"), ("dd", "C7", "φ↓= φ′↓=")]
    _per_point(axes[0], steps_T, metrics, points_R, point_labels, [(f"quad_frac_{q}", c, t) for q, c, t in quads])
    _per_point(axes[1], steps_T, metrics, points_R, point_labels, [(f"quad_adv_{q}", c, t) for q, c, t in quads])
    shares = [(f"adv_share_{n}", c, s) for n, (c, s) in REWARD_STYLE.items()]
    _per_point(axes[2], steps_T, metrics, points_R, point_labels, shares)
    kappas = [(f"kappa_{n}", c, s) for n, (c, s) in REWARD_STYLE.items()]
    with np.errstate(invalid="ignore"):
        finite = {k: np.where(np.isfinite(v), v, np.nan) for k, v in metrics.items() if k.startswith("kappa_")}
    _per_point(axes[3], steps_T, finite, points_R, point_labels, kappas)
    axes[0].set(title="quadrant fractions (vs group mean)", xlabel="step", ylabel="fraction of batch")
    axes[1].set(title="mean advantage per quadrant", xlabel="step", ylabel="advantage")
    axes[2].set(title="share of advantage variance", xlabel="step", ylabel="squared correlation", ylim=(0, 1))
    axes[3].set(title="κ(δ) under the current policy", xlabel="step", ylabel="C(+δ)/C(−δ)", yscale="log")
    axes[3].axhline(1.0, color="k", lw=0.6)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kl_cost_figure(path: Path, curves: dict, family: str, title: str) -> None:
    """C(delta) for gains and losses of phi and phi_prime, over all policies (the exponential
    tilt) and within the policy family, and kappa(delta) = C(+delta) / C(-delta)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    d = curves["delta"]
    for ax, (name, (color, sym)) in zip(axes[:2], REWARD_STYLE.items()):
        c = curves[name]
        ax.plot(d, c["tilt_gain"], color=color, label="gain, all policies")
        ax.plot(d, c["tilt_loss"], color=color, ls="--", label="loss, all policies")
        ax.plot(d, c["family_gain"], color=color, marker="o", ms=3, alpha=0.5, label=f"gain, {family}")
        ax.plot(d, c["family_loss"], color=color, marker="o", ms=3, ls="--", alpha=0.5, label=f"loss, {family}")
        ax.set(title=f"{sym}: KL cost of moving E[{sym}] by ±δ", xlabel="δ", ylabel="min KL (nats)", yscale="log")
        ax.legend(fontsize=7)
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (color, sym) in REWARD_STYLE.items():
            c = curves[name]
            axes[2].plot(d, c["tilt_gain"] / c["tilt_loss"], color=color, label=f"{sym}, all policies")
            axes[2].plot(d, c["family_gain"] / c["family_loss"], color=color, marker="o", ms=3, alpha=0.5,
                         label=f"{sym}, {family}")
    axes[2].axhline(1.0, color="k", lw=0.6)
    axes[2].set(title="κ(δ) = C(+δ) / C(−δ)", xlabel="δ", ylabel="κ", yscale="log")
    axes[2].legend(fontsize=7)
    fig.suptitle(title + "  (missing points: that move is out of reach)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
