"""sim.analysis.stats against textbook values: scipy.stats' t-tests and linregress, Holm's worked example,
TOST as two one-sided scipy t-tests, and the false-effect rate of verdicts on null data."""
import numpy as np
import pytest
from scipy import stats as sp

from sim.analysis import stats

X_N = np.array([0.12, -0.03, 0.31, 0.08, 0.22, 0.05, 0.17, -0.01])
Y_N = np.array([0.10, 0.02, 0.18, 0.11, 0.09, 0.04, 0.12, 0.00])


def test_contrast_is_ttest_1samp_and_its_interval():
    c = stats.contrast(X_N)
    ref = sp.ttest_1samp(X_N, 0.0)
    lo, hi = ref.confidence_interval(0.95)
    np.testing.assert_allclose([c.mean, c.lo, c.hi, c.p], [X_N.mean(), lo, hi, ref.pvalue], rtol=1e-10)
    assert c.n == 8 and not c.degenerate
    lo90, hi90 = sp.ttest_1samp(X_N, 0.0).confidence_interval(0.90)
    np.testing.assert_allclose(stats.contrast(X_N, alpha=0.10)[1:3], [lo90, hi90], rtol=1e-10)


def test_paired_contrast_is_ttest_rel():
    c = stats.paired_contrast(X_N, Y_N)
    ref = sp.ttest_rel(X_N, Y_N)
    np.testing.assert_allclose([c.mean, c.p], [np.mean(X_N - Y_N), ref.pvalue], rtol=1e-10)
    np.testing.assert_allclose([c.lo, c.hi], ref.confidence_interval(0.95), rtol=1e-10)
    with pytest.raises(ValueError, match="paired by seed"):
        stats.paired_contrast(X_N, Y_N[:-1])


def test_slope_contrast_is_linregress_per_seed_then_ttest_1samp():
    rng = np.random.default_rng(0)
    steps_T = np.arange(0, 100, 10.0)
    x_TxN = 0.002 * steps_T[:, None] + rng.normal(0, 0.05, (10, 6))
    slopes = np.array([sp.linregress(steps_T, x_TxN[:, i]).slope for i in range(6)])
    np.testing.assert_allclose(stats.slopes_N(x_TxN, steps_T), slopes, rtol=1e-9)
    c = stats.slope_contrast(x_TxN, steps_T)
    np.testing.assert_allclose([c.mean, c.p], [slopes.mean(), sp.ttest_1samp(slopes, 0.0).pvalue], rtol=1e-9)


def test_holm_on_the_worked_example_of_wikipedia():
    """Wikipedia, "Holm–Bonferroni method", Example: H1..H4 with p = 0.01, 0.04, 0.03, 0.005 at
    alpha = 0.05. Sorted, 0.005 < 0.05/4 and 0.01 < 0.05/3 are rejected; 0.03 > 0.05/2 stops the
    procedure, so H1 and H4 are rejected and H2, H3 are not. Adjusted p-values by hand (Holm 1979's
    step-down: the running max of (m - i + 1) p_(i)): 4*0.005 = 0.02, 3*0.01 = 0.03,
    max(0.03, 2*0.03) = 0.06, max(0.06, 1*0.04) = 0.06."""
    adjusted, reject = stats.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert reject.tolist() == [True, False, False, True]


def test_holm_leaves_untested_members_out_of_the_family_and_caps_at_one():
    adjusted, reject = stats.holm([0.02, np.nan, 0.6], alpha=0.05)
    np.testing.assert_allclose(adjusted[[0, 2]], [0.04, 0.6])  # a family of 2, not 3
    assert np.isnan(adjusted[1]) and reject.tolist() == [True, False, False]
    assert stats.holm([0.5, 0.9, 0.7])[0].max() == 1.0


def test_tost_is_the_larger_of_two_one_sided_scipy_t_tests():
    x = np.array([0.004, -0.010, 0.012, 0.001, -0.006, 0.008, 0.003, -0.002])
    m = 0.02
    p_low = sp.ttest_1samp(x, -m, alternative="greater").pvalue
    p_high = sp.ttest_1samp(x, m, alternative="less").pvalue
    np.testing.assert_allclose(stats.tost_p(x, m), max(p_low, p_high), rtol=1e-10)
    assert stats.tost_p(x, m) < 0.05
    # Schuirmann's identity: equivalent at alpha iff the 1 - 2 alpha interval lies inside (-m, m)
    lo, hi = sp.ttest_1samp(x, 0.0).confidence_interval(0.90)
    for margin in (0.5 * max(-lo, hi), max(-lo, hi) * 1.01, 2 * max(-lo, hi)):
        assert (stats.tost_p(x, margin) < 0.05) == (-margin < lo and hi < margin)


def test_the_reviewers_example_is_inconclusive_not_no_effect():
    """d = 16 at kappa' = 1: -0.022 [-0.052, +0.007] includes 0, but with a margin of 0.02 it is not
    equivalent either. Per-seed values with that mean and interval (n = 8)."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=8)
    z = (z - z.mean()) / z.std(ddof=1)
    half = 0.0295
    x = -0.0225 + z * half * np.sqrt(8) / sp.t.ppf(0.975, 7)
    c = stats.contrast(x)
    np.testing.assert_allclose([c.mean, c.lo, c.hi], [-0.0225, -0.052, 0.007], atol=1e-9)
    (v,) = stats.family_verdicts([x], margin=0.02)
    assert v["verdict"] == "inconclusive" and v["p"] > 0.05 and v["p_tost"] > 0.05


def test_verdicts_up_down_equivalent_and_degenerate():
    rng = np.random.default_rng(2)
    up, down, flat = 0.3 + 0.05 * rng.normal(size=8), -0.3 + 0.05 * rng.normal(size=8), 0.002 * rng.normal(size=8)
    got = [v["verdict"] for v in stats.family_verdicts([up, down, flat], margin=0.02)]
    assert got == ["up", "down", "equivalent"]
    # every seed read the same quantised value: [v, v] is flagged, not tested, not "no effect"
    same = np.full(8, 3 / 16)
    (v,) = stats.family_verdicts([same], margin=0.02)
    assert v["degenerate"] and v["verdict"] == "inconclusive" and v["p"] is None
    c = stats.contrast(same)
    assert c.degenerate and c.lo == c.hi == 3 / 16
    assert stats.family_verdicts([np.array([0.4])], margin=0.02)[0]["verdict"] == "inconclusive"  # one seed


def test_holm_turns_a_lone_significant_point_of_a_large_family_into_inconclusive():
    x = np.array([0.05, 0.01, 0.07, 0.03, 0.06, 0.00, 0.04, 0.02])  # p about 0.003 on its own
    assert stats.family_verdicts([x], margin=0.01)[0]["verdict"] == "up"
    noise = [np.random.default_rng(s).normal(0, 1, 8) for s in range(40)]
    v = stats.family_verdicts([x] + noise, margin=0.01)[0]
    assert v["p"] < 0.05 < v["p_holm"] and v["verdict"] == "inconclusive"


def test_resolution_reads_the_step_of_a_quantised_metric():
    assert stats.resolution(np.array([3, 5, 4, 9]) / 16) == 1 / 16
    assert stats.resolution(np.array([0.0, 0.125, 0.5])) == 0.125  # only the steps that occur
    assert stats.resolution(np.array([0.1, 0.2337, 0.5])) is None  # continuous: no grid
    assert stats.resolution(np.full(4, 0.25)) is None


NULL_DATASETS = 2000


@pytest.mark.parametrize("quantised", [False, True])
def test_no_effect_is_never_called_an_effect_beyond_alpha(quantised):
    """Null data (mean 0): seeds 0..1999 of numpy's default_rng, 8 seeds each, either Gaussian (sd
    0.05) or a difference of two Binomial(16, 0.5)/16 draws (a φ′ read on 16 samples, resolution
    1/16). Statistic: the rate of "up"/"down" verdicts over the 2000 datasets, one per family.
    Threshold: the t-test's size is alpha = 0.05 for Gaussian data (and about that for the
    symmetric binomial), so the rate is Binomial(2000, <= 0.05)/2000, whose sd is 0.0049; alpha +
    4 sd = 0.0695 is exceeded by chance with probability < 1e-4, while counting a tie or an interval
    that merely crosses 0 as an effect would fail it. Families of 10 null points test Holm: the
    rate of any effect in a family (family-wise error) is also <= alpha + 4 sd."""
    def dataset(seed, k):
        rng = np.random.default_rng(seed)
        if quantised:
            return list((rng.binomial(16, 0.5, (k, 8)) - rng.binomial(16, 0.5, (k, 8))) / 16)
        return list(rng.normal(0.0, 0.05, (k, 8)))

    limit = 0.05 + 4 * np.sqrt(0.05 * 0.95 / NULL_DATASETS)
    single = [stats.family_verdicts(dataset(s, 1), margin=0.02)[0]["verdict"] for s in range(NULL_DATASETS)]
    assert set(single) <= set(stats.VERDICTS)
    assert np.mean([v in ("up", "down") for v in single]) <= limit
    family = [stats.family_verdicts(dataset(10_000 + s, 10), margin=0.02) for s in range(NULL_DATASETS // 4)]
    fwer = np.mean([any(v["verdict"] in ("up", "down") for v in f) for f in family])
    assert fwer <= 0.05 + 4 * np.sqrt(0.05 * 0.95 / (NULL_DATASETS // 4))


def test_stored_intervals_give_back_the_tests_of_the_per_seed_values():
    """A summary.json keeps only mean, 95% CI and n: the t-test's and TOST's p-values recovered from
    them equal scipy's on the per-seed values, and so do the verdicts of a family."""
    rng = np.random.default_rng(3)
    family = [0.08 + 0.02 * rng.standard_normal(8), 0.004 * rng.standard_normal(8), 0.03 * rng.standard_normal(8)]
    rows = []
    for x in family:
        lo, hi = sp.ttest_1samp(x, 0.0).confidence_interval(0.95)
        rows.append((x.mean(), lo, hi, 8))
        p, p_tost = stats.interval_tests(x.mean(), lo, hi, 8, margin=0.02)
        np.testing.assert_allclose(p, sp.ttest_1samp(x, 0.0).pvalue, rtol=1e-9)
        np.testing.assert_allclose(p_tost, max(sp.ttest_1samp(x, -0.02, alternative="greater").pvalue,
                                               sp.ttest_1samp(x, 0.02, alternative="less").pvalue), rtol=1e-9)
    got = stats.interval_verdicts(rows, margin=0.02)
    assert got == [v["verdict"] for v in stats.family_verdicts(family, margin=0.02)] == ["up", "equivalent", "inconclusive"]
    assert stats.interval_verdicts([(0.5, 0.5, 0.5, 8), (0.1, None, None, 1)]) == ["inconclusive"] * 2
