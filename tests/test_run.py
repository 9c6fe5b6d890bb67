"""The command line as a user meets it: `python -m sim.run` in a subprocess."""
import json
import subprocess
import sys

import pytest

from tests.conftest import SMALL


def sim_run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sim.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_end_to_end_writes_all_outputs(tmp_path):
    out = tmp_path / "run"
    proc = sim_run(*SMALL, "plots=true", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "metrics.csv", "summary.json", "rewards.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["points"][0]["metrics"]["phi"]["n_seeds"] == 4
    assert "phi" in proc.stdout and "step" in proc.stderr  # result line and progress bar


@pytest.mark.parametrize("args, message", [
    (["policy=mlp"], "policy=mlp: unknown option; allowed values are"),
    (["algo=ppo"], "algo=ppo: unknown option; allowed values are"),
    (["foo=1"], "foo"),
    (["optim.lr=-1"], "optim.lr=-1: must be a finite number > 0"),
    (["algo.group_size=1"], "algo.group_size=1: must be an integer >= 2"),
])
def test_bad_input_is_one_line_no_traceback_nonzero_exit(tmp_path, args, message):
    proc = sim_run(*args, f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
