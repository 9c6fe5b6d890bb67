"""analysis.quadrant_summary on hand-built metric rows (report() itself runs end to end in
tests/test_experiment.py)."""
import warnings

import numpy as np
import pytest

from sim import analysis, diagnostics


def _rows(ud, uu):
    """3 logged rows x 2 runs; row 0 (the reference, before any batch) must be ignored."""
    m = {}
    for q in diagnostics.QUADRANTS:
        m[f"quad_frac_{q}"] = np.full((3, 2), 0.25)
        m[f"quad_adv_{q}"] = np.full((3, 2), {"uu": 1.0, "ud": 0.5, "du": -0.5, "dd": -1.0}[q])
    m["quad_frac_ud"] = np.array([[9.0, 9.0]] + ud)
    m["quad_frac_uu"] = np.array([[0.0, 0.0]] + uu)
    return m


def test_quadrant_summary_averages_batch_rows_and_tests_the_blogs_inequality():
    m = _rows(ud=[[0.30, 0.40], [0.20, 0.30]], uu=[[0.20, 0.20], [0.25, 0.25]])
    out = analysis.quadrant_summary(m, np.array([0, 1]))
    assert out["cells"]["ud"]["frac"] == pytest.approx(0.30)  # mean of rows 1-2, not row 0's 9.0
    assert out["cells"]["uu"]["frac"] == pytest.approx(0.225) and out["cells"]["dd"]["adv"] == -1.0
    blog = out["blog_inequality"]
    # per-run mean gaps over rows 1-2: run 0 (0.1 - 0.05) / 2 = 0.025, run 1 (0.2 + 0.05) / 2 = 0.125
    assert blog["ud_minus_uu_mean"] == pytest.approx(0.075) and blog["holds"]
    assert blog["ud_minus_uu_first"] == pytest.approx(0.15) and blog["ud_minus_uu_last"] == pytest.approx(0.0)
    assert blog["holds_at_fraction_of_logged_steps"] == pytest.approx(0.5)  # row 1 gap > 0, row 2 gap = 0
    flipped = analysis.quadrant_summary(_rows(ud=[[0.1, 0.1], [0.1, 0.1]], uu=[[0.3, 0.3], [0.3, 0.3]]),
                                        np.array([0, 1]))
    assert not flipped["blog_inequality"]["holds"]


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
