import warnings

import numpy as np
from scipy import stats

from sim.output import results


def test_mean_ci95_uses_student_t():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    mean, lo, hi = results.mean_ci95(x)
    half = stats.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert mean == 2.5 and np.isclose(hi - mean, half) and np.isclose(mean - lo, half)
    assert np.isnan(results.mean_ci95(np.array([1.0]))[1])


def test_values_with_an_inf_have_no_interval_or_band_and_no_warning():
    """A kappa is inf once a gain is out of reach; its seeds' mean is inf and there is no interval
    (numpy's std would warn on inf - inf and return nan)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, lo, hi = results.mean_ci95(np.array([1.0, np.inf, 2.0]))
    assert mean == np.inf and np.isnan(lo) and np.isnan(hi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean_T, lo_T, hi_T = results.band_TxN(np.array([[1.0, 2.0, 3.0], [1.0, np.inf, 3.0]]))
    assert mean_T[1] == np.inf and np.isnan(lo_T[1]) and np.isnan(hi_T[1]) and lo_T[0] < 2 < hi_T[0]


def test_slope_ci95_is_each_runs_least_squares_slope():
    steps_T = np.array([0.0, 10.0, 20.0])
    # run 0 rises 1 per 10 steps exactly; run 1 is flat with noise symmetric about its mean
    x_TxN = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 5.0]])
    mean, lo, hi = results.slope_ci95(x_TxN, steps_T)
    assert np.isclose(mean, (0.1 + 0.0) / 2) and lo < mean < hi


def test_metric_summary_skips_rows_that_are_all_nan():
    x = np.array([[np.nan, np.nan], [1.0, 3.0], [2.0, 5.0]])
    s = results.metric_summary(x)
    assert s["start"] == 2.0 and s["end"] == 3.5 and s["delta_mean"] == 1.5 and s["n_seeds"] == 2


def test_point_summaries_split_runs_by_point():
    m = {"phi": np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 2.0, 2.0]])}
    out = results.point_summaries(m, np.array([0, 0, 1, 1]), [{"lr": 0.1}, {"lr": 0.2}])
    assert [p["metrics"]["phi"]["delta_mean"] for p in out] == [1.0, 2.0]
    assert out[1]["values"] == {"lr": 0.2}


def test_table_rows_has_one_row_per_run_and_step_in_step_order():
    m = {"phi": np.arange(6.0).reshape(3, 2), "diverged_at_step": np.array([[-1, -1], [-1, 5], [-1, 5]])}
    header, rows = results.table_rows(m, np.array([0, 5, 10]), {"run": np.array([0, 1])})
    assert header == ["run", "step", "phi", "diverged_at_step"]
    assert rows == [[0, 0, 0.0, -1], [1, 0, 1.0, -1], [0, 5, 2.0, -1], [1, 5, 3.0, 5], [0, 10, 4.0, -1],
                    [1, 10, 5.0, 5]]
    assert isinstance(rows[3][3], int)  # integer columns are written as integers


def test_point_summaries_leave_out_diverged_runs_and_count_them():
    m = {"phi": np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 9.0, 2.0, 2.0]])}
    out = results.point_summaries(m, np.array([0, 0, 1, 1]), [{}, {}], diverged_R=np.array([-1, 1, 1, 1]))
    assert out[0]["n_diverged"] == 1 and out[0]["metrics"]["phi"]["delta_mean"] == 1.0
    assert out[0]["metrics"]["phi"]["n_seeds"] == 1
    assert out[1]["n_diverged"] == 2 and out[1]["metrics"]["phi"]["n_seeds"] == 0
    assert out[1]["metrics"]["phi"]["end"] is None


def test_json_safe_turns_non_finite_numbers_into_null():
    obj = {"a": [1.0, float("nan"), np.float32(np.inf)], "b": {"c": -np.inf, "d": 2, "e": "x"}, "f": (np.float64(0.5),)}
    assert results.json_safe(obj) == {"a": [1.0, None, None], "b": {"c": None, "d": 2, "e": "x"}, "f": [0.5]}


def test_bands_from_moments_equal_bands_from_runs():
    rng = np.random.default_rng(0)
    x = rng.random((4, 7))
    points = np.array([0, 0, 0, 1, 1, 1, 1])
    runs = results.bands_from_runs({"phi": x}, points, 2)["phi"]
    count = np.bincount(points)
    mean = np.stack([x[:, points == p].mean(1) for p in range(2)], 1)
    m2 = np.stack([((x[:, points == p] - mean[:, [p]]) ** 2).sum(1) for p in range(2)], 1)
    moments = results.bands_from_moments(count, {"phi": mean}, {"phi": m2})["phi"]
    for a, b in zip(runs, moments):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # point 1, step 0: the band is the Student-t interval of its 4 runs
    mean_, lo, hi = results.mean_ci95(x[0, 3:])
    np.testing.assert_allclose([runs[0][0, 1], runs[1][0, 1], runs[2][0, 1]], [mean_, lo, hi])


def test_points_table_has_mean_and_std_per_point_and_step():
    mean = {"phi": np.array([[1.0, 2.0], [3.0, 4.0]])}  # [T=2, N=2]
    m2 = {"phi": np.array([[2.0, 0.0], [8.0, 0.0]])}
    header, table = results.points_table(np.array([0, 5]), np.array([3, 3]), mean, m2,
                                         {"point": np.array([0, 1]), "lr": np.array([0.1, 0.2])})
    assert header == ["point", "lr", "step", "n_seeds", "phi_mean", "phi_std"]
    # std = sqrt(M2 / (n - 1)): sqrt(2/2) = 1, sqrt(8/2) = 2
    np.testing.assert_allclose(table, [[0, 0.1, 0, 3, 1.0, 1.0], [0, 0.1, 5, 3, 3.0, 2.0],
                                       [1, 0.2, 0, 3, 2.0, 0.0], [1, 0.2, 5, 3, 4.0, 0.0]])


def test_summary_table_flattens_point_summaries():
    s = {"start": 0.2, "end": 0.5, "delta_mean": 0.3, "delta_ci95": [0.1, 0.5], "n_seeds": 4}
    points = [{"values": {"policy": "tabular", "optim.lr": 0.1}, "metrics": {"phi": s}}]
    header, rows = results.summary_table(points, ["policy", "optim.lr"], ("phi",))
    assert header == ["policy", "optim.lr", "n_seeds", "phi_start", "phi_end", "phi_delta_mean",
                      "phi_delta_lo", "phi_delta_hi", "phi_verdict"]
    assert rows == [["tabular", 0.1, 4, 0.2, 0.5, 0.3, 0.1, 0.5, "up"]]


def test_a_metric_that_goes_nan_reports_its_last_row_with_values_and_says_so():
    """A kappa NaN in every seed from step 10 on (optim.lr=1e6): the end is not the last step's,
    so the summary says at which step its end is, and a start-to-start delta is no delta."""
    steps_T = np.array([0, 10, 20])
    s = results.metric_summary(np.array([[0.881, 0.881], [np.nan, np.nan], [np.nan, np.nan]]), steps_T)
    assert s["end"] == 0.881 and s["end_step"] == 0 and s["end_is_last"] is False
    assert s["delta_mean"] is None and s["delta_ci95"] == [None, None]
    # NaN in one seed at the last step: the end is the last row with a value for every seed
    s = results.metric_summary(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, np.nan]]), steps_T)
    assert (s["end"], s["end_step"], s["end_is_last"], s["delta_mean"]) == (3.5, 10, False, 2.0)
    s = results.metric_summary(np.array([[np.nan, np.nan], [1.0, 3.0], [2.0, 5.0]]), steps_T)
    assert (s["start_step"], s["end"], s["end_step"], s["end_is_last"]) == (10, 3.5, 20, True)


def test_point_summaries_count_the_healthy_runs_that_ended_deterministic():
    # entropy [T=2, R=4]: run 0 collapsed, run 1 just above the threshold, run 2 collapsed but diverged
    # (left out), run 3 (point 1) collapsed
    t = results.DETERMINISTIC_ENTROPY
    m = {"entropy": np.array([[5.0, 5.0, 5.0, 5.0], [0.0, t, t / 2, t / 10]])}
    out = results.point_summaries(m, np.array([0, 0, 0, 1]), [{}, {}], diverged_R=np.array([-1, -1, 1, -1]))
    assert [p["n_deterministic"] for p in out] == [1, 1] and t == 0.01


def test_point_summaries_give_each_metric_a_holm_corrected_verdict_per_point():
    """Deltas (end - start) over 8 seeds at 3 points: a clear rise, a clear fall, and a change
    within +-0.002 (equivalent at margin 0.02). The family is the metric's 3 points: the Holm-
    adjusted p of the smallest p is 3 times it (scipy's ttest_1samp gives the raw p)."""
    rng = np.random.default_rng(0)
    end = np.concatenate([0.5 + 0.05 * rng.normal(size=8), -0.5 + 0.05 * rng.normal(size=8),
                          0.001 * rng.normal(size=8)])
    m = {"phi": np.stack([np.zeros(24), end])}
    out = results.point_summaries(m, np.repeat([0, 1, 2], 8), [{"lr": v} for v in (1, 2, 3)], margin=0.02)
    assert [p["metrics"]["phi"]["verdict"] for p in out] == ["up", "down", "equivalent"]
    p_raw = [stats.ttest_1samp(end[i * 8:(i + 1) * 8], 0.0).pvalue for i in range(3)]
    tests = [p["metrics"]["phi"]["test"] for p in out]
    np.testing.assert_allclose([t["p"] for t in tests], p_raw, rtol=1e-9)
    smallest = int(np.argmin(p_raw))
    np.testing.assert_allclose(tests[smallest]["p_holm"], 3 * p_raw[smallest], rtol=1e-9)
    assert tests[0]["family_size"] == 3 and tests[0]["margin"] == 0.02


def test_a_quantised_metric_every_seed_read_alike_is_flagged_not_called_no_effect():
    m = {"phi_prime": np.array([[0.5] * 4, [0.5] * 4])}  # every seed 8/16 at start and at end
    (point,) = results.point_summaries(m, np.zeros(4, int), [{}])
    s = point["metrics"]["phi_prime"]
    assert s["delta_ci95"] == [0.0, 0.0]  # what the summary showed before, as a measurement
    assert s["test"]["degenerate"] and s["verdict"] == "inconclusive"


def test_summary_table_verdicts_take_every_row_as_one_family():
    """A multirun of 21 single-point jobs: one delta has p = 0.01 on its own (its interval, by
    scipy, from 8 seeds), the 20 others are noise. Holm over the table's 21 rows leaves it
    inconclusive; alone (one job, one row) it is "up"."""
    rng = np.random.default_rng(5)
    deltas = [np.array([0.05, 0.01, 0.07, 0.03, 0.06, 0.0, 0.04, 0.02])]
    deltas += [0.05 * rng.standard_normal(8) for _ in range(20)]

    def point(x):
        lo, hi = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
        return {"values": {}, "metrics": {"phi": {"start": 0.0, "end": x.mean(), "delta_mean": x.mean(),
                                                  "delta_ci95": [lo, hi], "n_seeds": 8}}}

    assert stats.ttest_1samp(deltas[0], 0.0).pvalue < 0.01
    assert results.summary_table([point(deltas[0])], [], ("phi",))[1][0][-1] == "up"
    assert results.summary_table([point(x) for x in deltas], [], ("phi",))[1][0][-1] == "inconclusive"
