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
