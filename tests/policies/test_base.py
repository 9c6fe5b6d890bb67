import jax
import jax.numpy as jnp
import numpy as np

from sim.policies.base import cdf_table, factorised, prompt_major, sample_inverse_cdf, token_log_probs


def test_sampling_frequencies_match_teacher_forced_probabilities():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 4))
    pol = factorised(init=lambda: logits, logits_fn=lambda x: x)
    n = 100_000
    prompts = prompt_major(2, n)
    tokens = pol.sample(logits, jax.random.key(1), n)
    freq = np.stack([np.stack([np.bincount(np.asarray(tokens[p * n:(p + 1) * n, t]), minlength=4) / n
                               for t in range(3)]) for p in range(2)])
    np.testing.assert_allclose(freq, jax.nn.softmax(logits), atol=0.006)  # > 3 std errors at n=1e5
    # log_probs read the same table the samples came from
    lp = pol.log_probs(logits, prompts[:5], tokens[:5])
    expect = jax.nn.log_softmax(logits)[0, jnp.arange(3), tokens[:5]]
    np.testing.assert_allclose(lp, expect, rtol=1e-6)


def test_token_log_probs_read_each_tokens_own_prompt_and_position():
    logits = jax.random.normal(jax.random.key(0), (3, 4, 5))
    logp = np.asarray(jax.nn.log_softmax(logits))
    prompts_B = jnp.array([2, 0, 2, 1])  # any order: log-probs do not need a prompt-major batch
    tokens_BxL = jax.random.randint(jax.random.key(1), (4, 4), 0, 5)
    expect = [[logp[p, t, tokens_BxL[b, t]] for t in range(4)] for b, p in enumerate(prompts_B.tolist())]
    np.testing.assert_allclose(token_log_probs(logits, prompts_B, tokens_BxL), np.array(expect), rtol=1e-6)


def test_cdf_table_is_the_cumulative_softmax_vocab_major_and_samples_like_the_minor_axis_layout():
    logits = jax.random.normal(jax.random.key(0), (3, 4, 5))
    cdf_PxLxV = jnp.cumsum(jax.nn.softmax(logits), -1)
    np.testing.assert_allclose(cdf_table(logits), jnp.moveaxis(cdf_PxLxV, -1, 0), rtol=1e-6)
    # the sampler reads a cdf along any axis with the same uniforms: the same tokens either way
    key = jax.random.key(2)
    np.testing.assert_array_equal(sample_inverse_cdf(key, cdf_PxLxV),
                                  sample_inverse_cdf(key, jnp.moveaxis(cdf_PxLxV, -1, 0), axis=0))


def test_inverse_cdf_never_draws_zero_probability_tokens_and_hits_the_edges():
    logits = jnp.array([[-jnp.inf, 0.0, -jnp.inf, 0.0], [0.0, -jnp.inf, -jnp.inf, -jnp.inf],
                        [-jnp.inf, -jnp.inf, -jnp.inf, 0.0]])
    tok = sample_inverse_cdf(jax.random.key(0), jnp.cumsum(jax.nn.softmax(jnp.repeat(logits, 5000, 0)), -1))
    counts = [np.bincount(np.asarray(tok[i * 5000:(i + 1) * 5000]), minlength=4) for i in range(3)]
    assert counts[0][0] == counts[0][2] == 0 and abs(counts[0][1] - 2500) < 250  # 7 std errors
    assert counts[1][0] == 5000 and counts[2][3] == 5000
