"""analysis.quadrant_summary on hand-built metric rows (report() itself runs end to end in
tests/test_experiment.py)."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sim.output import per_point as analysis
from sim.analysis import diagnostics


def _rows(ud, uu):
    """3 logged rows x runs; row 0 (the reference, before any batch) must be ignored. No ties: du and
    dd share what ud and uu leave, so the untied samples are the whole batch."""
    ud, uu = np.array([[9.0] * len(ud[0])] + ud), np.array([[0.0] * len(uu[0])] + uu)
    m = {f"quad_{k}_{c}": np.zeros(ud.shape) for k in ("frac", "adv") for c in diagnostics.TIED}
    for q in diagnostics.QUADRANTS:
        m[f"quad_frac_{q}"] = {"ud": ud, "uu": uu}.get(q, (1 - ud - uu) / 2)
        m[f"quad_adv_{q}"] = np.full(ud.shape, {"uu": 1.0, "ud": 0.5, "du": -0.5, "dd": -1.0}[q])
    return m


def test_quadrant_summary_averages_batch_rows_and_tests_the_blogs_inequality():
    m = _rows(ud=[[0.30, 0.40], [0.20, 0.30]], uu=[[0.20, 0.20], [0.25, 0.25]])
    out = analysis.quadrant_summary(m, np.array([0, 1]))
    assert out["cells"]["ud"]["frac"] == pytest.approx(0.30)  # mean of rows 1-2, not row 0's 9.0
    assert out["cells"]["uu"]["frac"] == pytest.approx(0.225) and out["cells"]["dd"]["adv"] == -1.0
    blog = out["blog_inequality"]
    # per-run mean gaps over rows 1-2: run 0 (0.1 - 0.05) / 2 = 0.025, run 1 (0.2 + 0.05) / 2 = 0.125
    assert blog["ud_minus_uu_mean"] == pytest.approx(0.075) and blog["tie_share"] == pytest.approx(0.0)
    assert blog["ud_minus_uu_first"] == pytest.approx(0.15) and blog["ud_minus_uu_last"] == pytest.approx(0.0)
    assert blog["holds_at_fraction_of_logged_steps"] == pytest.approx(0.5)  # row 1 gap > 0, row 2 gap = 0
    # two runs: t = 0.075 / (0.0707 / sqrt 2) = 1.5 on 1 df, p = 0.37: not shown to hold
    assert blog["test"]["p"] == pytest.approx(stats.ttest_1samp([0.025, 0.125], 0.0).pvalue)
    assert blog["verdict"] == "inconclusive" and not blog["holds"]
    four = _rows(ud=[[0.30, 0.40, 0.35, 0.32], [0.31, 0.38, 0.33, 0.36]], uu=[[0.2] * 4, [0.2] * 4])
    assert analysis.quadrant_summary(four, np.arange(4))["blog_inequality"]["verdict"] == "up"
    flipped = analysis.quadrant_summary(_rows(ud=[[0.1, 0.12, 0.11], [0.1, 0.1, 0.13]], uu=[[0.3] * 3, [0.3] * 3]),
                                        np.arange(3))
    assert flipped["blog_inequality"]["verdict"] == "down" and not flipped["blog_inequality"]["holds"]


def test_the_inequality_is_read_among_untied_samples_with_the_tie_share_beside_it():
    """Half of every batch tied in phi' (ut): ud - uu among the untied half is twice its share of
    the whole batch."""
    m = _rows(ud=[[0.2] * 3, [0.2] * 3], uu=[[0.1] * 3, [0.1] * 3])
    for q in diagnostics.QUADRANTS:
        m[f"quad_frac_{q}"][1:] /= 2
    m["quad_frac_ut"][1:] = 0.5
    blog = analysis.quadrant_summary(m, np.arange(3))["blog_inequality"]
    assert blog["ud_minus_uu_mean"] == pytest.approx(0.1) and blog["tie_share"] == pytest.approx(0.5)
    assert blog["tie_share_phi_prime"] == pytest.approx(0.5)


def test_a_quadrant_no_response_fell_in_has_no_mean_advantage_and_no_warning():
    m = _rows(ud=[[0.3, 0.3], [0.3, 0.3]], uu=[[0.2, 0.2], [0.2, 0.2]])
    m["quad_adv_du"][1:] = np.nan  # empty in every batch; another cell's NaN entries are skipped
    m["quad_adv_dd"][1, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = analysis.quadrant_summary(m, np.array([0, 1]))
    assert out["cells"]["du"]["adv"] is None and out["cells"]["dd"]["adv"] == -1.0


def test_sampled_kappa_is_withheld_where_two_samples_per_prompt_make_it_one_by_construction():
    """With 2 equally weighted samples per prompt the shared-lambda tilt's KL cost is even in the
    shift, so kappa = 1 for any rewards (the smoke run of README's SmolLM2 command reported 1.000 for
    both); from 4 samples per prompt of a skewed reward it must differ from 1."""
    import jax

    rng = np.random.default_rng(0)
    two = (rng.integers(0, 2, (8, 2)).astype(float), rng.integers(0, 2, (8, 2)).astype(float))
    out = analysis.sampled_geometry(two, 0.05, jax.random.key(0))["geometry"]
    assert out["phi"]["tilt"] == {"kappa": None, "kappa_se": None} and "1 by construction" in out["kappa_note"]
    skewed = (np.array([[0.0, 0.0, 0.0, 1.0]] * 8), np.array([[1.0, 1.0, 1.0, 0.0]] * 8))
    out = analysis.sampled_geometry(skewed, 0.05, jax.random.key(0))["geometry"]
    assert "kappa_note" not in out
    assert out["phi"]["tilt"]["kappa"] < 0.99 and out["phi_prime"]["tilt"]["kappa"] > 1.01  # rare vs common


def test_ties_do_not_make_the_blogs_inequality_hold_by_construction():
    """A synthetic training run with no effect: phi (4 positions, p = 0.5) and phi' (binary)
    independent; phi' is 1 for every sample of prompts 0-7 (always tied with its group's mean) and
    a fair coin on prompts 8-15. Among untied samples p(phi up, phi' down) = p(phi up, phi' up) by
    symmetry, so p(ud) - p(uu) has no effect; counting the ties as 'down' (as the table did) makes
    it about +0.5 x p(phi up) and "holds". numpy seed 0; 8 runs x 4 batches of 16 prompts x 8."""
    rng = np.random.default_rng(0)
    P, G, T, N = 16, 8, 5, 8
    metrics = {f"quad_{k}_{c}": np.full((T, N), np.nan) for k in ("frac", "adv") for c in diagnostics.CELLS}
    step = jax.jit(diagnostics.quadrant_metrics)
    for t in range(1, T):
        for n in range(N):
            phi = rng.binomial(4, 0.5, (P, G)) / 4
            phi_prime = np.where(np.arange(P)[:, None] < 8, 1.0, rng.binomial(1, 0.5, (P, G)))
            out = step(jnp.array(phi), jnp.array(phi_prime), jnp.array(4 * phi + phi_prime), jnp.full((P, G), 1 / (P * G)))
            for k, v in out.items():
                metrics[k][t, n] = float(v)
    blog = analysis.quadrant_summary(metrics, np.arange(N))["blog_inequality"]
    assert blog["verdict"] in ("equivalent", "inconclusive") and not blog["holds"]
    assert abs(blog["tie_share"] - 0.5) < 0.05  # the 8 always-tied prompts, reported beside the gap
    assert abs(blog["ud_minus_uu_mean"]) < 0.1


def test_a_batch_of_ties_only_has_no_gap_and_no_warning():
    """A deterministic policy: every sample ties with its group in both rewards."""
    m = _rows(ud=[[0.0] * 3, [0.0] * 3], uu=[[0.0] * 3, [0.0] * 3])
    for q in diagnostics.QUADRANTS:
        m[f"quad_frac_{q}"][1:] = 0.0
    m["quad_frac_tt"][1:] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blog = analysis.quadrant_summary(m, np.arange(3))["blog_inequality"]
    assert blog["ud_minus_uu_mean"] is None and blog["tie_share"] == 1.0 and blog["verdict"] == "inconclusive"
