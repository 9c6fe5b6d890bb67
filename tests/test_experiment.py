import csv
import json

from sim.experiment import config_hash, run_experiment, versions
from tests.conftest import SMALL, compose_plain
from sim.config import parse


def test_run_experiment_writes_every_output(tmp_path):
    plain = compose_plain(SMALL + ["plots=true"])
    info = run_experiment(parse(plain), plain, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json", "rewards.png"}
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 4 * (20 // 5 + 1)  # runs x logged steps
    assert {"run", "seed", "step", "phi", "phi_prime", "kl", "entropy", "grad_norm"} <= set(rows[0])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(info))
    phi = saved["points"][0]["metrics"]["phi"]
    assert set(phi) == {"start", "end", "delta_mean", "delta_ci95", "n_seeds"} and phi["n_seeds"] == 4
    assert saved["config_hash"] == config_hash(plain) and saved["versions"]["jax"] == versions()["jax"]
    assert saved["compile_seconds"] > 0 and saved["run_seconds"] > 0


def test_config_hash_changes_with_the_config():
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and config_hash({"a": 1}) == config_hash({"a": 1})
