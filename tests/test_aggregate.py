"""A Hydra multirun through submitit's local executor (the SLURM launcher's code path), then
`python -m sim.aggregate` on its directory: one small multirun shared by the tests below."""
import csv
import subprocess
import sys

import pytest

from sim import aggregate

TINY = ["seeds=2", "steps=2", "log_every=1", "task.prompts=2", "plots=false"]


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    root = tmp_path_factory.mktemp("multirun")
    proc = subprocess.run([sys.executable, "-m", "sim.run", "-m", "hydra/launcher=slurm_local", *TINY,
                           "policy=tabular,lowrank", "optim.lr=[0.05,0.1]", f"hydra.sweep.dir={root}"],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_submitit_local_jobs_are_self_contained(multirun):
    for job in ("0", "1"):
        assert {"config.yaml", "summary.json", "metrics.csv"} <= {p.name for p in (multirun / job).iterdir()}
    assert (multirun / ".submitit").is_dir()  # the jobs really went through submitit


def test_aggregate_combines_jobs_into_one_table_with_static_and_in_process_axes(multirun):
    proc = subprocess.run([sys.executable, "-m", "sim.aggregate", str(multirun)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(multirun / "aggregate.csv")))
    assert [(r["policy"], float(r["optim.lr"])) for r in rows] == [
        ("tabular", 0.05), ("tabular", 0.1), ("lowrank", 0.05), ("lowrank", 0.1)]
    assert all(r["n_seeds"] == "2" for r in rows)
    assert (multirun / "sweep.png").stat().st_size > 0  # two axes: policy x optim.lr heatmaps
    # each row carries its job's own summary numbers
    for r in rows:
        job = 0 if r["policy"] == "tabular" else 1
        point = 0 if float(r["optim.lr"]) == 0.05 else 1
        summary = aggregate.load_jobs(multirun)[job][1]["points"][point]["metrics"]["phi_prime"]
        assert float(r["phi_prime_delta_mean"]) == pytest.approx(summary["delta_mean"])


def test_static_axes_are_the_overrides_that_differ_between_jobs():
    jobs = [{"overrides": ["seeds=2", "policy=tabular", "task.length=8", "optim.lr=[0.1,0.2]"],
             "axes": {"optim.lr": [0.1, 0.2]}},
            {"overrides": ["seeds=2", "policy=lowrank", "task.length=4", "optim.lr=[0.1,0.2]"],
             "axes": {"optim.lr": [0.1, 0.2]}}]
    assert aggregate.static_axes(jobs) == ["policy", "task.length"]


def test_aggregate_of_a_directory_without_jobs_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        aggregate.main([str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "no summary.json under it" in err and len(err.splitlines()) == 1


def test_the_sweep_table_lines_end_in_lf(tmp_path):
    point = {"values": {"optim.lr": 0.1}, "job": "0", "metrics": {
        m: {"start": 0.0, "end": 1.0, "delta_mean": 1.0, "delta_ci95": [0.5, 1.5], "n_seeds": 2}
        for m in aggregate.SUMMARY_METRICS}}
    aggregate.write_table(tmp_path / "t.csv", ["optim.lr"], [point, point])
    data = (tmp_path / "t.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 3


def test_a_diverged_launcher_job_is_the_multiruns_exit_status_and_is_named(tmp_path):
    """Job 1's rewards overflow float32 (w_phi = 3e38: every run diverges at step 1, as in
    test_run.py); its submitit process cannot pass an exit status back, yet the multirun must exit
    3 and name it. The jobs are the fixture's tabular program (same shapes), so they reuse its compile."""
    proc = subprocess.run([sys.executable, "-m", "sim.run", "-m", "hydra/launcher=slurm_local", *TINY,
                           "policy=tabular", "optim.lr=[0.05,0.1]", "task.phi.weight=4,3e38",
                           f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "sim: multirun job 1 (" in proc.stderr and "task.phi.weight=3e+38" in proc.stderr  # as Hydra prints it
    assert "4 of 4 runs diverged" in proc.stderr and "multirun job 0" not in proc.stderr
    assert (tmp_path / ".submitit").is_dir()  # the jobs really went through submitit
