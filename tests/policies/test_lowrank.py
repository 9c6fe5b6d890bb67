import jax
import jax.numpy as jnp
import numpy as np

from sim.policies import lowrank
from sim.tasks.toy import RewardSpec, Task

TASK = Task(prompts=64, length=4, vocab=6, phi=RewardSpec((0, 1), (0,)), phi_prime=RewardSpec((2, 3), (1,)))


def test_starts_exactly_at_the_reference():
    ref = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (64, 4, 6)))
    feats = lowrank.features_PxLxD(TASK, 3, jnp.float32(0.0), jax.random.key(1))
    pol = lowrank.make(ref, feats)
    np.testing.assert_array_equal(pol.marginals(pol.init()), ref)


def test_logits_are_the_reference_plus_features_times_W():
    ref = jax.random.normal(jax.random.key(0), (64, 4, 6))
    feats = lowrank.features_PxLxD(TASK, 3, jnp.float32(0.0), jax.random.key(1))
    W = jax.random.normal(jax.random.key(2), (3, 6))
    expect = np.asarray(ref) + np.einsum("pld,dv->plv", np.asarray(feats), np.asarray(W))
    np.testing.assert_allclose(lowrank.make(ref, feats).marginals(W), expect, rtol=1e-5, atol=1e-6)


def _phi_phi_prime_cosine(overlap):
    f = np.asarray(lowrank.features_PxLxD(TASK, 8, jnp.float32(overlap), jax.random.key(2)))
    a, b = f[:, [0, 1]].reshape(-1, 8), f[:, [2, 3]].reshape(-1, 8)
    return np.mean(np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))


def test_overlap_makes_phi_prime_features_follow_phi_features():
    # random features: paired cosines average ~0 (128 pairs, std of the mean ~ 0.03)
    assert abs(_phi_phi_prime_cosine(0.0)) < 0.12
    assert _phi_phi_prime_cosine(0.8) > 0.6
    assert _phi_phi_prime_cosine(1.0) > 0.999


def test_width_controls_sharing():
    ref = jnp.zeros((64, 4, 6))
    for width, shared in ((4, True), (512, False)):
        feats = lowrank.features_PxLxD(TASK, width, jnp.float32(0.0), jax.random.key(3))
        pol = lowrank.make(ref, feats)
        # push one phi slot's token 0 up; see how much another prompt's phi_prime slot moves
        g = jax.grad(lambda W: pol.marginals(W)[0, 0, 0])(pol.init())
        moved = np.abs(np.asarray(pol.marginals(pol.init() + g) - ref)[1:, 2:, 0]).mean()
        assert (moved > 0.1) == shared, (width, moved)
