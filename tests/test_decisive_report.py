"""experiments/decisive_report.py: REPORT §9 from stored runs, its verdict rule and its figures."""
import csv

import numpy as np
import pytest

from experiments import decisive, decisive_report as dr

METRICS = ["phi", "phi_prime"] + [f"d{k}_by_{t}" for k in ("phi", "phi_prime") for t in ("phi", "phi_prime", "kl")] \
    + ["cos_grad_phi_phi_prime"]


def _write_run(path, fall_paid: float, fall_unpaid: float, seeds: int = 6, noise: float = 0.01, seed: int = 0,
               first_seed: int = 0):
    """A sim.run-shaped metrics.csv: phi_prime drifts linearly to start - fall by step 20, per arm."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "seed", "point", "step"] + METRICS)
        for point, fall in ((0, fall_paid), (1, fall_unpaid)):
            for s in range(seeds):
                for step in (0, 5, 10, 15, 20):
                    phi_prime = 0.7 - fall * step / 20 + (noise * rng.normal() if step else 0.0)
                    decomp = [np.nan] * 7 if step == 0 else list(rng.normal(size=7) * 1e-3)
                    w.writerow([point * seeds + s, first_seed + s, point, step, 0.2 + 0.01 * step, phi_prime] + decomp)


@pytest.fixture
def spec():
    return decisive.load_spec()


@pytest.mark.parametrize("fall_n, answer", [(0.2, "KL-asymmetry account predicts"), (0.0, "spill account's outcome")])
def test_the_answer_follows_the_verdicts_of_both_pairs(tmp_path, spec, fall_n, answer):
    runs = tmp_path / "runs" / "pilot"
    _write_run(runs / "I", 0.2, 0.3)
    _write_run(runs / "N", fall_n, fall_n, seed=1)
    rows = dr.primary_contrasts(spec, dr.load_stage(spec, tmp_path, "pilot"))
    assert [r["contrast"] for r in rows] == spec["contrasts"]
    v = {r["contrast"]: r["verdict"] for r in rows}
    assert v["I.paid"] == "down" and v["I.paid-unpaid"] == "up"  # the unpaid arm falls further
    assert v["N.paid"] == ("down" if fall_n else "equivalent")
    text = dr.section(spec, tmp_path, tmp_path)
    assert answer in text and "Only the pilot has run" in text
    assert (tmp_path / "decisive.png").exists() and (tmp_path / "decisive_decomposition.png").exists()


def test_endpoint_is_the_mean_of_the_last_evaluations_minus_step_0_per_seed(tmp_path):
    _write_run(tmp_path / "I", 0.2, 0.3, noise=0.0)
    run = dr.read_runs(tmp_path / "I" / "metrics.csv")
    np.testing.assert_allclose(dr.endpoint_N(run[0], last=2), -0.2 * 17.5 / 20)  # mean of steps 15 and 20
    np.testing.assert_allclose(dr.endpoint_N(run[1], last=1), -0.3)


def test_a_main_run_that_extends_the_pilot_reads_the_pilots_seeds_and_its_chunks(tmp_path, spec):
    """main.extends_pilot: the pilot's seeds 0..3 and the main run's 4..9 are one set of 10 seeds;
    the main run trains only seeds 4..9, in chunks of main.chunk (4..7, 8..9), the pairs interleaved.
    Before every chunk is stored the report says the main run is under way and its verdicts interim;
    a seed in two files is an error."""
    spec = spec | {"pilot": spec["pilot"] | {"seeds": 4},
                   "main": spec["pilot"] | {"seeds": 10, "extends_pilot": True, "chunk": 4}}
    assert dr.seed_chunks(spec) == [(4, 4), (8, 2)]
    configs = decisive.configurations(spec, "main")
    assert list(configs) == ["I_s4", "N_s4", "I_s8", "N_s8"]
    assert "seed=8" in configs["N_s8"] and "seeds=2" in configs["N_s8"]
    with pytest.raises(SystemExit, match="extends_pilot"):
        dr.seed_chunks(spec | {"main": spec["main"] | {"steps": 40}})
    for pair, seed in (("I", 0), ("N", 1)):
        _write_run(tmp_path / "runs" / "pilot" / pair, 0.2, 0.3, seeds=4, seed=seed)
        _write_run(tmp_path / "runs" / "main" / f"{pair}_s4", 0.2, 0.3, seeds=4, seed=seed + 2, first_seed=4)
    text = dr.section(spec, tmp_path, tmp_path)
    assert "The main run is under way" in text and "I 8, N 8" in text and "INTERIM" in text
    for pair, seed in (("I", 0), ("N", 1)):
        _write_run(tmp_path / "runs" / "main" / f"{pair}_s8", 0.2, 0.3, seeds=2, seed=seed + 4, first_seed=8)
    runs = dr.load_stage(spec, tmp_path, "main")
    assert runs["I"][0]["seeds"] == list(range(10)) and runs["I"][0]["phi_prime"].shape == (5, 10)
    assert [r["seeds"] for r in dr.primary_contrasts(spec, runs)] == [10] * 4
    text = dr.section(spec, tmp_path, tmp_path)
    assert "under way" not in text and "Only the pilot" not in text and "include the pilot's 4" in text
    with pytest.raises(ValueError, match="same seed"):
        dr.read_runs(tmp_path / "runs" / "pilot" / "I" / "metrics.csv", tmp_path / "runs" / "pilot" / "N" / "metrics.csv")


def test_the_peer_table_puts_trls_batch_means_at_sims_logged_steps_beside_sims_range(tmp_path):
    """TRL's per-step reward means (step k at index k - 1) against sim's batch means at the same
    logged step: a TRL value inside sim's seed range counts, one outside does not."""
    import json

    run = {"steps": np.array([0, 5, 10]),
           "phi_sampled": np.array([[np.nan] * 3, [0.2, 0.3, 0.25], [0.3, 0.4, 0.35]]),
           "phi_prime_sampled": np.array([[np.nan] * 3, [0.6, 0.7, 0.65], [0.6, 0.7, 0.65]])}
    trl = {"phi": [0.0] * 4 + [0.22] + [0.0] * 4 + [0.9], "phi_prime": [0.0] * 4 + [0.65] + [0.0] * 4 + [0.5]}
    (tmp_path / "trl").mkdir()
    (tmp_path / "trl" / "I_seed0.json").write_text(json.dumps({"mean_reward_per_step": trl}))
    lines = dr.peer_rows({"I": {0: run}}, tmp_path)
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines[2:]}
    assert "0.250 [0.200, 0.300] | 0.220 | 1 of 1" in rows["φ", "5"]
    assert "| 0.900 | 0 of 1" in rows["φ", "10"] and "| 0.500 | 0 of 1" in rows["φ′", "10"]
    assert "| 0.300 [0.250, 0.350] | 0.560 | 0 of 1" in rows["φ", "mean of these"]  # (0.22 + 0.9) / 2
    assert dr.peer_rows({"N": {0: run}}, tmp_path) == []  # no pair I: no table


def test_the_toy_is_read_at_the_step_where_its_phi_has_gained_what_the_real_models_did(tmp_path, spec):
    """Real and toy runs both gain 0.01 of phi per step; the real endpoint (mean of steps 15 and 20)
    has gained 0.175, which the toy first reaches at its logged step 20, where its phi_prime has
    fallen by exactly its drift (noise 0)."""
    _write_run(tmp_path / "runs" / "toy" / "toy_shared", 0.2, 0.3, noise=0.0)
    _write_run(tmp_path / "real" / "I", 0.0, 0.0)
    rows = dr.matched_rows(dr.toy_at_matched_gain(spec, tmp_path / "runs" / "toy",
                                                  {"I": dr.read_runs(tmp_path / "real" / "I" / "metrics.csv")}))
    assert rows[0].startswith("| toy, shared | paid (w = 4, 1) | I: +0.175 | 20 | -0.200 ")
    assert rows[1].startswith("| toy, shared | unpaid (w = 4, 0) | I: +0.175 | 20 | -0.300 ")


@pytest.mark.parametrize("toy_fall, caveat", [(0.02, True), (0.2, False)])
def test_the_report_warns_when_the_toys_fall_at_the_real_size_is_inside_the_margin(tmp_path, spec, toy_fall, caveat):
    for pair, seed in (("I", 0), ("N", 1)):
        _write_run(tmp_path / "runs" / "pilot" / pair, 0.0, 0.0, seed=seed)
    _write_run(tmp_path / "runs" / "toy" / "toy_shared", toy_fall, toy_fall, noise=0.0)  # falls toy_fall by step 20
    assert ("**Caveat.**" in dr.section(spec, tmp_path, tmp_path)) == caveat
