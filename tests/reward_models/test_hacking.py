"""sim/reward_models/hacking.py: the Gao et al. fit and a point's reward-hacking summary."""
from __future__ import annotations

import numpy as np
import pytest

from sim.reward_models import hacking


def test_gao_fit_recovers_alpha_beta_from_a_curve_of_its_form():
    """A curve generated from R(d) = d (alpha - beta log d) is fit exactly (it is linear in alpha, beta)."""
    d = np.linspace(0.0, 4.0, 21)  # d = 0 included: the fit must leave it out (both columns vanish there)
    fit = hacking.gao_fit(d, hacking.gao_curve(d, 1.3, 0.45))
    assert fit["alpha"] == pytest.approx(1.3, abs=1e-9) and fit["beta"] == pytest.approx(0.45, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12) and fit["rows"] == 20


def test_gao_fit_with_noise_and_degenerate_inputs():
    """With N(0, 0.01^2) noise (seed 0) on a curve of range ~1.5 the estimates stay within 0.05 (the
    least-squares standard errors here are ~0.01) and R^2 > 0.99; too few rows give None."""
    d = np.linspace(0.05, 3.0, 30)
    y = hacking.gao_curve(d, 1.0, 0.3) + np.random.default_rng(0).normal(0, 0.01, d.size)
    fit = hacking.gao_fit(d, y)
    assert abs(fit["alpha"] - 1.0) < 0.05 and abs(fit["beta"] - 0.3) < 0.05 and fit["r2"] > 0.99
    assert hacking.gao_fit(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 1.5]))["alpha"] is None


def test_summary_peak_gap_and_fit():
    steps = np.arange(5) * 10
    gold = np.array([1.0, 2.0, 3.0, 2.5, 2.0])
    proxy = np.array([1.0, 2.5, 3.5, 4.0, 4.5])
    d = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    s = hacking.summary(steps, gold, proxy, d)
    assert s["peak_gold"] == {"value": 3.0, "step": 20, "d": 1.0}
    assert s["final_gap"] == pytest.approx(-2.5)
    assert s["final"] == {"gold": 2.0, "proxy": 4.5, "d": 2.0}
    assert s["gao_fit"]["rows"] == 4 and s["gao_fit"]["beta"] > 0  # a rise then a fall: beta > 0
    assert hacking.summary(steps, np.full(5, np.nan), proxy, d)["peak_gold"] is None


def test_gao_fit_places_its_peak_and_says_when_it_lies_beyond_the_data():
    """R(d) = d (1 - 0.5 log d) peaks where R'(d) = 0; found here by a fine grid search of the curve
    itself (not by the closed form under test): d* = exp(1) = 2.718. Observed up to d = 4 it is in
    the data; observed only up to d = 2 the same curve's peak is beyond it; a curve with beta <= 0
    (still rising) has no peak."""
    grid = np.linspace(0.01, 10, 200_001)
    d_star = grid[np.argmax(hacking.gao_curve(grid, 1.0, 0.5))]
    wide = hacking.gao_fit(np.linspace(0.1, 4, 30), hacking.gao_curve(np.linspace(0.1, 4, 30), 1.0, 0.5))
    np.testing.assert_allclose(wide["d_peak"], d_star, rtol=1e-4)
    assert wide["peak_in_data"] and wide["d_min"] == 0.1 and wide["d_max"] == 4.0
    short = hacking.gao_fit(np.linspace(0.1, 2, 30), hacking.gao_curve(np.linspace(0.1, 2, 30), 1.0, 0.5))
    assert not short["peak_in_data"] and short["d_peak"] > short["d_max"]
    rising = hacking.gao_fit(np.linspace(0.1, 2, 30), hacking.gao_curve(np.linspace(0.1, 2, 30), 1.0, -0.2))
    assert rising["d_peak"] is None and not rising["peak_in_data"]


def test_gold_at_d_interpolates_where_the_run_first_reaches_d():
    d_T, gold_T = np.array([0.0, 1.0, 2.0, 1.5, 3.0]), np.array([0.0, 2.0, 4.0, 9.0, 1.0])
    assert hacking.gold_at_d(d_T, gold_T, 1.5) == 3.0  # between rows 1 and 2, not row 3's later 1.5
    assert hacking.gold_at_d(d_T, gold_T, 2.0) == 4.0 and hacking.gold_at_d(d_T, gold_T, 0.0) == 0.0
    assert np.isnan(hacking.gold_at_d(d_T, gold_T, 3.5))  # never reached
