"""One update (sim/rl/step.py): a step is a pure function, and each estimator's loss gradient is
checked against the exact gradient of the objective it claims to follow."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim.rl import algos
from sim.rl.step import (batch_statistics, inner_epoch, loss_fn, make_optimizer, make_step_batch, per_token_BxL,
                      train_step)
from sim.rl.sweep import expand
from sim.rl.train import build_policy, make_train, run_keys


def _run(exp):
    batch = expand(exp)
    return make_train(exp.static)(batch.hparams_R, run_keys(batch.seeds_R))


def test_train_step_is_a_pure_function(small):
    exp = small()
    hp = {k: jnp.float32(v) for k, v in exp.hparams.items()}
    pol = build_policy(exp.static, hp, jax.random.key(0))
    params = pol.init()
    opt_state = make_optimizer(exp.static, hp).init(params)
    a = train_step(exp.static, pol, params, hp, params, opt_state, jax.random.key(3))
    b = train_step(exp.static, pol, params, hp, params, opt_state, jax.random.key(3))
    np.testing.assert_array_equal(a[0], b[0])


# ---------------------------------------------------------------------------------------------
# Estimators against exact gradients. A tiny tabular task: P=2 prompts, L=2 tokens over V=4;
# phi = [token 0 at position 0], phi' = [token 1 at position 1] (both binary), so the V**L = 16
# responses of each prompt can be enumerated by hand. The referee is jax.grad of the enumerated
# objective, written here from the logits table alone (independent of sim's batch code).

TINY = ["task.prompts=2", "task.length=2", "task.vocab=4", "task.phi.positions=[0]", "task.phi.good_tokens=[0]",
        "task.phi_prime.positions=[1]", "task.phi_prime.good_tokens=[1]", "policy=tabular", "plots=false",
        "seeds=1", "steps=1", "log_every=1", "algo.group_size=4", "optim.max_grad_norm=null"]


def _tiny(*extra):
    from tests.conftest import experiment
    return experiment(TINY + list(extra))


def _setup(exp):
    hp = {k: jnp.float32(v) for k, v in exp.hparams.items()}
    pol = build_policy(exp.static, hp, jax.random.key(0))
    ref = pol.init()
    theta = ref + 0.7 * jax.random.normal(jax.random.key(42), ref.shape)  # away from the reference
    return hp, pol, ref, theta


def _enumerated(theta_PxLxV):
    """log pi(y|p) of all 16 responses y = (y0, y1), shape P x V x V, and phi, phi' on that grid."""
    logp = jax.nn.log_softmax(theta_PxLxV)
    logp_PxVxV = logp[:, 0, :, None] + logp[:, 1, None, :]
    phi_VxV = jnp.zeros((4, 4)).at[0, :].set(1.0)
    phi_prime_VxV = jnp.zeros((4, 4)).at[:, 1].set(1.0)
    return logp_PxVxV, phi_VxV, phi_prime_VxV


def _expected_reward(theta, w=(4.0, 1.0)):
    logp, phi, phi_prime = _enumerated(theta)
    return jnp.mean(jnp.sum(jnp.exp(logp) * (w[0] * phi + w[1] * phi_prime), (1, 2)))


def _kl(theta, ref):  # KL(pi || ref), averaged over prompts
    logp, logq = _enumerated(theta)[0], _enumerated(ref)[0]
    return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), (1, 2)))


def _reverse_kl(theta, ref):  # KL(ref || pi)
    return _kl(ref, theta)


def _batch_grad(exp, hp, pol, ref, theta, key):
    batch = make_step_batch(exp.static, pol, ref, hp, theta, key)
    return jax.grad(lambda th: loss_fn(exp.static, pol, ref, hp, batch, th)[0])(theta)


def _one_batch_grad(exp, hp, pol, ref, theta, key=None):
    return jax.jit(lambda th, k: _batch_grad(exp, hp, pol, ref, th, k))(theta, key)


def _mc_grad(exp, n=20_000, seed=7):
    """Mean and standard error over n independent batches (keys split from `seed`) of the
    estimator's loss gradient at theta."""
    hp, pol, ref, theta = _setup(exp)
    g_N = jax.jit(jax.vmap(lambda k: _batch_grad(exp, hp, pol, ref, theta, k)))(
        jax.random.split(jax.random.key(seed), n))
    g_N = np.asarray(g_N).reshape(n, -1)
    return g_N.mean(0), g_N.std(0, ddof=1) / np.sqrt(n)


def _assert_mc_matches(mean, se, expected, wrong=None):
    """Every one of the 16 gradient entries within 5 standard errors (a per-entry false alarm rate
    of 6e-7, so < 1e-5 for the test); and, where a plausible wrong answer is given, that the test
    rejects it, so it has the power to see the bias it is about."""
    expected = np.asarray(expected).reshape(-1)
    z = np.abs(mean - expected) / se
    assert z.max() < 5, (z.max(), mean, expected)
    if wrong is not None:
        assert (np.abs(mean - np.asarray(wrong).reshape(-1)) / se).max() > 10


@pytest.mark.parametrize("advantage, factor", [
    ("reinforce", 1.0),  # unbiased
    ("rloo", 1.0),  # unbiased at any G
    ("reinforce_baseline", 7 / 8),  # the batch mean includes the sample itself: (B-1)/B, B = 8
    # the group mean includes the sample itself: (G-1)/G with G = 4; and Dr. GRPO's constant
    # normaliser divides the token sum by L = 2 (seq_mean_token_sum_norm)
    ("dr_grpo", 3 / 4 / 2),
])
def test_monte_carlo_gradient_of_each_baseline_estimator_against_the_exact_gradient(advantage, factor):
    exp = _tiny(f"algo={advantage}", "algo.kl.beta=0")
    theta = _setup(exp)[3]
    true = -jax.grad(_expected_reward)(theta)  # the loss descends on E[4 phi + phi']
    mean, se = _mc_grad(exp)
    _assert_mc_matches(mean, se, factor * true, wrong=None if factor == 1 else true)
    assert se.max() < 0.03 * np.abs(true).max()


def test_grpo_monte_carlo_gradient_is_the_binomial_gain_not_the_population_limit():
    """Binary reward r = phi, success probability p_p per prompt. At G = 4 the expected GRPO gradient
    is mean_p gain(p_p, 4) grad p_p (algos.grpo_binary_gain, a closed-form binomial sum); the
    population limit (exact mode) is mean_p grad p_p / sigma_p. Both are checked."""
    exp = _tiny("algo=grpo", "algo.kl.beta=0", "task.phi_prime.weight=0", "task.phi.weight=1")
    hp, pol, ref, theta = _setup(exp)
    p_P = np.asarray(jax.nn.softmax(theta)[:, 0, 0])
    gain_P = jnp.array([algos.grpo_binary_gain(float(p), 4, 1e-4) for p in p_P])
    sigma_P = jnp.sqrt(p_P * (1 - p_P))
    grad_p = lambda scale_P: -jax.grad(lambda th: jnp.mean(scale_P * jax.nn.softmax(th)[:, 0, 0]))(theta)
    mean, se = _mc_grad(exp)
    _assert_mc_matches(mean, se, grad_p(gain_P), wrong=grad_p(1 / (sigma_P + 1e-4)))
    # the population limit is what exact mode computes
    exact = _one_batch_grad(_tiny("algo=grpo", "algo.kl.beta=0", "task.phi_prime.weight=0", "task.phi.weight=1",
                              "algo.mode=exact"), hp, pol, ref, theta, jax.random.key(0))
    np.testing.assert_allclose(exact, grad_p(1 / (sigma_P + 1e-4)), rtol=1e-4, atol=1e-6)
    # how far finite G is from the limit here: the ratio gain * sigma per prompt (stated in the README)
    assert np.all(np.asarray(gain_P * sigma_P) < 0.95)


@pytest.mark.parametrize("estimator, placement, target", [
    ("k1", "reward", "kl"),  # E[k1 grad log pi] = grad KL(pi || ref)
    ("k2", "loss", "kl"),  # E[grad l^2/2] = E[l grad log pi] = grad KL(pi || ref)
    ("k3", "loss", "reverse"),  # E[(1 - ref/pi) grad log pi] = grad KL(ref || pi): biased for KL(pi || ref)
    ("k1", "loss", "zero"),  # E[grad log pi] = 0
])
def test_kl_estimators_on_policy_gradients(estimator, placement, target):
    exp = _tiny("algo=rloo", "task.phi.weight=0", "task.phi_prime.weight=0", "algo.kl.beta=1",
                f"algo.kl.estimator={estimator}", f"algo.kl.placement={placement}")
    hp, pol, ref, theta = _setup(exp)
    kl = jax.grad(_kl)(theta, ref)
    expected = {"kl": kl, "reverse": jax.grad(_reverse_kl)(theta, ref), "zero": 0 * kl}[target]
    mean, se = _mc_grad(exp)
    _assert_mc_matches(mean, se, expected, wrong=None if target == "kl" else kl)
    if estimator == "k3":
        # The known bias of k3 in the loss, asserted rather than hidden: |grad KL(ref||pi) - grad KL(pi||ref)|
        # is 28% of |grad KL(pi||ref)| at this theta (KL = 0.049). It is second order in the distance to
        # the reference, so relative to the gradient it grows about linearly (README, "Algorithms").
        assert float(_kl(theta, ref)) == pytest.approx(0.0494, abs=1e-3)
        bias = np.linalg.norm(np.asarray(expected - kl)) / np.linalg.norm(np.asarray(kl))
        assert bias == pytest.approx(0.283, abs=0.01)


def test_exact_kl_and_entropy_bonus_give_exact_gradients_from_any_single_batch():
    """For a factorised policy the full-distribution per-token KL and entropy do not depend on
    which tokens were drawn, so one batch already gives grad KL and -grad H exactly."""
    exp = _tiny("task.phi.weight=0", "task.phi_prime.weight=0", "algo.kl.beta=1", "algo.kl.estimator=exact",
                "algo.loss.entropy_coef=0.5")
    hp, pol, ref, theta = _setup(exp)

    def entropy(th):
        logp = _enumerated(th)[0]
        return jnp.mean(-jnp.sum(jnp.exp(logp) * logp, (1, 2)))

    expected = jax.grad(_kl)(theta, ref) - 0.5 * jax.grad(entropy)(theta)
    np.testing.assert_allclose(_one_batch_grad(exp, hp, pol, ref, theta, jax.random.key(3)), expected, rtol=1e-4,
                               atol=1e-6)


def test_skipping_the_entropy_term_when_every_coefficient_is_zero_changes_no_gradient():
    """parse() sets static.entropy_bonus=False when no run has an entropy bonus, and the loss then
    leaves the entropy out: the gradient must be bit-identical to the one with the term at 0."""
    exp = _tiny("algo.kl.estimator=k3")
    assert not exp.static.entropy_bonus
    hp, pol, ref, theta = _setup(exp)
    with_term = dataclasses.replace(exp, static=dataclasses.replace(exp.static, entropy_bonus=True))
    key = jax.random.key(5)
    np.testing.assert_array_equal(_one_batch_grad(exp, hp, pol, ref, theta, key),
                                  _one_batch_grad(with_term, hp, pol, ref, theta, key))


@pytest.mark.parametrize("advantage, scale", [("reinforce", 1.0), ("reinforce_baseline", 1.0), ("rloo", 1.0),
                                               ("dr_grpo", 0.5)])  # 1/L: Dr. GRPO's constant normaliser
def test_exact_mode_gradient_is_the_gradient_of_the_expected_reward(advantage, scale):
    """In the infinite-sample limit every baseline estimator is unbiased (the finite-sample factors
    (B-1)/B and (G-1)/G of the Monte-Carlo test go to 1); with k1 in the reward, grad KL(pi||ref)."""
    exp = _tiny(f"algo={advantage}", "algo.mode=exact", "algo.kl.beta=0.3", "algo.kl.estimator=k1",
                "algo.kl.placement=reward")
    hp, pol, ref, theta = _setup(exp)
    expected = scale * jax.grad(lambda th: -_expected_reward(th) + 0.3 * _kl(th, ref))(theta)
    np.testing.assert_allclose(_one_batch_grad(exp, hp, pol, ref, theta), expected, rtol=1e-4, atol=1e-6)


def test_exact_flow_and_the_mean_of_sampled_runs_agree_over_the_first_steps():
    """RLOO (unbiased) with plain SGD, 400 sampled seeds (seeds 0..399) against the exact flow.
    phi and phi' of the mean sampled run stay within 4 standard errors of the exact trajectory
    over the first 3 steps: the difference is second order in the step (Jensen drift), measured
    below 1.6 SE here. The KL does NOT agree, and that is the point of running both: at step 1
    the sampled runs' KL exceeds the flow's by > 5 SE, because KL(pi||ref) is curved around ref,
    so zero-mean sampling noise in the update adds KL on average (E KL(theta) > KL(E theta))."""
    common = ["algo=rloo", "optim.name=sgd", "optim.lr=0.5", "steps=3", "log_every=1"]
    sampled, exact = _run(_tiny(*common, "seeds=400")), _run(_tiny(*common, "algo.mode=exact"))
    for name in ("phi", "phi_prime"):
        x_TxN, flow_T = sampled.metrics[name][1:], exact.metrics[name][1:, 0]
        se_T = x_TxN.std(1, ddof=1) / np.sqrt(x_TxN.shape[1])
        assert np.all(np.abs(x_TxN.mean(1) - flow_T) < 4 * se_T), (name, x_TxN.mean(1), flow_T, se_T)
    assert exact.metrics["phi"][-1, 0] > exact.metrics["phi"][0, 0] + 0.1  # the flow moves: a real comparison
    kl_N, kl_flow = sampled.metrics["kl"][1], exact.metrics["kl"][1, 0]
    assert kl_N.mean() - kl_flow > 5 * kl_N.std(ddof=1) / np.sqrt(len(kl_N))


def test_inner_epochs_move_the_policy_monotonically_until_clipping_stops_them():
    """Exact mode (no sampling noise), one prompt, reward = [good token at position 0], clipped loss,
    SGD: each epoch on the same batch, old log-probs fixed, raises P(good) until every token's ratio
    is outside the clip range in its advantage's direction; then the gradient vanishes and the policy
    stops. Clipping is per token, not a bound on the policy: the good token's ratio ends far past
    1 + eps_high (1.82 with eps = 0.2), because the bad tokens keep being pushed down until theirs
    fall below 1 - eps_low."""
    exp = _tiny("algo=reinforce_baseline", "algo.mode=exact", "task.prompts=1", "algo.kl.beta=0",
                "task.phi_prime.weight=0", "algo.loss.kind=clip", "algo.loss.eps_low=0.2",
                "algo.loss.eps_high=0.2", "optim.name=sgd", "optim.lr=0.1")
    hp, pol, ref, _ = _setup(exp)
    batch = jax.jit(lambda th: make_step_batch(exp.static, pol, ref, hp, th, None))(ref)
    step = jax.jit(lambda carry: inner_epoch(exp.static, pol, ref, hp, batch, carry))
    carry = (ref, make_optimizer(exp.static, hp).init(ref))
    probs_ExV = [np.asarray(jax.nn.softmax(ref)[0, 0])]  # position 0 of the one prompt
    for _ in range(40):
        carry, (loss, grad_norm, aux) = step(carry)
        probs_ExV.append(np.asarray(jax.nn.softmax(carry[0])[0, 0]))
    ratio_ExV = np.array(probs_ExV) / probs_ExV[0]
    good_E = ratio_ExV[:, 0]
    assert np.all(np.diff(good_E) >= 0) and np.all(np.diff(good_E[:10]) > 0)  # monotone, moving at first
    assert good_E[-1] == good_E[-2] and float(grad_norm) < 1e-6  # stopped
    assert good_E[-1] > 1.2 and np.all(ratio_ExV[-1, 1:] < 0.8)  # every token clipped in its direction
    assert float(aux["clip_frac"]) == pytest.approx(0.5)  # position 0's tokens; position 1 had A = 0
    np.testing.assert_allclose(jax.nn.softmax(carry[0])[0, 1], jax.nn.softmax(ref)[0, 1], rtol=1e-5)


@pytest.mark.parametrize("estimator", ["k1", "k3", "exact"])
def test_kl_sampled_is_the_batch_kl_whether_the_step_or_the_statistics_compute_it(estimator):
    """With the KL in the reward the step needs each response's KL; in the loss only the logged
    kl_sampled metric does, so the batch leaves it to batch_statistics. Both give the weighted
    batch mean of the estimator summed over tokens, computed here from the tables by hand. On the
    same batch (one program less to build), TRL's statistics by hand: _check_trl_statistics."""
    got = {}
    for placement in ("loss", "reward"):
        if placement == "reward" and estimator == "exact":
            continue  # not a valid combination (the exact per-token KL is a loss term)
        exp = _tiny(f"algo.kl.placement={placement}", f"algo.kl.estimator={estimator}", "algo.group_size=16")
        hp, pol, ref, theta = _setup(exp)
        batch = make_step_batch(exp.static, pol, ref, hp, theta, jax.random.key(5))
        assert (batch.kl_B is None) == (placement == "loss")
        zero_E = jnp.zeros(1)
        stats = batch_statistics(exp.static, pol, ref, hp, theta, batch, zero_E, zero_E, {"clip_frac": zero_E})
        got[placement] = float(stats["kl_sampled"])
        if estimator == "k1" and placement == "loss":
            _check_trl_statistics(exp, hp, theta, batch, stats)
        logp, logq = jax.nn.log_softmax(theta), jax.nn.log_softmax(ref)  # P x L x V tables
        if estimator == "exact":
            tok_BxL = jnp.sum(jnp.exp(logp) * (logp - logq), -1)[batch.prompts_B]
        else:
            at = lambda t: t[batch.prompts_B[:, None], jnp.arange(2), batch.tokens_BxL]  # noqa: E731
            d = at(logp) - at(logq)
            tok_BxL = d if estimator == "k1" else jnp.exp(-d) - 1 + d
        assert got[placement] == pytest.approx(float(jnp.mean(jnp.sum(tok_BxL, -1))), rel=1e-5)
    if "reward" in got:
        assert got["loss"] == pytest.approx(got["reward"], rel=1e-6)


def test_per_token_quantities_from_the_marginals_table_equal_the_teacher_forced_path():
    """The factorised shortcut (f on the P x L x V table, then gathered) and the general path
    (f on each response's teacher-forced logits) give the same entropy."""
    exp = _tiny()
    hp, pol, ref, theta = _setup(exp)
    prompts_B, tokens_BxL = jnp.array([0, 1, 1]), jnp.array([[0, 1], [2, 3], [1, 1]])
    fast = per_token_BxL(pol, algos.entropy_BxL, (theta,), prompts_B, tokens_BxL)
    general = per_token_BxL(pol._replace(marginals=None), algos.entropy_BxL, (theta,), prompts_B, tokens_BxL)
    np.testing.assert_allclose(fast, general, rtol=1e-6)
    assert fast.shape == (3, 2)


def _check_trl_statistics(exp, hp, theta, batch, m):
    """TRL's rewards/<name>/std, reward_std, entropy and frac_reward_zero_std as sim logs them
    (phi_std_sampled, ..., entropy_sampled): the batch's spreads of each reward and of the total,
    pi_old's entropy per token, and the share of prompt groups of one total reward."""
    phi, phi_prime = np.asarray(batch.phi_B, np.float64), np.asarray(batch.phi_prime_B, np.float64)
    reward = float(hp["w_phi"]) * phi + float(hp["w_phi_prime"]) * phi_prime
    for name, x in (("phi", phi), ("phi_prime", phi_prime), ("reward", reward)):
        assert float(m[f"{name}_std_sampled"]) == pytest.approx(np.std(x), rel=1e-5, abs=1e-7), name
    logp = jax.nn.log_softmax(theta)  # P x L x V table; every response has L valid tokens
    entropy_PxL = -jnp.sum(jnp.exp(logp) * logp, -1)
    assert float(m["entropy_sampled"]) == pytest.approx(float(jnp.mean(entropy_PxL[batch.prompts_B])), rel=1e-5)
    groups = reward.reshape(exp.static.task.prompts, -1)
    assert float(m["frac_reward_zero_std"]) == np.mean(np.ptp(groups, -1) == 0)
