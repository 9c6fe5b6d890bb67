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
