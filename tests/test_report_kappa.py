"""experiments/report_kappa.py: which of kappa' and c' the fall of phi' follows, from hand-made arms."""
from types import SimpleNamespace

import numpy as np
from scipy import stats as sp

from experiments import report_kappa
from experiments.runs import Run

N = 16
CELLS = {("mean", 4): (0.9, 0.81, 0.7), ("all", 1): (0.9, 0.81, 0.7), ("all", 2): (0.9, 0.7), ("all", 4): (0.9, 0.948683, 0.7)}


def _runs(fall, rng) -> dict:
    """One Run per (shape, K) with a point per c': phi' starts at the reward's mean and ends `fall(shape,
    K, c)` lower, plus a per-seed amount shared by every arm (so pairing by seed removes it) and noise."""
    seed_N = 0.05 * rng.standard_normal(N)
    runs = {}
    for (shape, k), cs in CELLS.items():
        start_TxR, end_TxR, points_R = [], [], []
        for p, c in enumerate(cs):
            mean = c if shape == "mean" else c ** k
            start_TxR.append(np.full(N, mean))
            end_TxR.append(mean - fall(shape, k, c) + seed_N + 0.002 * rng.standard_normal(N))
            points_R.append(np.full(N, p))
        phi_prime = np.stack([np.concatenate(start_TxR), np.concatenate(end_TxR)])
        metrics = {"phi_prime": phi_prime, "kappa_phi_prime": np.ones_like(phi_prime)}
        batch = SimpleNamespace(points_R=np.concatenate(points_R), point_values=[{report_kappa.COMPETENCE: c} for c in cs])
        label = report_kappa.ARMS[(shape, k)]
        runs[label] = Run(label, ("seeds=16",), None, batch, SimpleNamespace(metrics=metrics))
    return runs


def test_a_fall_that_follows_the_rewards_mean_is_kappa_s():
    """Over all policies kappa' of these 0/1 (or mean) rewards is a function of the reward's mean: a fall
    that depends on the mean alone changes with K at a fixed c' and not with c' at a fixed mean."""
    mean = lambda shape, k, c: c if shape == "mean" else c ** k  # noqa: E731
    text, facts = report_kappa.section(_runs(lambda shape, k, c: 0.5 * mean(shape, k, c), np.random.default_rng(0)))
    assert facts["answer"].startswith("κ′ explains the fall"), facts
    name = "c′ = 0.9: all over 4 − all over 1"
    assert facts["verdicts"][name] == "up"  # mean 0.656 vs 0.9: a smaller fall


def test_a_fall_that_follows_the_number_of_positions_is_neither_alone():
    runs = _runs(lambda shape, k, c: 0.1 * k, np.random.default_rng(1))
    text, facts = report_kappa.section(runs)
    assert facts["answer"].startswith("neither alone explains the fall"), facts
    # the contrast is the paired one (scipy's ttest_rel), not a difference of two arms' intervals
    d4 = report_kappa.delta_N(runs, "all", 4, 0.948683)
    d1 = report_kappa.delta_N(runs, "all", 1, 0.81)
    lo, hi = sp.ttest_rel(d4, d1).confidence_interval(0.95)
    assert f"{np.mean(d4 - d1):+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
