"""The blog's claims (background/blog-why-does-my-reward-look-like-that.md), tested in the simulator.

Setting: the blog experiment's defaults (GRPO, G = 8, on r = 4·φ + w₂·φ′; lowrank policy of
width 4 over 16 prompts x 8 positions; Adam 0.05; β = 0.04, k3 in the loss), 16 seeds per
condition. Conditions that differ only in numbers are sweep points of one compiled batch (the
module fixtures); every point uses seeds 0-15 with the same keys (common random numbers), so
differences between points are paired by seed. κ′ is the tilt-measured KL-cost asymmetry of φ′
at the reference, C(+δ)/C(−δ) at δ = task.kappa_delta (0.05), logged at step 0.

What holds in the simulator (numbers and figures: experiments/REPORT.md):
1. holds.
2. half false. The fall grows with κ′ (c′ 0.3 → 0.5 → 0.7; it saturates by 0.9), but with the
   default sharing (128 slots on a width-4 feature space) φ′ falls at κ′ ≤ 1 too. κ′ decides
   the sign only with less sharing (width 16): φ′ then rises at κ′ < 1, barely moves at κ′ = 1
   and falls at κ′ > 1. (Widths >= 24 are not used: XLA:CPU miscompiles them, see REPORT.md.)
3. holds: w₂ = 0 falls further; with w₂ = 1 φ′ bottoms out after ~400 steps and recovers.
4. holds.
5. holds, at width 16, where the same κ′ < 1 rises without the systematic overlap; it differs
   from claim 1 in the measured κ′ (< 1 vs > 1) and in the quadrant table (the blog's
   p(φ↑φ′↓) > p(φ↑φ′↑) holds here and is reversed in claim 1's setting).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from conftest import experiment
from sim.results import mean_ci95
from sim.sweep import expand
from sim.train import make_train, run_keys

C_KEY = "task.phi_prime.competence"
KEYS = {"w2": "task.phi_prime.weight", "overlap": "policy.overlap"}
COMPETENCES = [0.3, 0.4, 0.5, 0.7, 0.9]  # kappa' 0.94, 0.97, 1, 1.07, 1.37 at kappa_delta 0.05


class Trained(NamedTuple):
    batch: object
    metrics: dict
    steps_T: np.ndarray

    def series(self, name: str, c: float, **swept: float) -> np.ndarray:
        """[T, 16]: metric `name` at the sweep point with competence c' and the other swept values
        (w2=..., overlap=...)."""
        want = {C_KEY: c} | {KEYS[k]: v for k, v in swept.items()}
        point = next(p for p, values in enumerate(self.batch.point_values)
                     if all(np.isclose(values[k], v) for k, v in want.items()))
        return self.metrics[name][:, self.batch.points_R == point]

    def row(self, step: int) -> int:
        return int(np.flatnonzero(self.steps_T == step)[0])


def _train(overrides: list[str]) -> Trained:
    exp = experiment(["seeds=16", "plots=false"] + overrides)
    batch = expand(exp)
    result = make_train(exp.static)(batch.hparams_R, run_keys(batch.seeds_R))
    return Trained(batch, result.metrics, result.steps_T)


@pytest.fixture(scope="module")
def default_policy() -> Trained:
    """Claims 1-3: the default lowrank policy, c' in COMPETENCES x w2 in {0, 1}: 160 runs x 1000
    steps, one compile. 1000 steps because claim 3 needs to see the fall stop."""
    return _train(["steps=1000", "log_every=50", f"{C_KEY}={COMPETENCES}", f"{KEYS['w2']}=[0,1]"])


@pytest.fixture(scope="module")
def wide_policy() -> Trained:
    """Claims 2 and 5 with less sharing: lowrank width 16 (8 slots per feature dimension instead of 32),
    c' x overlap in {0, 0.8}: 96 runs x 200 steps."""
    return _train(["policy.width=16", f"{C_KEY}=[0.3,0.5,0.9]", f"{KEYS['overlap']}=[0,0.8]"])


def _delta(x_TxN: np.ndarray, row: int, start: int = 0) -> tuple[float, float, float]:
    return mean_ci95(x_TxN[row] - x_TxN[start])


def test_claim1_phi_rises_while_phi_prime_falls(default_policy):
    """c' = 0.9 (the blog's default, kappa' > 1), w2 = 1, after 200 steps (the blog's horizon).
    Measured: dphi +0.542 [+0.524, +0.561], dphi' -0.284 [-0.309, -0.259], kappa' 1.37: the
    thresholds (mean dphi > 0.3, CI of dphi' below 0, kappa' > 1.2) are ten half-widths away."""
    t = default_policy
    kappa = t.series("kappa_phi_prime", 0.9, w2=1.0)[0]
    phi = t.series("phi", 0.9, w2=1.0)
    phi_prime = t.series("phi_prime", 0.9, w2=1.0)
    at = t.row(200)
    assert np.all(kappa > 1.2), kappa
    d_phi, d_pp = _delta(phi, at), _delta(phi_prime, at)
    assert d_phi[0] > 0.3, d_phi
    assert d_pp[2] < 0, d_pp


def test_claim2_the_fall_grows_with_kappa(default_policy):
    """w2 = 1, step 200: kappa' measured at the reference rises with c' 0.3 -> 0.5 -> 0.7 (0.94, 1,
    1.07) and the fall of phi' grows with it, each step paired by seed (measured -0.07, -0.18,
    -0.27; paired differences -0.11 [-0.14, -0.08] and -0.09 [-0.12, -0.07]). It saturates by
    c' = 0.9 (kappa' 1.37: -0.28; 0.7 -> 0.9 differs by -0.01 [-0.04, +0.01]), so the trend is
    tested over the three values below it."""
    t, at = default_policy, default_policy.row(200)
    kappas, falls = [], []
    for c in (0.3, 0.5, 0.7):
        kappas.append(t.series("kappa_phi_prime", c, w2=1.0)[0].mean())
        pp = t.series("phi_prime", c, w2=1.0)
        falls.append(pp[at] - pp[0])
    assert kappas[0] < 1 - 1e-3 and abs(kappas[1] - 1) < 1e-3 and kappas[2] > 1 + 1e-3, kappas
    for lower, higher in zip(falls, falls[1:]):
        assert mean_ci95(higher - lower)[2] < 0, mean_ci95(higher - lower)


def test_claim2_is_false_with_default_sharing_phi_prime_falls_at_kappa_at_most_one(default_policy):
    """The blog: kappa' <= 1 shows no fall. With the default sharing it does (REPORT.md sections 5-6).
    Step 200, w2 = 1: c' = 0.4 (kappa' 0.97) measured -0.114 [-0.161, -0.068] and c' = 0.5
    (kappa' = 1) -0.179 [-0.222, -0.136]: both CIs end 0.07-0.14 below zero. (c' = 0.3, kappa' 0.94,
    falls too, -0.069 [-0.125, -0.014], too close to zero for a safe test with 16 seeds.)"""
    t, at = default_policy, default_policy.row(200)
    for c in (0.4, 0.5):
        assert t.series("kappa_phi_prime", c, w2=1.0)[0].mean() <= 1 + 1e-3
        d_pp = _delta(t.series("phi_prime", c, w2=1.0), at)
        assert d_pp[2] < 0, (c, d_pp)


def test_claim2_holds_with_less_sharing_kappa_decides_the_sign(wide_policy):
    """Width 16, overlap 0, step 200: phi' rises at kappa' 0.94 (measured +0.063 [+0.035, +0.092]),
    barely moves at kappa' = 1 (-0.023 [-0.052, +0.006]) and falls at kappa' 1.37 (-0.147 [-0.160,
    -0.134]). kappa' = 1 is the boundary: its change is tested to be small (> -0.05) and well above
    the kappa' > 1 fall (paired difference +0.12 [+0.11, +0.14])."""
    t = wide_policy
    low, one, high = (t.series("phi_prime", c, overlap=0.0) for c in (0.3, 0.5, 0.9))
    assert _delta(low, -1)[1] > 0, _delta(low, -1)
    assert _delta(one, -1)[0] > -0.05, _delta(one, -1)
    assert mean_ci95((one[-1] - one[0]) - (high[-1] - high[0]))[1] > 0
    assert _delta(high, -1)[2] < 0, _delta(high, -1)


def test_claim3_phi_prime_in_the_reward_is_a_floor(default_policy):
    """(a) At every c', w2 = 0 loses more phi' by step 200 than w2 = 1 (paired by seed; measured
    gaps -0.12 to -0.145, CIs ending at -0.07 or lower). (b) With w2 = 1 and c' = 0.9 the fall
    stops: over the last quarter (steps 750-1000) phi' does not fall (measured +0.014 [+0.002,
    +0.026]), and it ends well above the w2 = 0 run (paired: -0.262 [-0.283, -0.241]). (Without
    phi' in the reward it also levels off once phi saturates, -0.005 [-0.013, +0.002], but lower.)"""
    t = default_policy
    at, quarter = t.row(200), t.row(750)
    for c in COMPETENCES:
        free = t.series("phi_prime", c, w2=0.0)
        floored = t.series("phi_prime", c, w2=1.0)
        gap = mean_ci95((free[at] - free[0]) - (floored[at] - floored[0]))
        assert gap[2] < 0, (c, gap)
    floored = t.series("phi_prime", 0.9, w2=1.0)
    free = t.series("phi_prime", 0.9, w2=0.0)
    last_quarter = _delta(floored, -1, quarter)
    assert last_quarter[2] >= 0, last_quarter
    assert mean_ci95(free[-1] - floored[-1])[2] < 0


def test_claim4_no_sharing_no_fall():
    """Tabular policy (independent logits per prompt and position), c' = 0.9, w2 = 1: the expected
    gradient of 4 phi + phi' raises phi', and so does training (measured +0.062 with a seed std
    of 0.002: the CI is far above zero)."""
    t = _train(["policy=tabular"])
    d_pp = _delta(t.metrics["phi_prime"], -1)
    assert d_pp[1] > 0, d_pp


def test_claim5_systematic_spillover_lowers_phi_prime_at_kappa_below_one(wide_policy):
    """Width 16, c' = 0.3 (kappa' 0.94), step 200: with phi_prime's features mixed with phi's
    (overlap 0.8) phi' falls (measured -0.155 [-0.168, -0.142]) where without it phi' rises
    (+0.063 [+0.035, +0.092]). What tells it apart from claim 1's setting (c' = 0.9, same policy):
    the tilt-measured kappa' is below 1 instead of above, and the quadrant table of the first
    batches (steps 10-30, each seed's mean) has the blog's p(phi up, phi' down) > p(phi up, phi' up):
    ud - uu measured +0.049 [+0.034, +0.064], where claim 1's setting has it reversed, -0.101
    [-0.120, -0.081]."""
    t = wide_policy
    spill = t.series("phi_prime", 0.3, overlap=0.8)
    clean = t.series("phi_prime", 0.3, overlap=0.0)
    assert _delta(spill, -1)[2] < 0, _delta(spill, -1)
    assert _delta(clean, -1)[1] > 0, _delta(clean, -1)

    def ud_minus_uu(c: float, overlap: float) -> tuple[float, float, float]:
        ud, uu = (t.series(f"quad_frac_{q}", c, overlap=overlap)[1:4].mean(0) for q in ("ud", "uu"))
        return mean_ci95(ud - uu)

    assert np.all(t.series("kappa_phi_prime", 0.3, overlap=0.8)[0] < 1)
    assert np.all(t.series("kappa_phi_prime", 0.9, overlap=0.0)[0] > 1)
    assert ud_minus_uu(0.3, 0.8)[1] > 0, ud_minus_uu(0.3, 0.8)
    assert ud_minus_uu(0.9, 0.0)[2] < 0, ud_minus_uu(0.9, 0.0)
