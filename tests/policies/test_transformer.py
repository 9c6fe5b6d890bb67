"""The transformer's rotary positions: a rotation (norms kept) whose query-key products depend on
the positions only through their difference."""
import jax
import numpy as np

from sim.policies.transformer import rope


def test_rope_keeps_norms_and_attention_depends_on_relative_position_only():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))  # B x T x H x K, one position each
    rot = lambda x, pos: np.asarray(rope(x, np.array([pos], np.float32), 10000.0))[0, 0, 0]  # noqa: E731
    np.testing.assert_allclose(np.linalg.norm(rot(q, 5.0)), np.linalg.norm(np.asarray(q)), rtol=1e-5)
    scores = [rot(q, a + shift) @ rot(k, b + shift) for a, b in ((3.0, 1.0),) for shift in (0.0, 4.0, 11.0)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4)
    assert not np.isclose(rot(q, 3.0) @ rot(k, 1.0), rot(q, 1.0) @ rot(k, 3.0))  # the sign of the offset matters
