"""The benchmark runs and reports consistent figures (it is not a timing test: no speed is asserted)."""
import pytest

from sim import bench


def test_vmap_and_roofline_sections_report_consistent_figures():
    v = bench.bench_vmap(repeats=1, n=2)
    assert v["runs"] == 2 and v["speedup"] == pytest.approx(v["sequential_seconds"] / v["batched_seconds"])
    r = bench.bench_roofline(repeats=1, n=2)
    assert r["ratio"] == pytest.approx(r["train_tokens_per_second"] / r["roofline_tokens_per_second"])
    t = bench.bench_throughput(repeats=1, sizes=(2,))["2"]
    exp = bench._default_experiment(2)
    assert t["tokens_per_second"] == pytest.approx(2 * bench._tokens_per_run(exp) / t["run_seconds"])
    text = bench.report({"header": bench.header(), "vmap": v, "roofline": r, "throughput": {"2": t}})
    assert "vmap: 2 runs" in text and "ratio" in text and "throughput    2 runs" in text


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["warp"])
    assert info.value.code == 2 and "unknown section 'warp'" in capsys.readouterr().err


def test_sweep_section_times_one_sweep_and_reports_the_ratio_to_separate_processes():
    # 25 points x 1 seed x 10 steps in one sim.run process, no separate processes: tiny
    w = bench.bench_sweep(repeats=1, runs=25, steps=10, processes=0)
    assert (w["runs"], w["points"], w["seeds"]) == (25, 25, 1) and "ratio" not in w
    assert w["in_process"]["wall"] > w["in_process"]["run"] > 0
    assert w["in_process"]["peak_rss_mib"] > 50  # a python process with jax loaded
    text = bench.report({"header": bench.header(), "sweep": w})
    assert "sweep: 25 runs (25 points x 1 seeds) x 10 steps in one sim.run (record=auto)" in text
    # the separate-process line, from given figures: 2 s per run x 25 runs = 50 s = 5x a 10 s sweep
    w = dict(w, in_process=dict(w["in_process"], wall=10.0), per_process={"wall": 2.0}, processes_timed=3,
             separate_processes_seconds=50.0, ratio=5.0)
    assert "2.00 s per run (median of 3, warm cache) x 25 = 50 s: 5x the in-process sweep" in bench.report(
        {"header": bench.header(), "sweep": w})
