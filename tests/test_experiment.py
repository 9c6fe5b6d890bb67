import csv
import json

import pytest

from sim.experiment import config_hash, run_experiment, versions
from tests.conftest import SMALL, compose_plain
from sim.config import parse


def test_run_experiment_writes_every_output(tmp_path):
    plain = compose_plain(SMALL + ["plots=true"])
    info = run_experiment(parse(plain), plain, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json", "rewards.png",
                                                    "kl_cost.png", "diagnostics.png", "orthogonality.png"}
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 4 * (20 // 5 + 1)  # runs x logged steps
    assert {"run", "seed", "step", "phi", "phi_prime", "kl", "entropy", "grad_norm"} <= set(rows[0])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(info))
    phi = saved["points"][0]["metrics"]["phi"]
    assert set(phi) == {"start", "end", "delta_mean", "delta_ci95", "n_seeds"} and phi["n_seeds"] == 4
    assert saved["config_hash"] == config_hash(plain) and saved["versions"]["jax"] == versions()["jax"]
    assert saved["compile_seconds"] > 0 and saved["run_seconds"] > 0
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
    assert {"kappa_phi", "quad_frac_ud", "adv_share_phi_prime"} <= set(rows[0])


def test_config_hash_changes_with_the_config():
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and config_hash({"a": 1}) == config_hash({"a": 1})
