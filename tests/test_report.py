"""experiments/report.py: the statistics and verdicts the report's sentences rest on."""
from types import SimpleNamespace

import numpy as np
from scipy import stats as sp

from experiments import report
from sim.tasks import toy as T


def test_tilt_share_is_phis_part_of_the_bad_tokens():
    # blog task at phi_prime's positions: 12 bad tokens (16 - 4), of which phi's 4 good ones
    task = T.Task(16, 8, 16, T.RewardSpec((0, 1, 2, 3), (0, 1, 2, 3)), T.RewardSpec((4, 5, 6, 7), (4, 5, 6, 7)))
    assert report.tilt_spill_share(task) == 4 / 12


def test_change_is_paired_by_row_and_a_zero_width_interval_says_so():
    x_TxN = np.array([[0.5, 0.5, 0.5], [0.4, 0.3, 0.35]])
    mean, lo, hi = report.change(x_TxN)
    assert np.isclose(mean, -0.15) and lo < mean < hi < 0
    np.testing.assert_allclose(report.delta_N(x_TxN), [-0.1, -0.2, -0.15])
    assert report.fmt((-0.1, -0.2, -0.01)) == "-0.100 [-0.200, -0.010]"
    # every seed moved by the same 1/16: the tabular control's [+0.062, +0.062] is not an interval
    assert report.fmt(report.change(np.array([[0.5] * 4, [0.5625] * 4]))) == "+0.062 (every seed the same: no interval)"
    assert report.fmt((0.0621, 0.06208, 0.06212)) == "+0.06210 [+0.06208, +0.06212]"


def test_judge_holm_corrects_over_the_declared_family_and_needs_tost_for_no_change():
    """The reviewer's d = 16 example (an interval across 0) is inconclusive, not "no change"; a
    cell with p = 0.01 on its own (scipy) is no fall in a family of 20 null cells."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(16)
    across_zero = -0.0225 + (z - z.mean()) / z.std(ddof=1) * 0.0295 * 4 / sp.t.ppf(0.975, 15)
    np.testing.assert_allclose(sp.ttest_1samp(across_zero, 0).confidence_interval(0.95), [-0.052, 0.007], atol=1e-9)
    flat = 0.002 * rng.standard_normal(16)
    assert report.judge({"a": across_zero, "b": flat}) == {"a": "inconclusive", "b": "equivalent"}
    lone = np.array([-0.05, -0.01, -0.07, -0.03, -0.06, 0.0, -0.04, -0.02])
    assert sp.ttest_1samp(lone, 0.0).pvalue < 0.01
    family = {"lone": lone} | {i: 0.05 * np.random.default_rng(i).standard_normal(8) for i in range(1, 21)}
    assert report.judge({"lone": lone})["lone"] == "down" and report.judge(family)["lone"] == "inconclusive"



def _run(phi_prime_TxN, phi_TxN=None):
    T, N = phi_prime_TxN.shape
    phi_TxN = np.linspace(0, 0.5, T)[:, None] + np.zeros((T, N)) if phi_TxN is None else phi_TxN
    metrics = {"phi_prime": phi_prime_TxN, "phi": phi_TxN, "spill": np.linspace(0, 0.1, T)[:, None] + np.zeros((T, N))}
    return report.Run("x", ("seeds=8", "task.phi_prime.kappa=0.94", "algo.kl.beta=0"), None,
                      SimpleNamespace(points_R=np.zeros(N, int)), SimpleNamespace(metrics=metrics))


def test_section_6_compares_each_variant_with_the_default_paired_by_seed():
    """The default falls by a per-seed amount; variant A by 0.1 less on every seed (plus noise), B
    by the same on every seed (plus noise of sd 0.002), C by a seed-to-seed mix. The paired
    contrast is ttest_rel's (scipy); A is a smaller fall, B the same fall within the margin, C
    not told apart from the default."""
    rng = np.random.default_rng(1)
    base_N = -0.2 + 0.05 * rng.standard_normal(8)
    ends = {"GRPO (default)": base_N, "A": base_N + 0.1 + 0.01 * rng.standard_normal(8),
            "B": base_N + 0.002 * rng.standard_normal(8), "C": base_N + 0.05 * rng.standard_normal(8)}
    runs = {k: _run(np.stack([np.full(8, 0.3), 0.3 + v])) for k, v in ends.items()}
    text, facts = report.mechanism_section(runs)
    assert facts["paired verdict"] == {"A": "up", "B": "equivalent", "C": "inconclusive"}
    lo, hi = sp.ttest_rel(ends["A"], base_N).confidence_interval(0.95)
    np.testing.assert_allclose(facts["paired"]["A"], [np.mean(ends["A"] - base_N), lo, hi], rtol=1e-9)
    assert "paired by seed" in text and "Δφ′ − default's (paired)" in text


def test_table_is_markdown_with_one_row_per_entry():
    text = report.table(["a", "b"], [[1, 2], [3, 4]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 2 |", "| 3 | 4 |"]
