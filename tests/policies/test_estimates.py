"""Expectations of non-factorised policies: enumeration is exact, Monte Carlo is within its error bar."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from sim import policies
from sim.policies import estimates
from sim.analysis import geometry
from sim.tasks import toy as task_lib
from sim.policies import autoregressive as ar, tabular
from sim.tasks.toy import RewardSpec, Task

# phi is dense (mean), phi_prime sparse (all), so both estimators of a reward are exercised
TASK = Task(prompts=3, length=3, vocab=3, phi=RewardSpec((0, 1), (0,), "mean"),
            phi_prime=RewardSpec((2,), (1, 2), "all"))
W = (4.0, 1.0)


def _numpy_truth(logits_PxLxV, ref_logits_PxLxV):
    """Exact expectations of a factorised policy, by brute force over all 27 responses in numpy."""
    lp = np.asarray(jax.nn.log_softmax(logits_PxLxV), np.float64)
    lq = np.asarray(jax.nn.log_softmax(ref_logits_PxLxV), np.float64)
    out = {k: 0.0 for k in estimates.NAMES}
    for p, y in itertools.product(range(3), itertools.product(range(3), repeat=3)):
        logp = sum(lp[p, t, y[t]] for t in range(3))
        prob = np.exp(logp) / 3
        phi, phi_prime = np.mean([y[0] == 0, y[1] == 0]), float(y[2] in (1, 2))
        for k, v in (("phi", phi), ("phi_prime", phi_prime), ("reward", W[0] * phi + W[1] * phi_prime),
                     ("kl", logp - sum(lq[p, t, y[t]] for t in range(3))), ("entropy", -logp)):
            out[k] += prob * v
    return out


def _metrics(policy, params, ref_params, samples, enumerate_max, seed=0, marginals=False):
    f = jax.jit(lambda p, q, k: estimates.sequence_metrics(TASK, policy, p, q, W, k, samples, enumerate_max))
    out, good_prob_PxK = f(params, ref_params, jax.random.key(seed))
    out = {k: float(v) for k, v in out.items()}
    return (out, good_prob_PxK) if marginals else out


def test_factorised_policy_enumeration_is_exact_and_rao_blackwellised_monte_carlo_has_no_noise_where_it_should_not():
    logits, ref = jax.random.normal(jax.random.key(0), (2, 3, 3, 3))
    pol = tabular.make(ref)
    truth = _numpy_truth(logits, ref)
    enum, enum_good = _metrics(pol, logits, ref, samples=2, enumerate_max=27, marginals=True)
    mc, mc_good = _metrics(pol, logits, ref, samples=4096, enumerate_max=0, marginals=True)
    for k in estimates.NAMES:
        np.testing.assert_allclose(enum[k], truth[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the per-position good-token probabilities are the marginals, exactly, by either route; so
    # the kappa logged for networks reduces to the factorised one here
    for spec, e_PxK, m_PxK in zip(TASK.specs, enum_good, mc_good):
        expected_PxK = task_lib.good_prob_PxK(spec, logits)
        np.testing.assert_allclose(e_PxK, expected_PxK, rtol=1e-5)
        np.testing.assert_allclose(m_PxK, expected_PxK, rtol=1e-5)
    # spill (phi's good token 0 at phi_prime's position 2) is a marginal too: both routes give the
    # factorised value, which test_task checks by hand
    expected_spill = float(jnp.mean(task_lib.spill_P(TASK, logits)))
    np.testing.assert_allclose([enum["spill"], mc["spill"]], expected_spill, rtol=1e-5)
    delta = jnp.float32(0.05)
    kappas = geometry.marginal_kappas(TASK, enum_good, delta)
    for name, value in geometry.policy_kappas(TASK, logits, delta).items():
        np.testing.assert_allclose(kappas[name], value, rtol=1e-4)
    # positions independent: the conditional along any prefix is the marginal, so the
    # Rao-Blackwellised estimates of the mean-shaped phi, of KL and of entropy are exact
    for k in ("phi", "kl", "entropy"):
        np.testing.assert_allclose(mc[k], truth[k], rtol=1e-5, err_msg=k)
        assert mc[k + "_se"] < 1e-5, k
    # the all-shaped phi_prime uses indicators: within 4 standard errors (seed 0; 6e-5 two-sided)
    assert mc["phi_prime_se"] > 1e-3
    assert abs(mc["phi_prime"] - truth["phi_prime"]) < 4 * mc["phi_prime_se"]


def test_monte_carlo_is_within_its_error_bars_of_enumeration_for_an_autoregressive_policy():
    """A random 2-layer transformer (prefix-dependent): every estimate within 4 of its standard
    errors of the enumerated value (seed 0, 512 samples per prompt; 5 checks at 6e-5 each)."""
    arch = ar.Arch("transformer", d_model=8, hidden=16, layers=2, heads=2, positions="learned")
    net = policies.net(arch, TASK)
    params, ref = net.init(jax.random.key(0)), net.init(jax.random.key(1))
    pol = ar.make(net, ref, TASK)
    enum = _metrics(pol, params, ref, samples=2, enumerate_max=27)
    mc = _metrics(pol, params, ref, samples=512, enumerate_max=26)
    assert estimates.enumerates(TASK, 27) and not estimates.enumerates(TASK, 26)
    assert not any(k.endswith("_se") for k in enum)
    for k in estimates.NAMES:
        assert mc[k + "_se"] > 0, k
        assert abs(mc[k] - enum[k]) < 4 * mc[k + "_se"], (k, mc[k], enum[k], mc[k + "_se"])
    assert enum["kl"] > 0.05  # two different networks


def test_joint_count_pmf_sums_to_one_and_its_monte_carlo_frequencies_match_enumeration():
    """The joint of (good tokens at phi's positions, at phi_prime's) under a random GRU: 3 x 2 cells;
    2000 samples per prompt (seed 0): each frequency within 0.03 of the exact probability (the
    largest binomial standard deviation of a mean over 6000 draws is 0.0065, so 0.03 is > 4.5 se)."""
    arch = ar.Arch("gru", d_model=8, hidden=16)
    net = policies.net(arch, TASK)
    params = net.init(jax.random.key(0))
    pol = ar.make(net, params, TASK)
    f = jax.jit(lambda n, limit: estimates.joint_count_pmf(TASK, pol, params, jax.random.key(0), n, limit),
                static_argnums=(0, 1))
    exact, sampled = np.asarray(f(2, 27)), np.asarray(f(2000, 0))
    assert exact.shape == (3, 2) and abs(exact.sum() - 1) < 1e-5 and abs(sampled.sum() - 1) < 1e-5
    np.testing.assert_allclose(sampled, exact, atol=0.03)


def test_rao_blackwellised_phi_of_a_real_model_equals_the_plain_monte_carlo_mean_within_its_error():
    """A `mean`-shaped token-class reward of a (tiny, random) real model: the Rao-Blackwellised
    estimate (each sampled prefix's probability of a good token, averaged) against the plain
    indicator mean of the same 3 x 1024 responses. The statistic: the per-response difference
    (indicator - RB) has mean 0 (the RB term is the indicator's conditional expectation given the
    prefix), so |mean diff| < 4 of its standard errors (a false alarm rate of 6e-5). And the RB
    estimate's per-response variance is below the indicator's (it is a conditional expectation)."""
    from sim.lm import model
    from tests.policies.tiny_pretrained import CFG, _frozen, _policy, _static

    shared = _frozen(model.init_params(CFG, jax.random.key(0)))
    static = _static()
    policy = _policy(static, shared)
    params = policy.init()
    S = 1024
    out, _ = jax.jit(lambda p, k: estimates._monte_carlo(
        static.task, policy, p, p, (4.0, 1.0), k, S, keep_samples=True))(params, jax.random.key(3))
    phi_rb = float(out["phi"])
    indicator_B = np.asarray(out["sample_phi"], np.float64)
    # the bar: the indicator mean's own standard error (conservative: the two share their samples)
    se = indicator_B.std(ddof=1) / np.sqrt(indicator_B.size)
    assert abs(indicator_B.mean() - phi_rb) < 4 * se, (indicator_B.mean(), phi_rb, se)
    assert float(out["phi_se"]) < se  # the RB estimate's own error bar is the smaller one
