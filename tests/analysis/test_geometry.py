from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from sim.analysis import geometry as G
from sim.tasks import toy as T
from sim.config import parse
from sim.rl.sweep import expand
from tests.conftest import SMALL, compose_plain


def bernoulli_kl(a, p):
    return a * np.log(a / p) + (1 - a) * np.log((1 - a) / (1 - p))


def brute_force_cost(q_PxJ: np.ndarray, r_J: np.ndarray, delta: float) -> float:
    """min over per-prompt distributions pi_p of mean_p KL(pi_p || q_p) s.t. mean_p E_pi_p[R] =
    mean_p E_q_p[R] + delta, by SLSQP over the probabilities themselves (no tilt assumed; the
    problem is convex in pi, so a local minimum is the minimum)."""
    P, J = q_PxJ.shape
    target = np.mean(q_PxJ @ r_J) + delta

    def kl(x):
        p = np.maximum(x.reshape(P, J), 1e-300)
        return np.sum(p * (np.log(p) - np.log(q_PxJ))) / P, ((np.log(p) - np.log(q_PxJ) + 1) / P).ravel()

    cons = [{"type": "eq", "fun": lambda x: np.mean(x.reshape(P, J) @ r_J) - target,
             "jac": lambda x: np.tile(r_J / P, P)},
            {"type": "eq", "fun": lambda x: x.reshape(P, J).sum(1) - 1,
             "jac": lambda x: np.kron(np.eye(P), np.ones(J))}]
    res = optimize.minimize(kl, q_PxJ.ravel(), jac=True, constraints=cons, bounds=[(1e-12, 1)] * (P * J),
                            method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
    assert res.success, res.message
    return res.fun


kl_cost = jax.jit(G.kl_cost)


# A tiny world: 2 prompts of unequal difficulty, L=3, V=3, so V^L = 27 responses per prompt.
TINY = T.Task(prompts=2, length=3, vocab=3, phi=T.RewardSpec((0, 1), (0,), "mean"),
              phi_prime=T.RewardSpec((2,), (1,), "mean"))


@partial(jax.jit, static_argnums=0)
def tiny_pmfs(task: T.Task):
    """phi's (values, pmf) by enumerating every response and by the DP, under a reference with
    competence 0.4 and prompts of unequal difficulty."""
    logits = T.reference_logits_PxLxV(task, (jnp.float32(0.4), jnp.float32(0.6)), jnp.float32(1.0))
    return G.enumerated_pmf_PxJ(task, 0, logits), G.policy_pmfs(task, logits)[0]


@pytest.mark.parametrize("shape", ["mean", "all"])
@pytest.mark.parametrize("delta", [0.1, -0.08])
def test_tilt_equals_brute_force_minimum_kl_on_a_tiny_space(shape, delta):
    task = T.Task(TINY.prompts, TINY.length, TINY.vocab, T.RewardSpec((0, 1), (0,), shape), TINY.phi_prime)
    (values_J, pmf_PxJ), (dp_values, dp_pmf) = tiny_pmfs(task)  # J = 27 responses; the DP's J = 3 counts
    brute = brute_force_cost(np.asarray(pmf_PxJ, np.float64), np.asarray(values_J, np.float64), delta)
    by_enumeration = float(kl_cost(values_J, pmf_PxJ, jnp.float32(delta)))
    by_dp = float(kl_cost(dp_values, dp_pmf, jnp.float32(delta)))
    assert brute > 1e-3
    np.testing.assert_allclose([by_enumeration, by_dp], brute, rtol=2e-3)


def test_dp_pmf_matches_enumeration():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 3))
    (values_J, pmf_PxJ), (enum_values, enum_pmf) = jax.jit(
        lambda x: (G.policy_pmfs(TINY, x)[0], G.enumerated_pmf_PxJ(TINY, 0, x)))(logits)
    for j, v in enumerate(np.asarray(values_J)):
        np.testing.assert_allclose(pmf_PxJ[:, j], np.sum(np.where(enum_values == v, enum_pmf, 0.0), 1), rtol=1e-5)


# One prompt, one position: the reward is a single Bernoulli(c) behaviour.
BERNOULLI = T.Task(prompts=1, length=2, vocab=4, phi=T.RewardSpec((0,), (0,)), phi_prime=T.RewardSpec((1,), (1,)))
COMPETENCES = np.array([0.08, 0.2, 0.45, 0.49, 0.51, 0.55, 0.8, 0.93])


@pytest.mark.parametrize("delta", [0.02, 0.05])
def test_single_bernoulli_kappa_matches_closed_form_and_exceeds_one_iff_competence_above_half(delta):
    gain, loss = G.reference_costs(BERNOULLI, 0, jnp.asarray(COMPETENCES, jnp.float32), jnp.float32(0.0),
                                   jnp.array([delta], jnp.float32))
    kappa = np.asarray(gain[:, 0] / loss[:, 0])
    closed = bernoulli_kl(COMPETENCES + delta, COMPETENCES) / bernoulli_kl(COMPETENCES - delta, COMPETENCES)
    np.testing.assert_allclose(kappa, closed, rtol=1e-3)
    np.testing.assert_array_equal(kappa > 1, COMPETENCES > 0.5)


def test_mean_of_independent_positions_has_the_bernoulli_kappa():
    """For shape 'mean' over K positions of equal competence, the tilt moves every position by
    delta, so C(delta) = K * KL(c + delta || c) and kappa is the single Bernoulli's."""
    task = T.Task(prompts=3, length=4, vocab=6, phi=T.RewardSpec((0, 1, 2), (0,)), phi_prime=T.RewardSpec((3,), (1,)))
    gain, loss = G.reference_costs(task, 0, jnp.array([0.3], jnp.float32), jnp.float32(0.0), jnp.array([0.05]))
    np.testing.assert_allclose(float(gain[0, 0]), 3 * bernoulli_kl(0.35, 0.3), rtol=1e-3)
    np.testing.assert_allclose(float(loss[0, 0]), 3 * bernoulli_kl(0.25, 0.3), rtol=1e-3)


@pytest.mark.parametrize("phi_prime_positions", [(4, 5, 6, 7), (4,)])
def test_policy_kappas_are_each_rewards_own_kappa(phi_prime_positions):
    """Both rewards' kappas are solved in one vmapped loop when their pmfs have one shape, and one
    after the other when not: either way each is the kappa of its own reward's pmf (to 1e-4: a
    solve may take a step more or less in the shared loop, and each C is a difference of terms
    ~20x larger than itself, so float32 leaves kappa ~1e-5 of precision)."""
    task = T.Task(16, 8, 16, T.RewardSpec((0, 1, 2, 3), (0, 1, 2, 3)), T.RewardSpec(phi_prime_positions, (4, 5)))
    logits_PxLxV = T.reference_logits_PxLxV(task, (0.2, 0.9), 1.0)
    delta = jnp.float32(0.05)
    got = jax.jit(G.policy_kappas, static_argnums=0)(task, logits_PxLxV, delta)
    for name, (values_J, pmf_PxJ) in zip(T.REWARDS, G.policy_pmfs(task, logits_PxLxV)):
        np.testing.assert_allclose(float(got[f"kappa_{name}"]), float(jax.jit(G.kappa)(values_J, pmf_PxJ, delta)),
                                   rtol=1e-4)


@pytest.mark.parametrize("shape", ["mean", "all"])
def test_the_root_solver_hits_the_target_shift_across_the_reachable_range(shape):
    """Competences 0.01-0.99 with and without prompt spread; deltas from 0.001 to 0.999 of the
    way to the lowest / highest reward. The shift must be within kl_cost's own tolerance,
    1e-3 |delta| + 1e-7 (the 1e-7: float32 rounding of a mean near 1)."""
    task = T.Task(16, 8, 16, T.RewardSpec((0, 1, 2, 3), (0, 1, 2, 3), shape), T.RewardSpec((4,), (4,)))
    fractions = jnp.array([-0.999, -0.9, -0.5, -0.01, -0.001, 0.001, 0.01, 0.5, 0.9, 0.999])

    @jax.jit
    def relative_miss(c, spread):
        values_J, pmf_PxJ = G.policy_pmfs(task, T.reference_logits_PxLxV(task, (c, c), spread))[0]
        m = jnp.mean(pmf_PxJ @ values_J)
        delta_F = jnp.where(fractions > 0, fractions * (1 - m), fractions * m)
        shift_F = jax.vmap(lambda d: G._tilt(values_J, jnp.log(pmf_PxJ), G.tilt_lambda(values_J, pmf_PxJ, d))[0])(delta_F)
        return jnp.abs(shift_F - delta_F) / (1e-3 * jnp.abs(delta_F) + 1e-7)

    miss = jax.vmap(jax.vmap(relative_miss, (0, None)), (None, 0))(
        jnp.array([0.01, 0.2, 0.5, 0.8, 0.99]), jnp.array([0.0, 2.0]))
    assert float(jnp.max(miss)) <= 1.0


def test_unreachable_moves_cost_infinity():
    values_J, pmf_PxJ = jnp.array([0.0, 1.0]), jnp.array([[0.97, 0.03]])
    assert np.isinf(kl_cost(values_J, pmf_PxJ, jnp.float32(-0.05)))  # below the minimum reward
    assert float(jax.jit(G.kappa)(values_J, pmf_PxJ, jnp.float32(0.05))) == 0.0
    assert np.isinf(kl_cost(values_J, pmf_PxJ, jnp.float32(0.98)))


@pytest.mark.parametrize("target", [0.6, 1.8])
def test_target_kappa_round_trips_through_the_solver(target):
    """Checked against the closed form: phi_prime is a mean over positions of equal competence,
    so its kappa is the single Bernoulli's (test above). Spread is exercised by the root test."""
    exp = parse(compose_plain(SMALL + [f"task.phi_prime.kappa={target}", "task.kappa_delta=0.05"]))
    c = exp.hparams["competence_phi_prime"]
    assert (c > 0.5) == (target > 1)
    np.testing.assert_allclose(bernoulli_kl(c + 0.05, c) / bernoulli_kl(c - 0.05, c), target, rtol=1e-3)
    assert expand(exp).hparams_R["competence_phi_prime"][0] == np.float32(c)  # expand resolves the same way
    assert exp.hparams["competence_phi"] == 0.2  # phi has no target: its competence stands


def test_unreachable_target_kappa_names_the_range():
    """The bounds are the Bernoulli's: a loss of 0.05 from c = 0.05 gives KL(0.1||0.05) / -log(0.95)
    = 0.403; a gain from c = 0.95 gives -log(0.95) / KL(0.9||0.95) = 2.49."""
    with pytest.raises(ValueError, match=r"between 0\.40\d* and 2\.4[89]\d*"):
        G.competence_for_kappa(BERNOULLI, 0, 3.0, 0.05, 0.0)


def test_family_cost_of_tabular_is_the_tilt(small):
    """The tilt of shape 'mean' moves each position's logits on its own, so the tabular family
    contains it and the family's constrained optimum must find the tilt's cost (a check of the
    augmented Lagrangian; that a shared-parameter family costs more is checked in test_experiment)."""
    from sim.rl.train import build_policy

    exp = small("policy=tabular")
    hp = {k: jnp.float32(v) for k, v in exp.hparams.items()}

    @jax.jit
    def costs(delta_D):
        policy = build_policy(exp.static, hp, jax.random.key(0))
        family_D, shift_D = G.family_kl_cost(exp.static.task, 0, policy, delta_D)
        values_J, pmf_PxJ = G.policy_pmfs(exp.static.task, policy.marginals(policy.init()))[0]
        return family_D, shift_D, jax.vmap(lambda d: G.kl_cost(values_J, pmf_PxJ, d))(delta_D)

    deltas = jnp.array([0.05, -0.05, 0.15, -0.15])
    family, shift, tilt = costs(deltas)
    np.testing.assert_allclose(shift, deltas, rtol=1e-3)
    np.testing.assert_allclose(family, tilt, rtol=2e-3)


# kappa from samples. A factorised toy reference with prompts of unequal difficulty (spread 0.5):
# phi (mean over 4 positions, competence 0.2) and phi_prime (all of 4 positions, competence 0.9).
SAMPLED = T.Task(prompts=4, length=8, vocab=8, phi=T.RewardSpec((0, 1, 2, 3), (0, 1), "mean"),
                 phi_prime=T.RewardSpec((4, 5, 6, 7), (2, 3), "all"))


@partial(jax.jit, static_argnums=0)
def sampled_vs_exact(samples: int, sample_competence, seeds_R):
    """Per reward (phi, phi_prime) and seed: (sampled kappa, its bootstrap error) from `samples`
    reference responses per prompt drawn at competence (c, 1 - c / 2), and per reward the exact
    tilt kappa of the reference at competence (0.2, 0.9)."""
    delta, spread = jnp.float32(0.05), jnp.float32(0.5)
    ref = T.reference_logits_PxLxV(SAMPLED, (jnp.float32(0.2), jnp.float32(0.9)), spread)
    exact_2 = jnp.stack([G.kappa(*G.reward_pmf_PxJ(spec, T.good_prob_PxK(spec, ref)), delta) for spec in SAMPLED.specs])
    logits = T.reference_logits_PxLxV(SAMPLED, (sample_competence, 1 - sample_competence / 2), spread)

    def one(seed):
        tokens = jax.random.categorical(jax.random.key(seed), logits[:, None], shape=(4, samples, 8))
        r_2xPxS = jnp.stack(T.rewards_B(SAMPLED, tokens.reshape(-1, 8))).reshape(2, 4, samples)
        keys = jax.random.split(jax.random.key(1000 + seed))
        return jax.vmap(lambda k, r: G.bootstrap_kappa(k, r, delta, 100))(keys, r_2xPxS)

    return jax.vmap(one)(seeds_R), exact_2


def test_sampled_kappa_matches_the_exact_tilt_kappa_within_its_error_bar():
    """Statistic: z = (sampled kappa - exact kappa) / bootstrap standard error (100 resamples), per
    reward for 4 seeds (0-3) of 2048 samples per prompt (phi: mean shape; phi_prime: all). The
    estimator is a smooth function of sample means, so z is close to N(0, 1) (|z| <= 2.8 over 36
    seed x reward draws while writing this test); the error bar itself is estimated to ~7%, so
    |z| < 4.5 is at least a 4-sigma bound: P(any of 8 fails) < 1e-3. The estimator's bias is
    O(1/S), ~1e-4 here, far below the error bar (~4e-3 for phi, ~1.5e-3 for phi_prime). Power: the
    error bar is < 1% of kappa, and samples of a reference at competence (0.3, 0.85) instead miss
    the exact kappa by more than 10 error bars (16-21 measured)."""
    (k_Rx2, se_Rx2), exact_2 = sampled_vs_exact(2048, jnp.float32(0.2), jnp.arange(4))
    k_Rx2, se_Rx2, exact_2 = np.asarray(k_Rx2), np.asarray(se_Rx2), np.asarray(exact_2)
    assert np.all(np.isfinite(k_Rx2)) and np.all(se_Rx2 < 0.01 * exact_2)
    z_Rx2 = (k_Rx2 - exact_2) / se_Rx2
    assert np.all(np.abs(z_Rx2) < 4.5), z_Rx2
    (k_Rx2, se_Rx2), _ = sampled_vs_exact(2048, jnp.float32(0.3), jnp.arange(4))
    assert np.all(np.abs(np.asarray(k_Rx2) - exact_2) > 10 * np.asarray(se_Rx2))
