import csv
import os
import json

import numpy as np
import pytest

from sim import experiment
from sim.output import rundir
from sim.analysis import stats
from sim.config import ConfigError, parse
from sim.experiment import config_hash, run_experiment, versions
from sim.run import EXIT_DIVERGED, report
from tests.conftest import NEURAL, SMALL, compose_plain, crash_at_chunk


def test_run_experiment_writes_every_output(tmp_path):
    plain = compose_plain(SMALL + ["plots=true", "analysis=full"])
    info = run_experiment(parse(plain), plain, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json", "rewards.png",
                                                   "provenance.json", "kl_cost.png", "diagnostics.png",
                                                   "orthogonality.png"}
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 4 * (20 // 5 + 1)  # runs x logged steps
    assert {"run", "seed", "step", "phi", "phi_prime", "kl", "entropy", "grad_norm"} <= set(rows[0])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(info))
    phi = saved["points"][0]["metrics"]["phi"]
    assert set(phi) == {"start", "start_step", "end", "end_step", "end_is_last", "delta_mean", "delta_ci95",
                        "n_seeds", "verdict", "test"} and phi["n_seeds"] == 4
    assert phi["verdict"] in stats.VERDICTS and saved["verdict_rules"]["margin"] == stats.DEFAULT_MARGIN
    assert (phi["start_step"], phi["end_step"], phi["end_is_last"]) == (0, 20, True)
    assert saved["config_hash"] == config_hash(plain) and saved["versions"]["jax"] == versions()["jax"]
    assert saved["compile_seconds"] > 0 and saved["run_seconds"] > 0
    assert saved["n_diverged"] == 0 and saved["diverged"] == [] and "git" in saved
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert {k: saved[k] for k in ("config_hash", "versions", "git", "devices")} == provenance
    point = saved["points"][0]
    geo = point["geometry"]
    assert geo["delta"] == pytest.approx(0.05) and geo["phi"]["competence"] == pytest.approx(0.2)
    assert geo["phi"]["tilt"]["kappa"] < 1 < geo["phi_prime"]["tilt"]["kappa"]  # competences 0.2 and 0.9
    assert geo["phi"]["family"]["cost_gain"] >= geo["phi"]["tilt"]["cost_gain"] * (1 - 1e-3)
    assert abs(point["orthogonality"]["reference"]["corr"]) < 1e-6
    assert point["orthogonality"]["final"]["support_pairs_min"] == point["orthogonality"]["final"]["value_pairs"] == 25
    cells = point["quadrants"]["cells"]
    assert sum(c["frac"] for c in cells.values()) == pytest.approx(1.0)
    assert isinstance(point["quadrants"]["blog_inequality"]["holds"], bool)
    assert {"kappa_phi", "quad_frac_ud", "adv_share_phi_prime", "frac_reward_zero_std",
            "reward_std_sampled"} <= set(rows[0])


def test_basic_analysis_has_no_family_solve_and_none_has_no_analysis(tmp_path):
    """analysis=basic: the tilt's curves, kappa, orthogonality and quadrants, no family solve;
    analysis=none: none of it (and no figures that need it), the run's own outputs unchanged."""
    outs = {}
    for mode in ("basic", "none"):
        plain = compose_plain(SMALL + ["plots=true", f"analysis={mode}"])
        outs[mode] = run_experiment(parse(plain), plain, tmp_path / mode)
    basic = outs["basic"]["points"][0]
    assert set(basic["geometry"]["phi"]) == {"competence", "mean", "tilt"} and "family_seed" not in basic["geometry"]
    assert basic["geometry"]["phi"]["tilt"]["kappa"] < 1 and basic["quadrants"] and basic["orthogonality"]
    assert not {"geometry", "orthogonality", "quadrants"} & set(outs["none"]["points"][0])
    assert (tmp_path / "basic" / "kl_cost.png").exists() and not (tmp_path / "none" / "kl_cost.png").exists()
    assert (tmp_path / "none" / "diagnostics.png").exists()
    assert outs["none"]["points"][0]["metrics"] == basic["metrics"]


def test_config_hash_changes_with_the_config():
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and config_hash({"a": 1}) == config_hash({"a": 1})


def _mtimes(path):
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_an_existing_run_is_left_alone_refused_or_overwritten_on_request(tmp_path):
    plain = compose_plain(SMALL)
    first = run_experiment(parse(plain), plain, tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # complete: nothing left to resume
    before = _mtimes(tmp_path)
    assert run_experiment(parse(plain), plain, tmp_path) == json.loads(json.dumps(first))  # done: reported
    other = compose_plain(SMALL + ["seed=7"])
    with pytest.raises(ConfigError, match="holds a run of another configuration"):
        run_experiment(parse(other), other, tmp_path)
    assert _mtimes(tmp_path) == before  # neither call wrote anything
    other = compose_plain(SMALL + ["seed=7", "overwrite=true"])
    run_experiment(parse(other), other, tmp_path)
    assert {r["seed"] for r in csv.DictReader(open(tmp_path / "metrics.csv"))} == {"7", "8", "9", "10"}


def test_a_diverged_run_is_flagged_in_every_output_and_left_out_of_the_statistics(tmp_path, monkeypatch):
    """Run 0 gets w_phi = nan past validation (patched into the batch): the run must finish,
    and summary.json, metrics.csv and the figure must flag it or leave it out."""
    plain = compose_plain(SMALL + ["plots=true"])
    real_expand = experiment.expand

    def poisoned(exp):
        batch = real_expand(exp)
        batch.hparams_R["w_phi"][0] = np.nan
        return batch

    monkeypatch.setattr(experiment, "expand", poisoned)
    info = run_experiment(parse(plain), plain, tmp_path)
    assert info["n_diverged"] == 1 and info["diverged"] == [{"run": 0, "seed": 0, "point": 0, "step": 1}]
    point = info["points"][0]
    assert point["n_diverged"] == 1 and point["metrics"]["phi"]["n_seeds"] == 3
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    flag = {(r["run"], r["step"]): r["diverged_at_step"] for r in rows}
    assert flag[("0", "0")] == "-1" and flag[("0", "5")] == flag[("0", "20")] == "1"
    assert {v for (run, _), v in flag.items() if run != "0"} == {"-1"}
    phi = {(r["run"], r["step"]): float(r["phi"]) for r in rows}
    healthy_delta = np.mean([phi[(r, "20")] - phi[(r, "0")] for r in "123"])
    assert point["metrics"]["phi"]["delta_mean"] == pytest.approx(healthy_delta, rel=1e-6)
    assert (tmp_path / "rewards.png").stat().st_size > 0
    assert report(info) == EXIT_DIVERGED == 3  # the exit status of `python -m sim.run`
    assert report({"diverged": [], "n_runs": 4}) == 0


def test_a_sweep_writes_axis_columns_one_summary_entry_per_point_and_sweep_png(tmp_path):
    plain = compose_plain(SMALL + ["seeds=2", "plots=true", "task.phi_prime.relative_weight=[0,0.5]"])
    info = run_experiment(parse(plain), plain, tmp_path, overrides=["task.phi_prime.relative_weight=[0,0.5]"])
    assert (tmp_path / "sweep.png").stat().st_size > 0 and (tmp_path / "rewards.png").stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert {(r["point"], float(r["task.phi_prime.relative_weight"])) for r in rows} == {("0", 0.0), ("1", 0.5)}
    assert [p["values"] for p in info["points"]] == [{"task.phi_prime.relative_weight": 0.0},
                                                     {"task.phi_prime.relative_weight": 0.5}]
    assert [p["hparams"]["w_phi_prime"] for p in info["points"]] == [0.0, 2.0]  # 0.5 x w1 = 4
    assert info["axes"] == {"task.phi_prime.relative_weight": [0.0, 0.5]} and info["n_points"] == 2
    assert info["overrides"] == ["task.phi_prime.relative_weight=[0,0.5]"]
    # the summary of point 1 is computed from its own runs' rows in the table
    end = [float(r["reward"]) for r in rows if r["point"] == "1" and r["step"] == "20"]
    assert info["points"][1]["metrics"]["reward"]["end"] == pytest.approx(sum(end) / len(end), rel=1e-6)


def test_record_points_writes_per_point_statistics_instead_of_every_run(tmp_path):
    plain = compose_plain(SMALL + ["seeds=2", "record=points", "plots=true", "optim.lr=[0.02,0.05]"])
    info = run_experiment(parse(plain), plain, tmp_path)
    assert not (tmp_path / "metrics.csv").exists() and info["record"] == "points"
    # every file written is one that overwrite=true removes (rundir.clear): none is left stale
    assert {p.name for p in tmp_path.iterdir()} <= set(rundir.RUN_OUTPUTS)
    assert {"points.csv", "sweep.png"} <= {p.name for p in tmp_path.iterdir()}
    rows = list(csv.DictReader(open(tmp_path / "points.csv")))
    assert len(rows) == 2 * (20 // 5 + 1) and rows[0]["n_seeds"] == "2"
    assert {"point", "optim.lr", "step", "phi_mean", "phi_std", "kl_mean"} <= set(rows[0])
    last = [r for r in rows if r["point"] == "1" and r["step"] == "20"][0]
    assert float(last["phi_mean"]) == pytest.approx(info["points"][1]["metrics"]["phi"]["end"], rel=1e-5)


def test_an_interrupted_record_points_run_resumes_to_the_uninterrupted_points_csv(tmp_path, monkeypatch, capsys):
    """A record=points run that crashed after its 3rd chunk resumes from its checkpoint (step 15),
    not from scratch, and ends with the uninterrupted run's points.csv."""
    plain = compose_plain(SMALL + ["seeds=2", "record=points", "optim.lr=[0.02,0.05]", "checkpoint_seconds=0"])
    out = tmp_path / "run"
    crash_at_chunk(monkeypatch, plain, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["10", "15"]
    assert not (out / "points.csv").exists()
    capsys.readouterr()
    run_experiment(parse(plain), plain, out)
    err = capsys.readouterr().err
    assert "resuming the interrupted run in" in err and "from step 15" in err, err
    run_experiment(parse(plain), plain, tmp_path / "reference")
    assert (out / "points.csv").read_bytes() == (tmp_path / "reference" / "points.csv").read_bytes()
    assert not (out / "checkpoints").exists()


def test_a_neural_policy_starts_at_its_sft_reference_and_reports_it(tmp_path):
    """An MLP on a task small enough (6^4 responses) for every logged expectation to be exact."""
    plain = compose_plain(SMALL + NEURAL + ["policy=mlp", "plots=true", "seeds=2", f"runtime.sft_cache={tmp_path}"])
    info = run_experiment(parse(plain), plain, tmp_path / "out")
    assert (tmp_path / "out" / "sft_loss.png").stat().st_size > 0
    assert {p.name for p in (tmp_path / "out").iterdir()} <= set(rundir.RUN_OUTPUTS)
    (point,) = info["sft"]["points"]
    assert point["cached"] is False and point["measured"]["phi_se"] == 0.0  # enumerated: exact
    m = info["points"][0]["metrics"]
    assert m["kl"]["start"] == 0.0
    # the runs start at the trained reference, not at the teacher
    assert m["phi"]["start"] == pytest.approx(point["measured"]["phi"], abs=1e-5)
    assert m["phi_prime"]["start"] == pytest.approx(point["measured"]["phi_prime"], abs=1e-5)
    assert m["phi"]["start"] != point["teacher"]["phi"]
    assert abs(point["measured"]["phi"] - point["teacher"]["phi"]) < 0.02  # see test_sft.py for the tolerance
    assert point["final_loss"] == pytest.approx(point["loss_floor"], abs=0.03)
    assert "phi_se" not in m
    # the analysis runs on the trained reference: its kappa (teacher competences 0.2 and 0.9:
    # gains of phi cheaper than losses, of phi_prime dearer), no family solve for a network
    geo = info["points"][0]["geometry"]
    assert geo["phi"]["tilt"]["kappa"] < 1 < geo["phi_prime"]["tilt"]["kappa"]
    assert "family" not in geo["phi"]
    # the teacher's kappa is reported beside it (what a task.<reward>.kappa target was solved on)
    assert geo["phi"]["teacher"]["kappa"] < 1 < geo["phi_prime"]["teacher"]["kappa"]
    assert geo["phi"]["teacher"]["kappa"] != geo["phi"]["tilt"]["kappa"]
    assert m["kappa_phi"]["start"] == pytest.approx(geo["phi"]["tilt"]["kappa"], rel=1e-4)
    assert abs(info["points"][0]["orthogonality"]["reference"]["corr"]) < 0.05
    assert (tmp_path / "out" / "kl_cost.png").exists() and (tmp_path / "out" / "orthogonality.png").exists()


def test_the_closing_line_of_a_sweep_reports_every_point_and_where_the_table_is(tmp_path):
    def point(phi_end, prime_end):
        return {"metrics": {"phi": {"start": 0.2, "end": phi_end}, "phi_prime": {"start": 0.9, "end": prime_end}}}

    info = {"compile_seconds": 1.0, "run_seconds": 2.0, "points": [point(0.5, 0.8), point(0.3, None), point(0.7, 0.85)]}
    line = experiment.closing_line(info, tmp_path, "metrics.csv")
    assert "3 sweep points" in line and "phi 0.200 -> 0.300..0.700" in line, line
    assert "phi_prime 0.900 -> 0.800..0.850 (1 n/a)" in line and str(tmp_path / "metrics.csv") in line, line
    assert str(tmp_path / "summary.json") in line and "\n" not in line
    one = experiment.closing_line(dict(info, points=info["points"][:1]), tmp_path, "metrics.csv")
    assert one == f"phi 0.200 -> 0.500, phi_prime 0.900 -> 0.800 (compile 1.0s, run 2.0s); outputs in {tmp_path}"


def test_an_absurd_learning_rate_summary_shows_no_value_the_table_lacks(tmp_path):
    """optim.lr=1e6 makes every policy deterministic at the first update: the kappas are NaN from
    step 5 on in every run (as metrics.csv shows). The summary's end is then step 0's, says so,
    and claims no change."""
    plain = compose_plain(SMALL + ["optim.lr=1e6"])
    info = run_experiment(parse(plain), plain, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert all(r["kappa_phi"] == "nan" for r in rows if r["step"] != "0")
    kappa = info["points"][0]["metrics"]["kappa_phi"]
    assert kappa["end_step"] == 0 and kappa["end_is_last"] is False and kappa["delta_mean"] is None
    assert kappa["end"] == pytest.approx(float(rows[0]["kappa_phi"]))
    # and every run ended deterministic (entropy 0 in the table), which the summary counts
    assert all(float(r["entropy"]) == 0 for r in rows if r["step"] == "20")
    assert info["points"][0]["n_deterministic"] == info["n_deterministic"] == 4


def test_a_damaged_latest_checkpoint_resumes_from_the_one_before_and_rewrites_later_rows(tmp_path, monkeypatch,
                                                                                          capsys):
    """A run that crashed after 3 of its 4 chunks (checkpoints at steps 10 and 15 kept, metrics.csv
    up to step 15); the step-15 checkpoint is then truncated. Re-running resumes from step 10,
    rewrites the rows after it, and ends with the uninterrupted run's metrics.csv; with no readable
    checkpoint left it is one ConfigError naming overwrite=true."""
    plain = compose_plain(SMALL + ["checkpoint_seconds=0"])
    out = tmp_path / "run"
    extend, calls = rundir.MetricsCsv.extend, []

    def crash_at_chunk_4(self, rows):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("crash")
        return extend(self, rows)

    monkeypatch.setattr(rundir.MetricsCsv, "extend", crash_at_chunk_4)
    with pytest.raises(RuntimeError, match="crash"):
        run_experiment(parse(plain), plain, out)
    monkeypatch.setattr(rundir.MetricsCsv, "extend", extend)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["10", "15"]
    assert (out / "metrics.csv").read_text().count("\n") == 1 + 4 * 4  # header, steps 0-15
    data = max((p for p in (out / "checkpoints" / "15" / "state" / "d").iterdir()), key=lambda p: p.stat().st_size)
    os.truncate(data, data.stat().st_size // 2)
    capsys.readouterr()
    run_experiment(parse(plain), plain, out)
    err = capsys.readouterr().err
    assert "the checkpoint at step 15 is damaged" in err and "from step 10" in err, err
    run_experiment(parse(plain), plain, tmp_path / "reference")
    assert (out / "metrics.csv").read_bytes() == (tmp_path / "reference" / "metrics.csv").read_bytes()

    # no readable checkpoint: one line, how to start over
    (out / "summary.json").unlink()
    (out / "checkpoints" / "10" / "meta").mkdir(parents=True)
    (out / "checkpoints" / "10" / "meta" / "metadata").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no checkpoint can be read .*; pass overwrite=true to start again"):
        run_experiment(parse(plain), plain, out)


def test_every_artefact_of_a_pretrained_run_is_cut_back_to_the_checkpoint_on_resume(tmp_path, monkeypatch, capsys):
    """A tiny pretrained run (steps=6, a chunk and a checkpoint per step) crashes after writing step
    4's rows and samples but before checkpointing them; rerun, it resumes from step 3, and its
    samples.jsonl, like metrics.csv, is byte-identical to an uninterrupted run's (step 4's samples
    used to appear twice)."""
    from tests.faults import overrides
    from tests.lm.tiny import write_tiny

    ckpt = write_tiny(tmp_path / "ckpt")["hf_dir"]
    plain = compose_plain(overrides({"policy.checkpoint": str(ckpt), "steps": "6", "chunk_steps": "1",
                                     "checkpoint_seconds": "0", "analysis": "none"}))
    out = tmp_path / "run"
    crash_at_chunk(monkeypatch, plain, out)
    steps = [json.loads(line)["step"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert max(steps) == 4 and max(int(p.name) for p in (out / "checkpoints").iterdir()) == 3
    capsys.readouterr()
    run_experiment(parse(plain), plain, out)
    assert "from step 3" in capsys.readouterr().err
    run_experiment(parse(plain), plain, tmp_path / "reference")
    for name in ("metrics.csv", "samples.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
