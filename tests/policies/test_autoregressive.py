"""The three neural families behind autoregressive.make: incremental decoding equals the
teacher-forced pass, sampling follows the teacher-forced probabilities, outputs are causal."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sim import policies
from sim.policies import autoregressive as ar
from sim.tasks.toy import RewardSpec, Task

TASK = Task(prompts=2, length=3, vocab=3, phi=RewardSpec((0,), (0,)), phi_prime=RewardSpec((1, 2), (1,)))
ARCHS = {
    "mlp": ar.Arch("mlp", d_model=8, hidden=16, layers=2, window=1),
    "gru": ar.Arch("gru", d_model=8, hidden=16),
    "transformer-learned": ar.Arch("transformer", d_model=8, hidden=16, layers=2, heads=2, positions="learned"),
    "transformer-rope": ar.Arch("transformer", d_model=8, hidden=16, layers=2, heads=2, positions="rope"),
}


def _policy(name, task=TASK, seed=0):
    net = policies.net(ARCHS[name], task)
    params = net.init(jax.random.key(seed))
    return net, params, ar.make(net, params, task)


@pytest.mark.parametrize("name", ARCHS)
def test_incremental_decoding_equals_the_full_forward_pass(name):
    task = Task(prompts=3, length=6, vocab=5, phi=TASK.phi, phi_prime=TASK.phi_prime)
    net, params, pol = _policy(name, task)
    prompts_B = jnp.array([0, 2, 1, 2])
    tokens_BxL = jax.random.randint(jax.random.key(1), (4, 6), 0, 5)

    @jax.jit
    def both(tokens_BxL):
        ids_BxL = ar.input_ids_BxL(task, prompts_B, tokens_BxL)
        step = lambda state, it: net.step(params, state, it[0], it[1])
        _, steps_LxBxV = jax.lax.scan(step, net.start(params, 4), (ids_BxL.T, jnp.arange(6)))
        return jnp.swapaxes(steps_LxBxV, 0, 1), pol.token_logits(params, prompts_B, tokens_BxL)

    incremental_BxLxV, full_BxLxV = both(tokens_BxL)
    np.testing.assert_allclose(incremental_BxLxV, full_BxLxV, atol=1e-5)
    # causal: changing the last token changes no output (output t reads ids up to t = tokens < t)
    changed = tokens_BxL.at[:, -1].set((tokens_BxL[:, -1] + 1) % 5)
    np.testing.assert_array_equal(both(changed)[1], full_BxLxV)


def test_sampling_frequencies_match_teacher_forced_probabilities():
    """For each family, 2 prompts x 20k samples (seed 1) over the 27 responses per prompt: a chi-square
    goodness-of-fit test against exp(sum_t log_probs) at p > 1e-4 (the seeds are fixed, so this either
    always passes or always fails; a correct sampler fails it with probability 1e-4 per prompt)."""
    n = 20_000
    all_27x3 = jnp.array(list(itertools.product(range(3), repeat=3)))
    for name in ARCHS:
        _, params, pol = _policy(name)
        log_probs, sample = jax.jit(pol.log_probs), jax.jit(pol.sample, static_argnums=2)
        for p in range(2):
            logp_27 = jnp.sum(log_probs(params, jnp.full(27, p), all_27x3), -1)
            prob_27 = np.asarray(jnp.exp(logp_27), np.float64)
            np.testing.assert_allclose(prob_27.sum(), 1.0, rtol=1e-5)
            # the distribution is not a product of its marginals: the test covers prefix-dependence
            marg = [np.bincount(all_27x3[:, t], prob_27, 3) for t in range(3)]
            assert np.abs(prob_27 - np.prod([m[all_27x3[:, t]] for t, m in enumerate(marg)], 0)).max() > 1e-3
            tokens = np.asarray(sample(params, jax.random.key(1), n))[p * n:(p + 1) * n]  # prompt-major
            counts = np.bincount(tokens @ np.array([9, 3, 1]), minlength=27)
            pvalue = stats.chisquare(counts, prob_27 / prob_27.sum() * n).pvalue
            assert pvalue > 1e-4, (name, p, pvalue)
