"""The gradient decomposition (sim/rl/decomposition.py) against values written out by hand.

The tiny tabular task of tests/rl/test_step.py: P=2 prompts, L=2 tokens over V=4; phi = [token 0 at
position 0], phi' = [token 1 at position 1]; RLOO (unbiased at any G, population-centred in exact
mode), the KL as k3 in the loss (its expected gradient is grad KL(ref || pi)). The referee is
jax.grad of the enumerated expectations, written in that test file from the logits table alone:
u = grad E[phi], v = grad E[phi'], so the expected update's parts along v are
4<u, v>, 1<v, v> and -beta<grad KL(ref||pi), v>.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim.rl import decomposition
from sim.rl.step import make_step_batch
from tests.rl.test_step import _enumerated, _reverse_kl, _setup, _tiny

BETA = 2.0


def _referee(theta, ref):
    logp, phi, phi_prime = _enumerated(theta)
    expect = lambda r: jnp.mean(jnp.sum(jnp.exp(logp) * r, (1, 2)))  # noqa: E731
    u = jax.grad(lambda th: jnp.mean(jnp.sum(jnp.exp(_enumerated(th)[0]) * phi, (1, 2))))(theta)
    v = jax.grad(lambda th: jnp.mean(jnp.sum(jnp.exp(_enumerated(th)[0]) * phi_prime, (1, 2))))(theta)
    assert float(expect(phi)) > 0  # (uses expect: the grid is the task's)
    kl = jax.grad(_reverse_kl)(theta, ref)
    dot = lambda a, b: float(jnp.vdot(a, b))  # noqa: E731
    return {"dphi_prime_by_phi": 4 * dot(u, v), "dphi_prime_by_phi_prime": dot(v, v),
            "dphi_prime_by_kl": -BETA * dot(kl, v), "dphi_by_phi": 4 * dot(u, u), "dphi_by_phi_prime": dot(v, u),
            "dphi_by_kl": -BETA * dot(kl, u), "cos_grad_phi_phi_prime": dot(u, v) / np.sqrt(dot(u, u) * dot(v, v))}


def _metrics(exp, hp, pol, ref, theta, key):
    batch_key, grad_key = jax.random.split(key)
    batch = make_step_batch(exp.static, pol, ref, hp, theta, batch_key)
    return decomposition.metrics(exp.static, pol, ref, hp, theta, batch, grad_key)


OVERRIDES = ("algo=rloo", f"algo.kl.beta={BETA}", "algo.kl.estimator=k3", "algo.kl.placement=loss")


def test_exact_mode_gives_the_exact_decomposition():
    exp = _tiny(*OVERRIDES, "algo.mode=exact")
    hp, pol, ref, theta = _setup(exp)
    got = jax.jit(lambda k: _metrics(exp, hp, pol, ref, theta, k))(jax.random.key(0))
    want = _referee(theta, ref)
    for name in decomposition.METRICS:
        assert float(got[name]) == pytest.approx(want[name], rel=1e-4, abs=1e-6), name
    assert abs(want["dphi_prime_by_kl"]) > 1e-4 and want["cos_grad_phi_phi_prime"] != 0  # the test can see each term


def test_sampled_decomposition_is_unbiased_for_the_exact_one():
    """Mean over n = 20,000 independent (batch, gradient batch) pairs within 5 standard errors of the
    referee, for each of the six inner products (a per-metric false alarm rate of 6e-7). The cosine is
    left out: a ratio of noisy norms, it is biased toward 0 by sampling noise (documented)."""
    exp = _tiny(*OVERRIDES)
    hp, pol, ref, theta = _setup(exp)
    n = 20_000
    got = jax.jit(jax.vmap(lambda k: _metrics(exp, hp, pol, ref, theta, k)))(jax.random.split(jax.random.key(5), n))
    want = _referee(theta, ref)
    for name in decomposition.METRICS[:-1]:
        x = np.asarray(got[name], np.float64)
        z = abs(x.mean() - want[name]) / (x.std(ddof=1) / np.sqrt(n))
        assert z < 5, (name, x.mean(), want[name], z)


def test_the_terms_add_up_to_the_whole_updates_first_order_change():
    """<-grad loss, v> with the whole advantage and the KL equals the sum of the three terms."""
    from sim.rl.step import loss_fn
    exp = _tiny(*OVERRIDES, "algo.mode=exact")
    hp, pol, ref, theta = _setup(exp)
    batch = make_step_batch(exp.static, pol, ref, hp, theta, jax.random.key(0))
    whole = -jax.grad(lambda th: loss_fn(exp.static, pol, ref, hp, batch, th)[0])(theta)
    v = decomposition.expectation_gradients(exp.static, pol, theta, jax.random.key(1), batch)[1]
    got = decomposition.metrics(exp.static, pol, ref, hp, theta, batch, jax.random.key(1))
    total = sum(float(got[f"dphi_prime_by_{t}"]) for t in decomposition.TERMS)
    assert total == pytest.approx(float(jnp.vdot(whole, v)), rel=1e-5)
