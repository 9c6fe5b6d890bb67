"""The report's own figures (sim.output.plots draws a single run's; these put several side by side).

Each function takes arrays and a path, draws with matplotlib's Agg backend and saves with
sim.output.plots.save.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim.output.plots import REWARD_STYLE, band, save  # noqa: E402

QUADRANT_STYLE = {"uu": ("C2", "φ↑ φ′↑"), "ud": ("C3", "φ↑ φ′↓"), "du": ("C0", "φ↓ φ′↑"), "dd": ("C7", "φ↓ φ′↓")}


def rewards_panels(path: Path, panels: list[tuple[str, np.ndarray, dict[str, np.ndarray]]], title: str) -> None:
    """One panel per condition: phi and phi_prime against step (mean and 95% band over seeds).
    panels: (title, steps_T, {'phi': TxN, 'phi_prime': TxN})."""
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False, sharey=True)
    for ax, (name, steps_T, metrics) in zip(axes.flat, panels):
        for metric, (color, sym) in REWARD_STYLE.items():
            band(ax, steps_T, metrics[metric], color, sym)
        ax.set_title(name, fontsize=9)
        ax.set(ylim=(-0.02, 1.02), xlabel="step")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("E[reward]")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def floor_figure(path: Path, steps_T: np.ndarray, curves: dict[str, dict[str, np.ndarray]], title: str) -> None:
    """phi (dashed) and phi_prime (solid) of each condition on one axis; curves: label -> metrics."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, metrics) in enumerate(curves.items()):
        band(ax, steps_T, metrics["phi_prime"], f"C{3 + i}", f"φ′ ({label})")
        band(ax, steps_T, metrics["phi"], f"C{3 + i}", f"φ ({label})", ls="--")
    ax.set(xlabel="step", ylabel="E[reward]", ylim=(-0.02, 1.02))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    save(fig, path)


def quadrant_figure(path: Path, steps_T: np.ndarray, panels: dict[str, dict[str, np.ndarray]], title: str) -> None:
    """The blog's Table 1 over training: the fraction of each batch in each quadrant (sample vs its
    group's mean), one panel per condition; panels: label -> {'uu': TxN, 'ud': ..., ...}."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (label, fracs) in zip(axes[0], panels.items()):
        for q, (color, name) in QUADRANT_STYLE.items():
            band(ax, steps_T, fracs[q], color, name)
        ax.set_title(label, fontsize=9)
        ax.set(xlabel="step")
    axes[0, 0].set_ylabel("fraction of the batch")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def lines_figure(path: Path, x_label: str, lines: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                 y_label: str, title: str, log_x: bool = False) -> None:
    """One line with a 95% band per condition; lines: label -> (x, mean, lo, hi)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, (x, mean, lo, hi)) in enumerate(lines.items()):
        ax.plot(x, mean, "o-", color=f"C{i}", label=label, ms=3)
        ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(1, color="k", lw=0.6, ls=":")
    if log_x:
        ax.set_xscale("log")
        ticks = sorted({float(v) for x, *_ in lines.values() for v in x})
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.minorticks_off()
    ax.set(xlabel=x_label, ylabel=y_label)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)
