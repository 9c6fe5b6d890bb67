"""The blog's claims (background/blog-why-does-my-reward-look-like-that.md), tested in the simulator.

Setting: the blog experiment's defaults (GRPO, G = 8, on r = 4·φ + w₂·φ′; lowrank policy of
width 4 over 16 prompts x 8 positions; Adam 0.05; β = 0.04, k3 in the loss), 16 seeds (0-15) per
condition. φ′'s asymmetry is set as a target, `task.phi_prime.kappa` (κ′ = C(+δ)/C(−δ) of the
exponential tilt at the reference, δ = task.kappa_delta = 0.05), which sweep.expand turns into
the reference's competence c′; the tests also read the κ′ logged at step 0 to check it. Conditions
that differ only in numbers are sweep points of one compiled batch (the module fixtures), and every
point uses the same PRNG key per seed (common random numbers), so differences between points are
paired by seed. Every statistic is a mean over seeds with its 95% Student-t interval
(results.mean_ci95); the measured values quoted in the docstrings come from these very batches.

What holds in the simulator (numbers and figures: experiments/REPORT.md):
1. holds.
2. half false. The fall grows with κ′ (0.94 → 1 → 1.07; beyond, to 1.37, inconclusive), but with the
   default sharing (128 slots on a width-4 feature space) φ′ falls at κ′ ≤ 1 too. κ′ decides
   the sign only with less sharing (width 16): φ′ then rises at κ′ < 1, falls at κ′ > 1, and
   is inconclusive at κ′ = 1 (neither a change nor equivalence within ±0.02 is shown).
3. holds: w₂ = 0 falls further; with w₂ = 1 φ′ levels off (last-quarter slope not negative).
4. holds.
5. holds, at width 16, where the same κ′ < 1 rises without the systematic overlap; it differs
   from claim 1 in the measured κ′ (< 1 vs > 1) and in the quadrant table (the blog's
   p(φ↑φ′↓) − p(φ↑φ′↑) among untied samples is higher here than in claim 1's setting, where it is
   reversed; here it is barely above 0).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from conftest import experiment
from sim.analysis import stats
from sim.output.results import mean_ci95, slope_ci95
from sim.rl.sweep import expand
from sim.rl.train import make_train, run_keys

KEYS = {"kappa": "task.phi_prime.kappa", "w2": "task.phi_prime.weight", "overlap": "policy.overlap"}
# kappa' targets at kappa_delta 0.05; the solved competences are c' = 0.30, 0.39, 0.50, 0.71, 0.90
# (1.37 is the blog default's kappa', c' = 0.9).
KAPPAS = [0.94, 0.97, 1.0, 1.07, 1.37]


class Trained(NamedTuple):
    batch: object
    metrics: dict
    steps_T: np.ndarray

    def series(self, name: str, **swept: float) -> np.ndarray:
        """[T, 16]: metric `name` at the sweep point with these swept values (kappa=..., w2=...)."""
        want = {KEYS[k]: v for k, v in swept.items()}
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
    """Claims 1-3: the default lowrank policy, kappa' in KAPPAS x w2 in {0, 1}: 160 runs x 1000
    steps, one compile. 1000 steps because claim 3 needs to see the fall stop."""
    return _train(["steps=1000", "log_every=50", f"{KEYS['kappa']}={KAPPAS}", f"{KEYS['w2']}=[0,1]"])


@pytest.fixture(scope="module")
def wide_policy() -> Trained:
    """Claims 2 and 5 with less sharing: lowrank width 16 (8 slots per feature dimension instead
    of 32), kappa' in {0.94, 1, 1.37} x overlap in {0, 0.8}: 96 runs x 200 steps, one compile."""
    return _train(["policy.width=16", f"{KEYS['kappa']}=[0.94,1.0,1.37]", f"{KEYS['overlap']}=[0,0.8]"])


def _delta(x_TxN: np.ndarray, row: int, start: int = 0) -> tuple[float, float, float]:
    return mean_ci95(x_TxN[row] - x_TxN[start])


def test_claim1_phi_rises_while_phi_prime_falls(default_policy):
    """kappa' = 1.37 (the blog's default reference, c' = 0.9), w2 = 1, after 200 steps (the blog's
    horizon). Statistic: mean change over seeds and its 95% CI. Measured: dphi +0.54 [+0.52, +0.56],
    dphi' -0.28 [-0.30, -0.25], logged kappa' 1.37. The thresholds (mean dphi > 0.3, CI of dphi'
    below 0, kappa' > 1.2) are each more than ten CI half-widths from the measured values."""
    t = default_policy
    kappa = t.series("kappa_phi_prime", kappa=1.37, w2=1.0)[0]
    phi = t.series("phi", kappa=1.37, w2=1.0)
    phi_prime = t.series("phi_prime", kappa=1.37, w2=1.0)
    at = t.row(200)
    assert np.all(kappa > 1.2), kappa
    d_phi, d_pp = _delta(phi, at), _delta(phi_prime, at)
    assert d_phi[0] > 0.3, d_phi
    assert d_pp[2] < 0, d_pp


def test_claim2_the_fall_grows_with_kappa(default_policy):
    """w2 = 1, step 200: over kappa' 0.94 -> 1 -> 1.07 (each checked against the kappa' logged at
    step 0) the fall of phi' grows, each step tested as a paired difference by seed (its 95% CI
    below 0). Measured: dphi' -0.07, -0.18, -0.27; paired steps about -0.11 (via kappa' 0.97:
    -0.056 [-0.088, -0.024] then -0.051 [-0.070, -0.032]) and -0.090 [-0.112, -0.068]. From 1.07
    to 1.37 (-0.28) the change, -0.01 [-0.04, +0.02], is inconclusive (not a fall, and not within
    +-0.02 by TOST: no saturation is shown either), so the monotone trend is tested over the three
    values below it."""
    t, at = default_policy, default_policy.row(200)
    kappas, falls = [], []
    for k in (0.94, 1.0, 1.07):
        kappas.append(t.series("kappa_phi_prime", kappa=k, w2=1.0)[0].mean())
        pp = t.series("phi_prime", kappa=k, w2=1.0)
        falls.append(pp[at] - pp[0])
    np.testing.assert_allclose(kappas, [0.94, 1.0, 1.07], atol=2e-3)  # the target is what the run measures
    for lower, higher in zip(falls, falls[1:]):
        assert mean_ci95(higher - lower)[2] < 0, mean_ci95(higher - lower)


def test_claim2_is_false_with_default_sharing_phi_prime_falls_at_kappa_at_most_one(default_policy):
    """The blog: kappa' <= 1 shows no fall. With the default sharing (width 4) it does, so this test
    states what is true: step 200, w2 = 1, at kappa' 0.97 (measured -0.13 [-0.17, -0.08]) and
    kappa' = 1 (-0.18 [-0.22, -0.13]) the CI of dphi' lies below 0, with 0.07-0.14 to spare.
    (kappa' 0.94 falls too, -0.07 [-0.12, -0.01], too close to 0 for a safe test with 16 seeds.)"""
    t, at = default_policy, default_policy.row(200)
    for k in (0.97, 1.0):
        assert t.series("kappa_phi_prime", kappa=k, w2=1.0)[0].mean() <= 1 + 1e-3
        d_pp = _delta(t.series("phi_prime", kappa=k, w2=1.0), at)
        assert d_pp[2] < 0, (k, d_pp)


def test_claim2_holds_with_less_sharing_kappa_decides_the_sign(wide_policy):
    """Width 16, overlap 0, step 200: by sim/analysis/stats.py's verdicts (Holm over the three kappa', TOST
    margin 0.02) phi' rises at kappa' 0.94 (measured +0.06 [+0.04, +0.09]) and falls at kappa' 1.37
    (-0.14 [-0.16, -0.12]). At kappa' = 1 it is inconclusive (-0.02 [-0.05, +0.01]: its interval
    includes 0 but is not within +-0.02 either), so "no fall at kappa' = 1" is not asserted; the
    kappa' = 1 change is well above the kappa' 1.37 fall (paired +0.12 [+0.10, +0.14])."""
    t = wide_policy
    low, one, high = (t.series("phi_prime", kappa=k, overlap=0.0) for k in (0.94, 1.0, 1.37))
    verdicts = [v["verdict"] for v in stats.family_verdicts([x[-1] - x[0] for x in (low, one, high)], 0.02)]
    assert verdicts[0] == "up" and verdicts[2] == "down", verdicts
    assert mean_ci95((one[-1] - one[0]) - (high[-1] - high[0]))[1] > 0
    assert _delta(high, -1)[2] < 0, _delta(high, -1)


def test_claim3_phi_prime_in_the_reward_is_a_floor(default_policy):
    """(a) At every kappa', w2 = 0 loses more phi' by step 200 than w2 = 1 (paired by seed; measured
    gaps -0.11 to -0.14, CIs ending at -0.07 or lower). (b) With w2 = 1 at the blog's kappa' 1.37
    the fall stops: the least-squares slope of phi' over the last quarter (steps 750-1000, 6 logged
    rows per seed) is not significantly negative (its CI's upper end >= 0; measured +0.07 per 1000
    steps [+0.03, +0.11], i.e. +6.6e-5 per step: it recovers a little), and phi' ends well above the
    w2 = 0 run (paired: -0.26 [-0.28, -0.24]). (With w2 = 0 it levels off too once phi saturates, slope -0.02 per 1000
    steps [-0.06, +0.02], but 0.26 lower.)"""
    t = default_policy
    at, quarter = t.row(200), t.row(750)
    for k in KAPPAS:
        free = t.series("phi_prime", kappa=k, w2=0.0)
        floored = t.series("phi_prime", kappa=k, w2=1.0)
        gap = mean_ci95((free[at] - free[0]) - (floored[at] - floored[0]))
        assert gap[2] < 0, (k, gap)
    floored = t.series("phi_prime", kappa=1.37, w2=1.0)
    free = t.series("phi_prime", kappa=1.37, w2=0.0)
    slope = slope_ci95(floored[quarter:], t.steps_T[quarter:])
    assert slope[2] >= 0, slope
    assert mean_ci95(free[-1] - floored[-1])[2] < 0


def test_claim4_no_sharing_no_fall():
    """Tabular policy (independent logits per prompt and position), the blog's kappa' 1.37, w2 = 1:
    the expected gradient of 4 phi + phi' raises phi', and so does training (measured +0.062 with a
    seed std of 0.0006: the CI's lower end is far above zero)."""
    t = _train(["policy=tabular"])
    d_pp = _delta(t.metrics["phi_prime"], -1)
    assert d_pp[1] > 0, d_pp


def test_claim5_systematic_spillover_lowers_phi_prime_at_kappa_below_one(wide_policy):
    """Width 16, kappa' 0.94, step 200: with phi_prime's features mixed with phi's (overlap 0.8)
    phi' falls (measured -0.16 [-0.17, -0.14]) where without it phi' rises (+0.06 [+0.03, +0.09]).
    What tells it apart from claim 1's mechanism (kappa' 1.37, same policy, no overlap): the
    tilt-measured kappa' is below 1 instead of above, and the quadrant table of the first batches
    (steps 10-30, each seed's mean) read among untied samples (a tie with the group's mean is
    neither up nor down; ties are 11% of these samples): p(phi up, phi' down) - p(phi up, phi' up)
    measured +0.021 [+0.002, +0.041] here and -0.132 [-0.154, -0.110] in claim 1's setting (counting
    ties as down, as the table once did, gave +0.047 and -0.103). Thresholds: claim 1's setting
    below 0 (its CI's upper end is 0.11 from 0) and the paired contrast by seed between the two,
    measured +0.153 [+0.122, +0.184], above 0.05 at its lower end (0.07 below the measured one).
    The table does not tell spill-over from its absence at the same kappa' (+0.021 without the
    overlap too): it follows kappa', not the mechanism."""
    t = wide_policy
    spill = t.series("phi_prime", kappa=0.94, overlap=0.8)
    clean = t.series("phi_prime", kappa=0.94, overlap=0.0)
    assert _delta(spill, -1)[2] < 0, _delta(spill, -1)
    assert _delta(clean, -1)[1] > 0, _delta(clean, -1)

    def ud_minus_uu_N(k: float, overlap: float) -> np.ndarray:
        """Each seed's mean over steps 10-30, among untied samples."""
        frac = {q: t.series(f"quad_frac_{q}", kappa=k, overlap=overlap)[1:4] for q in ("uu", "ud", "du", "dd")}
        return ((frac["ud"] - frac["uu"]) / sum(frac.values())).mean(0)

    ud_minus_uu = lambda k, overlap: mean_ci95(ud_minus_uu_N(k, overlap))  # noqa: E731

    assert np.all(t.series("kappa_phi_prime", kappa=0.94, overlap=0.8)[0] < 1)
    assert np.all(t.series("kappa_phi_prime", kappa=1.37, overlap=0.0)[0] > 1)
    assert ud_minus_uu(1.37, 0.0)[2] < 0, ud_minus_uu(1.37, 0.0)
    paired = mean_ci95(ud_minus_uu_N(0.94, 0.8) - ud_minus_uu_N(1.37, 0.0))  # sweep points share seeds
    assert paired[1] > 0.05, paired
