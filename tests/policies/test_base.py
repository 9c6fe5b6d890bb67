import jax
import jax.numpy as jnp
import numpy as np

from sim.policies.base import factorised


def test_sampling_frequencies_match_teacher_forced_probabilities():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 4))
    pol = factorised(init=lambda: logits, logits_fn=lambda x: x)
    n = 100_000
    prompts = jnp.repeat(jnp.arange(2), n)
    tokens = pol.sample(logits, jax.random.key(1), prompts)
    freq = np.stack([np.stack([np.bincount(np.asarray(tokens[p * n:(p + 1) * n, t]), minlength=4) / n
                               for t in range(3)]) for p in range(2)])
    np.testing.assert_allclose(freq, jax.nn.softmax(logits), atol=0.006)  # > 3 std errors at n=1e5
    # log_probs read the same table the samples came from
    lp = pol.log_probs(logits, prompts[:5], tokens[:5])
    expect = jax.nn.log_softmax(logits)[0, jnp.arange(3), tokens[:5]]
    np.testing.assert_allclose(lp, expect, rtol=1e-6)
