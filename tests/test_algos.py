import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim import algos

R = jnp.array([[1.0, 0.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0]])


def test_reinforce_is_the_reward():
    np.testing.assert_allclose(algos.advantages_PxG("reinforce", R), R)


def test_reinforce_baseline_subtracts_the_batch_mean():
    # batch mean = (4 + 8) / 8 = 1.5
    np.testing.assert_allclose(algos.advantages_PxG("reinforce_baseline", R),
                               [[-0.5, -1.5, -1.5, 1.5], [0.5, 0.5, 0.5, 0.5]])


def test_rloo_subtracts_the_mean_of_the_others():
    # first group: others' means are 1, 4/3, 4/3, 1/3
    np.testing.assert_allclose(algos.advantages_PxG("rloo", R),
                               [[0.0, -4 / 3, -4 / 3, 8 / 3], [0, 0, 0, 0]], rtol=1e-6, atol=1e-6)


def test_grpo_divides_by_the_bessel_corrected_group_std():
    # first group: mean 1, sample std sqrt((0 + 1 + 1 + 4) / 3) = sqrt(2)
    s = np.sqrt(2.0)
    adv = algos.advantages_PxG("grpo", R, eps=0.0)
    np.testing.assert_allclose(adv[0], [0.0, -1 / s, -1 / s, 2 / s], rtol=1e-6, atol=1e-7)
    # a group with identical rewards gets zero advantage (eps keeps it finite)
    np.testing.assert_allclose(algos.advantages_PxG("grpo", R, eps=1e-4)[1], 0.0)


def test_kl_estimators_match_hand_values():
    logp, logq = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    lr = np.log(2.0)
    assert float(algos.kl_B("k1", logp, logq)[0]) == pytest.approx(lr)
    assert float(algos.kl_B("k2", logp, logq)[0]) == pytest.approx(0.5 * lr**2)
    assert float(algos.kl_B("k3", logp, logq)[0]) == pytest.approx(0.5 - 1 + lr)


def test_kl_estimator_means_against_the_exact_kl():
    """Samples from pi over 3 positions x 4 tokens; exact KL = sum of per-position KLs.
    k1 and k3 are unbiased for KL(pi||ref); k2 is not, but is close when pi is near ref."""
    key_p, key_q, key_s = jax.random.split(jax.random.key(0), 3)
    logits_q = jax.random.normal(key_q, (3, 4))
    logits_p = logits_q + 0.3 * jax.random.normal(key_p, (3, 4))
    logp, logq = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
    exact = float(jnp.sum(jnp.exp(logp) * (logp - logq)))
    n = 400_000
    tok = jax.random.categorical(key_s, logits_p, shape=(n, 3))
    lp = jnp.take_along_axis(jnp.broadcast_to(logp, (n, 3, 4)), tok[..., None], -1)[..., 0]
    lq = jnp.take_along_axis(jnp.broadcast_to(logq, (n, 3, 4)), tok[..., None], -1)[..., 0]
    for name in ("k1", "k3"):
        est = np.asarray(algos.kl_B(name, lp, lq))
        se = est.std() / np.sqrt(n)
        assert abs(est.mean() - exact) < 5 * se, (name, est.mean(), exact, se)  # 5 standard errors
    k2 = float(np.asarray(algos.kl_B("k2", lp, lq)).mean())
    # k2 agrees to second order only: here KL = 0.088 and k2 overshoots by about 11% (measured).
    assert exact < k2 < 1.25 * exact


def test_policy_gradient_loss_gradient_is_advantage_weighted_score():
    theta = jnp.array([0.2, -0.1, 0.4])
    tokens = jnp.array([[0], [2], [2]])
    adv = jnp.array([1.0, -0.5, 2.0])
    grad = jax.grad(lambda t: algos.policy_gradient_loss(
        jnp.take_along_axis(jnp.broadcast_to(jax.nn.log_softmax(t), (3, 3)), tokens, -1), adv))(theta)
    p = jax.nn.softmax(theta)
    score = jnp.eye(3)[tokens[:, 0]] - p
    np.testing.assert_allclose(grad, -jnp.mean(adv[:, None] * score, 0), rtol=1e-5)
