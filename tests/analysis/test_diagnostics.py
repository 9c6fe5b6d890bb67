import itertools

import jax
import jax.numpy as jnp
import numpy as np

from sim.rl import algos
from sim.analysis import diagnostics as D
from sim.tasks import toy as T


def test_quadrant_fractions_and_advantages_match_a_direct_count():
    phi = np.array([[1.0, 0.5, 0.5, 0.0],     # mean 0.5: up, tie, tie, down
                    [0.25, 0.25, 0.25, 0.25],  # all at the mean: nobody is up
                    [0.0, 1.0, 0.0, 1.0]])
    phi_prime = np.array([[0.0, 1.0, 0.5, 0.5],  # mean 0.5: down, up, tie, tie
                          [1.0, 0.0, 0.0, 0.0],
                          [1.0, 1.0, 0.0, 0.0]])
    adv = np.arange(12.0).reshape(3, 4) - 5
    counts, sums = {}, {}
    for p, g in itertools.product(range(3), range(4)):
        side = lambda x, m: "u" if x > m else "d" if x < m else "t"  # noqa: E731; the means here are exact
        cell = side(phi[p, g], phi[p].mean()) + side(phi_prime[p, g], phi_prime[p].mean())
        counts[cell] = counts.get(cell, 0) + 1
        sums[cell] = sums.get(cell, 0.0) + adv[p, g]
    out = D.quadrant_metrics(jnp.array(phi), jnp.array(phi_prime), jnp.array(adv), jnp.full((3, 4), 1 / 12))
    for q in D.CELLS:
        np.testing.assert_allclose(float(out[f"quad_frac_{q}"]), counts.get(q, 0) / 12, rtol=1e-6)
        if q in counts:
            np.testing.assert_allclose(float(out[f"quad_adv_{q}"]), sums[q] / counts[q], rtol=1e-6, atol=1e-6)
        else:
            assert np.isnan(out[f"quad_adv_{q}"])
    # by hand: group 0 ud tu tt dt, group 1 tu td td td, group 2 du uu dd ud (ties in either reward)
    assert counts == {"ud": 2, "tu": 2, "tt": 1, "dt": 1, "td": 3, "du": 1, "uu": 1, "dd": 1}


def test_ties_at_the_group_mean_are_ties_despite_rounding():
    thirds = jnp.full((1, 6), 1.0 / 3.0)  # a group mean of thirds may differ from 1/3 by an ulp
    out = D.quadrant_metrics(thirds, thirds, jnp.zeros((1, 6)), jnp.full((1, 6), 1 / 6))
    assert float(out["quad_frac_tt"]) == 1.0


def test_advantage_split_attributes_variance_by_weight_squared_for_orthogonal_rewards():
    """Within a group phi = [1,1,0,0] and phi_prime = [1,0,1,0] are orthogonal after centring, so
    for adv = 4 dphi + dphi' the shares are 16/17 and 1/17."""
    phi = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    phi_prime = jnp.array([[1.0, 0.0, 1.0, 0.0]])
    adv = 4 * (phi - 0.5) + (phi_prime - 0.5)
    w = jnp.full((1, 4), 0.25)
    out = D.advantage_split(phi, phi_prime, adv, w)
    np.testing.assert_allclose([out["adv_share_phi"], out["adv_share_phi_prime"]], [16 / 17, 1 / 17], rtol=1e-6)
    flat = D.advantage_split(phi, phi_prime, jnp.zeros_like(phi), w)
    assert float(flat["adv_share_phi"]) == 0.0  # no advantage variance: nothing to attribute
    const = D.advantage_split(phi, jnp.ones_like(phi), 4 * (phi - 0.5), w)  # phi_prime never varies
    np.testing.assert_allclose([const["adv_share_phi"], const["adv_share_phi_prime"]], [1.0, 0.0], atol=1e-6)


TASK = T.Task(prompts=3, length=3, vocab=4, phi=T.RewardSpec((0, 1), (0,), "mean"),
              phi_prime=T.RewardSpec((2,), (1, 2), "all"))


def test_joint_pmf_matches_enumeration_of_every_response():
    logits = jax.random.normal(jax.random.key(3), (3, 3, 4))
    values_J, values_K, joint = jax.jit(D.joint_pmf, static_argnums=0)(TASK, logits)
    vj, vk, joint = D.collapse(values_J, values_K, joint)
    tokens = jnp.array(list(itertools.product(range(4), repeat=3)))
    phi, phi_prime = (np.asarray(r) for r in T.rewards_B(TASK, tokens))
    logp = np.asarray(jnp.sum(jax.nn.log_softmax(logits)[:, jnp.arange(3), tokens], -1))  # P x 64
    expected = np.zeros_like(joint)
    for b in range(len(tokens)):
        expected[np.searchsorted(vj, phi[b]), np.searchsorted(vk, phi_prime[b])] += np.exp(logp[:, b]).mean()
    np.testing.assert_allclose(joint, expected, rtol=1e-5)


def test_orthogonality_of_an_independent_and_a_dependent_joint():
    v = np.array([0.0, 1.0])
    independent = np.outer([0.3, 0.7], [0.6, 0.4])
    out = D.orthogonality(v, v, independent)
    assert abs(out["corr"]) < 1e-12 and out["support_pairs"] == out["value_pairs"] == 4
    coupled = np.array([[0.5, 0.0], [0.0, 0.5]])  # phi' = phi: corr 1, half the pairs unreachable
    out = D.orthogonality(v, v, coupled)
    assert np.isclose(out["corr"], 1.0) and out["support_pairs"] == 2 and out["min_pair_prob"] == 0.0


def test_the_reference_is_orthogonal_and_only_prompt_difficulty_correlates_rewards():
    """Within a prompt the rewards are independent, so the correlation is the across-prompt
    covariance of the per-prompt means: exactly zero without competence spread."""
    @jax.jit
    def reference(spread):
        logits = T.reference_logits_PxLxV(TASK, (jnp.float32(0.3), jnp.float32(0.6)), spread)
        return D.joint_pmf(TASK, logits), T.expected_rewards_P(TASK, logits)

    out = D.orthogonality(*reference(jnp.float32(0.0))[0])
    assert abs(out["corr"]) < 1e-6 and out["support_pairs"] == out["value_pairs"] == 3 * 2
    joint, means = reference(jnp.float32(2.0))
    m, mp = (np.asarray(x, np.float64) for x in means)
    var_within = m * (1 - m) / 2, mp * (1 - mp)  # mean of 2 Bernoullis; one Bernoulli ('all' of one position)
    var = [np.mean(v + x**2) - np.mean(x) ** 2 for v, x in zip(var_within, (m, mp))]
    expected = (np.mean(m * mp) - m.mean() * mp.mean()) / np.sqrt(var[0] * var[1])
    assert abs(expected) > 0.05
    np.testing.assert_allclose(D.orthogonality(*joint)["corr"], expected, rtol=1e-4)


def test_weights_act_as_repeated_samples():
    """Exact mode weights responses by probability: weights (2, 1, 1)/4 must give what the
    batch with the first response drawn twice gives at uniform weights."""
    phi, phi_prime, adv = jnp.array([[1.0, 0.0, 0.5]]), jnp.array([[0.0, 1.0, 1.0]]), jnp.array([[1.5, -1.0, 0.2]])
    weighted = D.batch_metrics(phi, phi_prime, adv, jnp.array([[0.5, 0.25, 0.25]]), phi + phi_prime)
    rep = lambda x: jnp.concatenate([x[:, :1], x], 1)
    repeated = D.batch_metrics(rep(phi), rep(phi_prime), rep(adv), jnp.full((1, 4), 0.25), rep(phi + phi_prime))
    for k in D.BATCH_METRICS:
        np.testing.assert_allclose(weighted[k], repeated[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_frac_reward_zero_std_counts_the_groups_where_grpo_learns_nothing():
    """A hand-built batch of 4 prompt groups of 4 (r = phi + phi_prime): all right, mixed, one
    constant total from different parts (phi and phi_prime trade off), and mixed again. Two
    groups have zero spread, and there, exactly, GRPO's advantage is 0."""
    phi = jnp.array([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.5]])
    phi_prime = jnp.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    w = jnp.full((4, 4), 1 / 16)
    m = D.batch_metrics(phi, phi_prime, jnp.zeros((4, 4)), w, phi + phi_prime)
    assert float(m["frac_reward_zero_std"]) == 0.5
    adv = algos.advantages_PxG("grpo", jnp.stack([phi, phi_prime], -1), jnp.ones(2))
    adv = np.asarray(adv)
    assert np.all(adv[[0, 2]] == 0) and np.all(np.any(adv[[1, 3]] != 0, -1))
    # exact mode: a prompt whose other rewards have probability 0 has no spread; a tiny one does
    w_exact = jnp.array([[0.5, 0.5, 0.0], [0.5, 0.499, 0.001]]) / 2
    r = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert float(D.frac_zero_std(r, w_exact)) == 0.5


def test_a_tie_is_its_own_cell_neither_up_nor_down():
    """phi' is the same for every sample of the group (a binary phi' every sample gets right): no
    sample is above or below its group's mean, so none is in a 'd' column. The blog's table used
    to count these as phi' down (Delta v <= 0)."""
    phi = jnp.array([[1.0, 0.0, 1.0, 0.0]])
    out = D.quadrant_metrics(phi, jnp.ones((1, 4)), jnp.zeros((1, 4)), jnp.full((1, 4), 0.25))
    assert float(out["quad_frac_ud"]) == 0.0 and float(out["quad_frac_dd"]) == 0.0
    assert float(out["quad_frac_ut"]) == 0.5 and float(out["quad_frac_dt"]) == 0.5
    assert sum(float(out[f"quad_frac_{c}"]) for c in D.CELLS) == 1.0
