"""sim/reward_models/best_of_n.py: the exact best-of-n distribution, its KL, and the R(d) = d(alpha - beta d) fit."""
from __future__ import annotations

import numpy as np
import pytest

from sim.reward_models import best_of_n as bon


def test_the_best_of_n_distribution_matches_sampling_with_ties_broken_by_draw_order():
    """Monte Carlo by hand: draw n = 3 from the reference, keep the first of the highest-scoring draws."""
    ref_N = np.array([0.1, 0.2, 0.3, 0.4])
    proxy_N = np.array([2.0, 1.0, 1.0, 0.0])  # responses 1 and 2 tie
    rng = np.random.default_rng(0)
    draws_MxN = rng.choice(4, size=(200_000, 3), p=ref_N)
    kept_M = draws_MxN[np.arange(len(draws_MxN)), np.argmax(proxy_N[draws_MxN], 1)]
    freq_N = np.bincount(kept_M, minlength=4) / len(kept_M)
    np.testing.assert_allclose(bon.best_of_n_N(ref_N, proxy_N, 3), freq_N, atol=3e-3)
    # by hand: P(best in the top group) = 1 - 0.9^3; the tie group (mass 0.5) wins with 0.9^3 - 0.4^3, split 2:3
    want = [1 - 0.9 ** 3, (0.9 ** 3 - 0.4 ** 3) * 0.4, (0.9 ** 3 - 0.4 ** 3) * 0.6, 0.4 ** 3]
    np.testing.assert_allclose(bon.best_of_n_N(ref_N, proxy_N, 3), want, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_with_many_small_untied_atoms_the_exact_kl_approaches_log_n_minus_n_minus_1_over_n(n):
    rng = np.random.default_rng(n)
    ref_PxN = rng.dirichlet(np.ones(5000), size=2)
    proxy_PxN = rng.normal(size=(2, 5000))  # distinct scores
    out = bon.best_of_n(ref_PxN, proxy_PxN, np.zeros((2, 5000)), n)
    assert out["kl_formula"] == pytest.approx(np.log(n) - (n - 1) / n, abs=1e-15)
    # the identity holds for a continuous score; 5000 atoms of unequal mass come within a few 1e-3, below it
    assert out["kl_formula"] - 5e-3 <= out["kl_exact"] <= out["kl_formula"] + 1e-12


def test_ties_lower_the_kl_and_n_1_is_the_reference():
    ref = np.full((1, 4), 0.25)
    gold = np.array([[0.0, 1.0, 2.0, 3.0]])
    tied = bon.best_of_n(ref, np.array([[0.0, 1.0, 1.0, 1.0]]), gold, 8)
    assert tied["kl_exact"] < tied["kl_formula"]
    assert tied["gold"] == pytest.approx((1 - 0.25 ** 8) * 2.0)  # the top group is won, uniform inside it
    one = bon.best_of_n(ref, np.array([[3.0, 1.0, 0.0, 2.0]]), gold, 1)
    assert one["gold"] == pytest.approx(1.5) and one["kl_exact"] == pytest.approx(0.0, abs=1e-15)


def test_bon_fit_recovers_a_known_curve_and_says_where_its_peak_lies():
    d = np.linspace(0.0, 3.0, 13)
    fit = bon.bon_fit(d, d * (1.2 - 0.3 * d))
    assert fit["alpha"] == pytest.approx(1.2) and fit["beta"] == pytest.approx(0.3) and fit["r2"] == pytest.approx(1.0)
    assert fit["d_peak"] == pytest.approx(2.0) and fit["peak_in_data"] and fit["rows"] == 12  # d = 0 is left out
    rising = bon.bon_fit(d, d * (1.2 + 0.1 * d))
    assert rising["d_peak"] is None and not rising["peak_in_data"]
    assert bon.bon_fit(d[:3], d[:3])["alpha"] is None


def test_gold_at_d_interpolates_and_is_nan_outside():
    assert bon.gold_at_d([0.0, 1.0, 2.0], [1.0, 2.0, 4.0], 1.5) == pytest.approx(3.0)
    assert np.isnan(bon.gold_at_d([0.0, 1.0], [1.0, 2.0], 1.5))
