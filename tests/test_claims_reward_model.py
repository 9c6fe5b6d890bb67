"""The lecture notes' claims on reward hacking (background/lecture-notes-policy-gradient.md, points
5 and 6), tested in the toy world with a learned, frozen reward model.

Setting (TINY): 4 prompts, responses of 4 tokens over 6 (6^4 = 1296 responses), phi at positions
0-1 (good tokens 0, 1), phi_prime at 2-3 (good 2, 3); gold r = 4 phi + phi_prime; the tabular
policy in exact mode (the expected update: no sampling noise, so one RL seed per point), GRPO,
Adam 0.05, 120 steps. The proxy is a linear reward model (one weight per (position, token): the
gold is of this form, so only too few pairs can make it wrong) fit to 8 or 256 pairs with hard
labels (noise 0). The replicates are the reward models: seeds 0-7 draw independent pairs, so every
statistic is over 8 reward models, paired by seed across conditions; mean and 95% Student-t
interval (results.mean_ci95). All 32 runs (2 beta x 2 pair counts x 8 seeds) are sweep points of
one compiled program (the module fixture). Measured values quoted below come from this batch.

What holds (numbers and figures: experiments/REPORT.md, section "Reward hacking"):
1. holds: with beta = 0 and 8 pairs the proxy ends at its maximum in every reward model while the
   gold falls from its peak in most of them.
2. holds in part: a larger beta (0.2) always stops at a smaller KL; with 8 pairs it ends with more
   gold than beta = 0 on average, but not for every reward model: where the proxy happened to be
   right, the KL penalty costs gold (and with 256 pairs it costs gold everywhere).
3. holds for more pairs (256 vs 8): a higher gold peak at a larger d. A bigger reward model is not
   tested here: the linear one is already the right form (experiments/REPORT.md measures mlp).
4. holds exactly.
5. holds for two of three objectives: a 4-member ensemble (member 0 the single 8-pair model, the
   others on bootstrap resamples of its pairs) gives more gold than the single model at the same KL
   with the worst-case and uncertainty-weighted objectives; with the mean it is inconclusive.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment
from sim import experiment as experiment_lib
from sim.analysis import stats
from sim.reward_models import hacking
from sim.stages import proxy
from sim.rl import step as step_lib
from sim.policies import tabular
from sim.policies.base import token_log_probs
from sim.output.results import mean_ci95
from sim.rl.sweep import expand
from sim.rl.train import build_policy, make_train, run_keys

TINY = ["task.prompts=4", "task.length=4", "task.vocab=6", "task.phi.positions=[0,1]", "task.phi.good_tokens=[0,1]",
        "task.phi_prime.positions=[2,3]", "task.phi_prime.good_tokens=[2,3]", "policy=tabular", "algo.mode=exact",
        "seeds=1", "plots=false"]
SEEDS = list(range(8))
BATCH = TINY + ["reward_model=linear", "reward_model.pairs=[8,256]", f"reward_model.seed={SEEDS}",
                "algo.kl.beta=[0,0.2]", "steps=120", "log_every=10"]
KEYS = {"beta": "algo.kl.beta", "pairs": "reward_model.pairs", "seed": "reward_model.seed"}


class Trained(NamedTuple):
    exp: object
    batch: object
    proxies: object
    result: object

    def runs(self, **where) -> np.ndarray:
        """The run of each reward-model seed (in SEEDS order) at the point with these swept values."""
        want = {KEYS[k]: v for k, v in where.items()}
        return np.array([next(r for r in range(self.batch.size) if all(np.isclose(
            self.batch.point_values[self.batch.points_R[r]][k], v) for k, v in {**want, KEYS["seed"]: s}.items()))
            for s in SEEDS])

    def series(self, name: str, **where) -> np.ndarray:
        """[T, 8]: metric `name` against logged step, one column per reward-model seed."""
        return self.result.metrics[name][:, self.runs(**where)]


@pytest.fixture(scope="module")
def trained() -> Trained:
    exp = experiment(BATCH)
    batch = expand(exp)
    proxies = proxy.prepare(exp, batch)
    result = make_train(exp.static)(batch.hparams_R, run_keys(batch.seeds_R), proxy_R=proxies.params_R)
    return Trained(exp, batch, proxies, result)


def _peak_and_end(t: Trained, **where):
    gold, d = t.series("gold", **where), t.series("sqrt_kl", **where)
    k = np.argmax(gold, 0)
    cols = np.arange(gold.shape[1])
    return gold[k, cols], d[k, cols], gold[-1], d[-1]


def test_claim1_reward_hacking_proxy_keeps_rising_while_gold_peaks_and_falls(trained):
    """beta = 0, 8 pairs. Statistics over the 8 reward models: (a) the proxy's last value minus its
    maximum over training (>= -1e-3 in every one: it never turns down; measured shortfall 0.000 in
    all 8); (b) peak gold - final gold, mean and 95% CI; measured +0.55 [+0.16, +0.95]; 7 of 8
    reward models fall by > 0.05 (0.05-1.40; seed 0 ends at the gold maximum 5: its 8 pairs
    happened to rank a good token first at every position). Thresholds: the CI above 0 (its lower
    end is 0.16 away), and at least 6 of 8 falling by > 0.05 (one is at 0.053, so 7 is not safe)."""
    proxy_TxS = trained.series("proxy", beta=0.0, pairs=8)
    assert np.all(proxy_TxS[-1] - proxy_TxS.max(0) >= -1e-3), proxy_TxS
    peak, _, end, _ = _peak_and_end(trained, beta=0.0, pairs=8)
    fall = mean_ci95(peak - end)
    assert fall[1] > 0, fall
    assert np.sum(peak - end > 0.05) >= 6, peak - end


def test_claim2_a_kl_penalty_stops_at_smaller_kl_and_limits_the_damage(trained):
    """beta = 0.2 vs 0, paired by reward model. (a) The final d = sqrt(KL) is smaller with beta = 0.2
    in every reward model, at 8 and at 256 pairs. (b) 8 pairs: final gold(0.2) - final gold(0) has
    a positive mean (measured +0.13 [-0.07, +0.34]; 6 of 8 positive); its CI includes 0, because
    where the 8-pair proxy happens to be right (seed 0: gold 5 at beta = 0) the penalty only costs
    gold. (c) 256 pairs (a good proxy): the penalty costs gold in every reward model (CI below 0),
    the other side of the same trade: measured -0.206 [-0.209, -0.202]. The final d: 8 pairs
    2.15-2.87 at beta 0 vs 1.70-2.46 at 0.2; 256 pairs 2.41-2.47 vs 1.88-2.05. Thresholds: the
    signs; (b)'s mean, asserted > 0 with a count >= 5 of 8 (measured 6), is the weakest: the docs
    call claim 2's second half "on average, not for every reward model"."""
    for pairs in (8, 256):
        d0, d2 = trained.series("sqrt_kl", beta=0.0, pairs=pairs)[-1], trained.series("sqrt_kl", beta=0.2, pairs=pairs)[-1]
        assert np.all(d2 < d0), (pairs, d0, d2)
    diff8 = trained.series("gold", beta=0.2, pairs=8)[-1] - trained.series("gold", beta=0.0, pairs=8)[-1]
    assert mean_ci95(diff8)[0] > 0 and np.sum(diff8 > 0) >= 5, diff8
    diff256 = trained.series("gold", beta=0.2, pairs=256)[-1] - trained.series("gold", beta=0.0, pairs=256)[-1]
    assert mean_ci95(diff256)[2] < 0, mean_ci95(diff256)


def test_claim3_more_pairs_move_the_gold_peak_to_larger_d_and_higher_gold(trained):
    """beta = 0, 256 vs 8 pairs, paired by reward-model seed: differences of the peak gold and of the
    d at that peak, mean and 95% CI. Measured: gold +2.17 [+1.26, +3.07] (256 pairs: 4.99 in every
    reward model, at the end of training); d +0.91 [+0.19, +1.64]. Threshold: both CIs above 0."""
    g8, d8, _, _ = _peak_and_end(trained, beta=0.0, pairs=8)
    g256, d256, _, _ = _peak_and_end(trained, beta=0.0, pairs=256)
    assert mean_ci95(g256 - g8)[1] > 0, mean_ci95(g256 - g8)
    assert mean_ci95(d256 - d8)[1] > 0, mean_ci95(d256 - d8)


ENSEMBLE = TINY + ["reward_model=linear", "reward_model.pairs=8", f"reward_model.seed={SEEDS}", "algo.kl.beta=0",
                   "steps=120", "log_every=10", "reward_model.ensemble=4"]
OBJECTIVES = {"mean": [], "worst": ["reward_model.objective=worst"],
              "uncertainty": ["reward_model.objective=uncertainty", "reward_model.uncertainty_weight=1"]}


class _Columns(NamedTuple):
    """One objective's runs of the shared batch: its columns of every metric."""
    metrics: dict


@pytest.fixture(scope="module")
def ensembles() -> dict[str, Trained]:
    """8 reward-model seeds, each a 4-member ensemble whose member 0 is the 8-pair model of the same seed
    in `trained` (its members are fit once, cached). The objective is a per-run number (hparams
    rm_worst, rm_uncertainty_weight), so the three objectives share one Static: their 3 x 8 runs are
    concatenated into one call of one compiled program, and each objective reads its own columns."""
    exps = {name: experiment(ENSEMBLE + extra) for name, extra in OBJECTIVES.items()}
    assert len({exp.static for exp in exps.values()}) == 1
    batches = {name: expand(exp) for name, exp in exps.items()}
    proxies = {name: proxy.prepare(exps[name], batches[name]) for name in exps}
    hp_R = {k: np.concatenate([b.hparams_R[k] for b in batches.values()]) for k in batches["mean"].hparams_R}
    proxy_R = jax.tree.map(lambda *xs: np.concatenate(xs), *[p.params_R for p in proxies.values()])
    seeds_R = np.concatenate([b.seeds_R for b in batches.values()])
    result = make_train(exps["mean"].static)(hp_R, run_keys(seeds_R), proxy_R=proxy_R)
    out, first = {}, 0
    for name, batch in batches.items():
        columns = slice(first, first + batch.size)
        first += batch.size
        out[name] = Trained(exps[name], batch, proxies[name],
                            _Columns({k: np.asarray(v)[:, columns] for k, v in result.metrics.items()}))
    return out


def test_claim5_ensembles_worst_case_and_uncertainty_objectives_reduce_overoptimisation_at_the_same_kl(trained, ensembles):
    """Coste et al. 2023 in the toy: against the single linear 8-pair model (beta = 0), paired by
    reward-model seed (seeds 0-7; exact mode, so the runs are deterministic given the seed).
    Statistic: each seed's gold where the ensemble run and the single-model run both reach
    d* = min(their final d), interpolated between logged rows (hacking.gold_at_d), ensemble minus
    single; one family of the three objectives, Holm-corrected paired t-tests (stats.verdicts_of).
    Measured: mean +0.65 [-0.10, +1.41] (3 of 8 seeds up by > 1.5, the rest within 0.02; p = 0.080:
    inconclusive), worst case +1.08 [+0.30, +1.86] (p = 0.014), uncertainty +1.12 [+0.34, +1.91]
    (p = 0.012). Threshold: worst case and uncertainty "up" after Holm (p 0.012 < 0.05/3 and
    0.014 < 0.05/2); the mean is asserted only not to be "down". Safe because nothing here is sampled: the runs
    are the expected update from fixed seeds, so the numbers are the measured ones up to float
    rounding, far from the thresholds."""
    g0, d0 = trained.series("gold", beta=0.0, pairs=8), trained.series("sqrt_kl", beta=0.0, pairs=8)
    per_seed = {}
    for name, t in ensembles.items():
        g, d = t.series("gold"), t.series("sqrt_kl")
        d_star = np.minimum(d[-1], d0[-1])
        per_seed[name] = np.array([hacking.gold_at_d(d[:, i], g[:, i], d_star[i]) - hacking.gold_at_d(d0[:, i], g0[:, i], d_star[i])
                                   for i in range(len(SEEDS))])
    verdicts = stats.verdicts_of(per_seed)
    assert verdicts["worst"] == "up" and verdicts["uncertainty"] == "up", (verdicts, per_seed)
    assert verdicts["mean"] != "down", (verdicts, per_seed)


def test_claim4_rl_gives_no_gradient_to_a_response_it_never_produces_sft_does():
    """Lecture notes, point 6. A 2-token task over 4 tokens, one prompt; token 3 at position 0 is
    phi's only good token (the best response starts with it), but the policy gives it probability
    0 (logit -1e30). RL's expected gradient (exact mode: every response weighted by pi(y)) on that
    logit is exactly 0 (at position 1, where the produced responses differ in reward, it is not); the SFT gradient of
    -log pi(y*) for the demonstration y* = (3, 1) is -1 there (descent raises it: probability
    pushed onto a response the policy would not produce). Exact statements: equalities."""
    exp = experiment(["task.prompts=1", "task.length=2", "task.vocab=4", "task.phi.positions=[0]",
                      "task.phi.good_tokens=[3]", "task.phi_prime.positions=[1]", "task.phi_prime.good_tokens=[1]",
                      "policy=tabular", "algo.mode=exact", "algo.kl.beta=0", "seeds=1", "plots=false"])
    static, hp = exp.static, {k: jnp.float32(v) for k, v in exp.hparams.items()}
    logits_PxLxV = jnp.zeros((1, 2, 4)).at[0, 0, 3].set(-1e30)

    @jax.jit
    def gradients(logits_PxLxV):
        policy = tabular.make(logits_PxLxV)
        batch = step_lib.make_step_batch(static, policy, logits_PxLxV, hp, logits_PxLxV, jax.random.key(0))
        rl = jax.grad(lambda p: step_lib.loss_fn(static, policy, logits_PxLxV, hp, batch, p)[0])(logits_PxLxV)
        y_star = jnp.array([[3, 1]])
        sft = jax.grad(lambda p: -jnp.sum(token_log_probs(p, jnp.zeros(1, jnp.int32), y_star)))(logits_PxLxV)
        return rl, sft

    rl_grad, sft_grad = gradients(logits_PxLxV)
    assert rl_grad[0, 0, 3] == 0.0, rl_grad
    assert jnp.all(rl_grad[0, 1] != 0.0), rl_grad  # it does move the policy where produced responses differ
    assert sft_grad[0, 0, 3] == -1.0, sft_grad


def test_proxy_is_frozen_during_rl_and_one_program_covers_the_sweep(trained):
    """The proxies every run carried through 120 steps are bit-identical to those it started with;
    the 32 runs (beta x pairs x seed) were one call of one compiled program; and a second prepare()
    loads every proxy from the cache, bit-identical."""
    assert proxy.frozen_equal(trained.proxies.params_R, trained.result.state.proxy)
    assert trained.batch.size == 32 and len(trained.proxies.variants) == 16  # proxies shared across beta
    again = proxy.prepare(trained.exp, trained.batch)
    assert all(v["cached"] for v in again.variants)
    assert proxy.frozen_equal(trained.proxies.params_R, again.params_R)


def test_logged_gold_and_proxy_agree_with_enumeration(trained):
    """At the final policy of two runs, E[gold] and E[proxy] summed in numpy over every response
    (probability = product of the tabular policy's per-position softmaxes) equal the logged values."""
    task = trained.exp.static.task
    responses = np.array(list(itertools.product(range(task.vocab), repeat=task.length)))
    for r in (trained.runs(beta=0.0, pairs=8)[1], trained.runs(beta=0.2, pairs=256)[3]):
        hp = {k: jnp.asarray(v[r]) for k, v in trained.batch.hparams_R.items()}
        policy = build_policy(trained.exp.static, hp, trained.result.state.policy_key[r])
        p_PxLxV = np.asarray(jax.nn.softmax(policy.marginals(jax.tree.map(lambda x: x[r], trained.result.state.params)),
                                            -1), np.float64)
        px = jax.tree.map(lambda x: np.asarray(x[r], np.float64), trained.result.state.proxy)
        w_LxV, L = px["net"]["w_LxV"], task.length
        proxy_N = px["scale"] * w_LxV[np.arange(L), responses].sum(1) + px["shift"]
        gold_N = 4.0 * np.isin(responses[:, :2], [0, 1]).mean(1) + 1.0 * np.isin(responses[:, 2:], [2, 3]).mean(1)
        prob_PxN = np.prod(p_PxLxV[:, np.arange(L), responses], -1)
        assert trained.result.metrics["gold"][-1, r] == pytest.approx(np.mean(prob_PxN @ gold_N), rel=1e-4)
        assert trained.result.metrics["proxy"][-1, r] == pytest.approx(np.mean(prob_PxN @ proxy_N), rel=1e-4)


def test_hacking_outputs(trained, tmp_path):
    """experiment.reward_hacking writes hacking.png and rm_loss.png and each point's summary fields."""
    from dataclasses import replace

    info = {"points": [{} for _ in trained.batch.point_values]}
    experiment_lib.reward_hacking(tmp_path, replace(trained.exp, plots=True), trained.batch, trained.result, info,
                                  trained.proxies)
    assert (tmp_path / "hacking.png").stat().st_size > 0 and (tmp_path / "rm_loss.png").stat().st_size > 0
    h = info["points"][0]["hacking"]
    assert set(h) == {"peak_gold", "final", "final_gap", "gao_fit"} and set(h["gao_fit"]) == {
        "alpha", "beta", "r2", "rows", "d_min", "d_max", "d_peak", "peak_in_data"}
    assert info["reward_model"]["family"] == "linear" and len(info["reward_model"]["variants"]) == 16
