"""Hand-computed values for every estimator, KL estimator, aggregation mode and the clipped loss."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim.rl import algos

R = jnp.array([[1.0, 0.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0]])  # P=2 prompts x G=4 samples, one reward


def adv(name, rewards_PxG=R, eps=0.0, **kw):
    return np.asarray(algos.advantages_PxG(name, rewards_PxG[..., None], jnp.ones(1), eps, **kw))


def test_reinforce_is_the_reward():
    np.testing.assert_allclose(adv("reinforce"), R)


def test_reinforce_baseline_subtracts_the_batch_mean():
    # batch mean = (4 + 8) / 8 = 1.5
    np.testing.assert_allclose(adv("reinforce_baseline"), [[-0.5, -1.5, -1.5, 1.5], [0.5, 0.5, 0.5, 0.5]])


def test_rloo_subtracts_the_mean_of_the_others():
    # first group: others' means are 1, 4/3, 4/3, 1/3
    np.testing.assert_allclose(adv("rloo"), [[0.0, -4 / 3, -4 / 3, 8 / 3], [0, 0, 0, 0]], rtol=1e-6, atol=1e-6)


def test_grpo_divides_by_the_bessel_corrected_group_std():
    # first group: mean 1, sample std sqrt((0 + 1 + 1 + 4) / 3) = sqrt(2)
    s = np.sqrt(2.0)
    np.testing.assert_allclose(adv("grpo")[0], [0.0, -1 / s, -1 / s, 2 / s], rtol=1e-6, atol=1e-7)
    # a group with identical rewards gets zero advantage (eps keeps it finite)
    np.testing.assert_allclose(adv("grpo", eps=1e-4)[1], 0.0)


def test_dr_grpo_only_subtracts_the_group_mean():
    np.testing.assert_allclose(adv("dr_grpo"), [[0.0, -1.0, -1.0, 2.0], [0, 0, 0, 0]], atol=1e-7)


def test_reinforce_pp_whitens_over_the_batch():
    # batch mean 1.5; squared deviations sum to 0.25 + 2.25*3 + 0.25*4 = 8; Bessel std sqrt(8/7)
    dev = np.array([[-0.5, -1.5, -1.5, 1.5], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(adv("reinforce_pp"), dev / np.sqrt(8 / 7), rtol=1e-6)


def test_reinforce_pp_baseline_whitens_the_group_centred_reward():
    # d = r - group mean = [0,-1,-1,2 | 0,0,0,0]; mean 0; squares sum to 6; Bessel std sqrt(6/7)
    d = np.array([[0.0, -1.0, -1.0, 2.0], [0, 0, 0, 0]])
    np.testing.assert_allclose(adv("reinforce_pp_baseline"), d / np.sqrt(6 / 7), rtol=1e-6, atol=1e-7)


# Two prompts x 2 samples x (phi, phi_prime). Group A: (1,0) vs (0,0); group B: (1,1) vs (0,0).
PHI_PAIRS = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])


@pytest.mark.parametrize("w, gdpo_expected", [
    # w = (1, 1). GDPO: group A: z_phi = +-1/sqrt2, z_phi' = 0 (zero std) -> x = +-0.7071;
    # group B: both +-1/sqrt2 -> x = +-1.4142. Batch: mean 0, Bessel var (0.5+0.5+2+2)/3 = 5/3.
    ((1.0, 1.0), np.array([[0.7071068, -0.7071068], [1.4142136, -1.4142136]]) / np.sqrt(5 / 3)),
    # w = (4, 1): x_A = +-4/sqrt2 = +-2.8284, x_B = +-5/sqrt2 = +-3.5355; Bessel var (8+8+12.5+12.5)/3 = 41/3.
    ((4.0, 1.0), np.array([[2.8284271, -2.8284271], [3.5355339, -3.5355339]]) / np.sqrt(41 / 3)),
])
def test_gdpo_separates_reward_combinations_that_grpo_merges(w, gdpo_expected):
    """GRPO sums first: both groups are 'one response better by a constant' -> +-1/sqrt2 each, so
    getting phi alone and getting both phi and phi' earn the same advantage. GDPO tells them apart."""
    grpo = algos.advantages_PxG("grpo", PHI_PAIRS, jnp.array(w), 1e-8)
    np.testing.assert_allclose(grpo, [[0.7071068, -0.7071068]] * 2, rtol=1e-5)
    gdpo = algos.advantages_PxG("gdpo", PHI_PAIRS, jnp.array(w), 1e-8)
    np.testing.assert_allclose(gdpo, gdpo_expected, rtol=1e-5)
    assert abs(gdpo[1, 0]) > abs(gdpo[0, 0]) + 0.1


def test_summed_estimators_see_only_the_weighted_sum():
    w = jnp.array([4.0, 1.0])
    for name in ("reinforce", "reinforce_baseline", "rloo", "grpo", "dr_grpo", "reinforce_pp", "reinforce_pp_baseline"):
        np.testing.assert_allclose(algos.advantages_PxG(name, PHI_PAIRS, w),
                                   algos.advantages_PxG(name, (PHI_PAIRS @ w)[..., None], jnp.ones(1)), rtol=1e-6)


# Population statistics: prompt 0 has rewards (1, 0) with probabilities (1/4, 3/4); prompt 1 (1, 0) w.p. (1/2, 1/2).
R_POP = jnp.array([[1.0, 0.0], [1.0, 0.0]])
U_POP = jnp.array([[0.25, 0.75], [0.5, 0.5]])
POPULATION = {
    # mu = (0.25, 0.5), sigma = (sqrt(3)/4, 1/2)
    "grpo": [[0.75 / (3**0.5 / 4), -0.25 / (3**0.5 / 4)], [1.0, -1.0]],
    "rloo": [[0.75, -0.25], [0.5, -0.5]],  # leaving one out of infinitely many: r - mu_p
    "dr_grpo": [[0.75, -0.25], [0.5, -0.5]],
    "reinforce_baseline": [[0.625, -0.375], [0.625, -0.375]],  # batch mean (0.25 + 0.5)/2
    # batch mean 0.375; var = mean(0.25*0.625^2 + 0.75*0.375^2, 0.5*0.625^2 + 0.5*0.375^2) = 0.234375
    "reinforce_pp": [[0.625 / 0.234375**0.5, -0.375 / 0.234375**0.5]] * 2,
    # d = r - mu_p; var = mean(0.25*0.75^2 + 0.75*0.25^2, 0.25) = 0.21875
    "reinforce_pp_baseline": [[0.75 / 0.21875**0.5, -0.25 / 0.21875**0.5], [0.5 / 0.21875**0.5, -0.5 / 0.21875**0.5]],
}


@pytest.mark.parametrize("name", sorted(POPULATION))
def test_population_statistics_are_expectations_under_u(name):
    np.testing.assert_allclose(adv(name, R_POP, u_PxG=U_POP), POPULATION[name], rtol=1e-5)


def test_grpo_binary_gain_hand_values():
    # G=2: the only informative group is one success and one failure, A = +-1/sqrt2, whatever p.
    for p in (0.1, 0.5, 0.8):
        assert algos.grpo_binary_gain(p, 2, eps=0.0) == pytest.approx(2**-0.5)
    # G=3, p=1/2: a(1) = 1/4 * (2/3)/sqrt(1/3) + 1/2 * (1/3)/sqrt(1/3) = 1/sqrt3 and a(0) = -a(1)
    assert algos.grpo_binary_gain(0.5, 3, eps=0.0) == pytest.approx(2 / 3**0.5)
    # large G approaches the population limit 1/sigma = 1/sqrt(p(1-p))
    assert algos.grpo_binary_gain(0.3, 2000, eps=0.0) == pytest.approx(1 / math.sqrt(0.21), rel=2e-3)


def test_kl_estimators_match_hand_values():
    logp, logq = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    lr = np.log(2.0)
    assert float(algos.kl_B("k1", logp, logq)[0]) == pytest.approx(lr)
    assert float(algos.kl_B("k2", logp, logq)[0]) == pytest.approx(0.5 * lr**2)
    assert float(algos.kl_B("k3", logp, logq)[0]) == pytest.approx(0.5 - 1 + lr)


def test_exact_token_kl_and_entropy_read_the_full_distribution():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    logits, ref = jnp.log(jnp.array(p))[None, None], jnp.log(jnp.array(q))[None, None]
    dummy = jnp.zeros((1, 1))  # the exact KL does not depend on the sampled token
    kl = float(algos.kl_BxL("exact", dummy, dummy, logits, ref)[0, 0])
    assert kl == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))  # = 0.25 log 2
    assert float(algos.entropy_BxL(logits)[0, 0]) == pytest.approx(1.5 * np.log(2))


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


def test_aggregation_modes_differ_by_the_constant_factors_of_fixed_length():
    x_BxL = jax.random.normal(jax.random.key(1), (6, 5))
    w_B = jnp.full(6, 1 / 6)
    agg = {m: float(algos.aggregate(x_BxL, m, w_B)) for m in algos.AGGREGATIONS}
    assert agg["token_mean"] == pytest.approx(float(jnp.mean(x_BxL)), rel=1e-5)
    assert agg["seq_mean_token_mean"] == pytest.approx(float(jnp.mean(jnp.mean(x_BxL, -1))), rel=1e-5)
    assert agg["seq_mean_token_sum"] == pytest.approx(5 * agg["token_mean"], rel=1e-5)
    assert agg["seq_mean_token_sum_norm"] == pytest.approx(agg["token_mean"], rel=1e-5)  # L_max = L
    # Dr. GRPO's normaliser is a constant: a longer budget only rescales
    assert float(algos.aggregate(x_BxL, "seq_mean_token_sum_norm", w_B, max_length=20)) == pytest.approx(
        agg["seq_mean_token_sum"] / 20, rel=1e-5)
    # probability weights (exact mode) are honoured: all weight on response 2
    one = jnp.zeros(6).at[2].set(1.0)
    assert float(algos.aggregate(x_BxL, "seq_mean_token_sum", one)) == pytest.approx(float(jnp.sum(x_BxL[2])), rel=1e-5)


def _clip_grad(ratio, adv_B, eps_low=0.2, eps_high=0.2):
    """d loss / d log pi for one token per response, at the given ratios pi/pi_old."""
    logp_old = jnp.zeros((len(ratio), 1))
    logp = jnp.log(jnp.array(ratio))[:, None]
    w = jnp.full(len(ratio), 1.0)  # unit weights: the gradient is -ratio * A where unclipped
    f = lambda lp: algos.policy_loss("clip", "seq_mean_token_sum", w, lp, logp_old, jnp.array(adv_B), eps_low, eps_high)[0]
    return np.asarray(jax.jit(jax.grad(f))(logp))[:, 0]


def test_ratios_outside_the_clip_range_give_no_gradient_in_the_clipped_direction():
    #                  A>0 above  A>0 below  A<0 below  A<0 above
    g = _clip_grad([1.3, 0.7, 0.7, 1.3], [1.0, 1.0, -1.0, -1.0])
    # A>0 and ratio > 1+eps: raising pi further is clipped -> 0; below the range it still pulls up (-ratio*A)
    # A<0 and ratio < 1-eps: lowering further is clipped -> 0; above the range it still pushes down
    np.testing.assert_allclose(g, [0.0, -0.7, 0.0, 1.3], rtol=1e-6)


def test_asymmetric_clip_range_eps_high_above_eps_low():
    # eps_low = 0.2, eps_high = 0.28 (DAPO's clip-higher): 1.25 is inside for A>0, 0.79 outside for A<0
    g = _clip_grad([1.25, 0.79, 1.29, 0.81], [1.0, -1.0, 1.0, -1.0], eps_low=0.2, eps_high=0.28)
    np.testing.assert_allclose(g, [-1.25, 0.0, 0.0, 0.81], rtol=1e-6)


def test_clip_and_pg_have_the_same_gradient_on_policy_and_kl_entropy_enter_with_their_signs():
    k = jax.random.split(jax.random.key(2), 4)
    logp = jax.random.normal(k[0], (5, 3)) - 2.0
    adv_B, kl, ent = jax.random.normal(k[1], (5,)), jax.random.uniform(k[2], (5, 3)), jax.random.uniform(k[3], (5, 3))
    w = jnp.full(5, 0.2)

    def loss(kind, lp, kl_coef=0.0, ent_coef=0.0):
        return algos.policy_loss(kind, "seq_mean_token_mean", w, lp, logp, adv_B, 0.2, 0.2, kl_coef, kl, ent_coef, ent)[0]

    grads = jax.jit(lambda lp: (jax.grad(lambda x: loss("clip", x))(lp), jax.grad(lambda x: loss("pg", x))(lp)))
    np.testing.assert_allclose(*grads(logp), rtol=1e-6)
    extra = jax.jit(lambda lp: loss("pg", lp, 0.5, 0.1) - loss("pg", lp))(logp)
    assert float(extra) == pytest.approx(float(jnp.mean(0.5 * kl - 0.1 * ent)), rel=1e-5)


# ---- response masks (a real model's responses end at EOS): sim/algos.aggregate and policy_loss ----

def _masked_batch():
    """B=4 responses of L=5 tokens, ending after 5, 2, 1 and 3 tokens; values after the end are
    huge, inf or NaN, so that any leak shows."""
    x_BxL = jax.random.normal(jax.random.key(7), (4, 5))
    mask_BxL = jnp.arange(5)[None, :] < jnp.array([5, 2, 1, 3])[:, None]
    junk_BxL = jnp.where(jnp.arange(20).reshape(4, 5) % 3 == 0, jnp.inf, jnp.nan)
    return jnp.where(mask_BxL, x_BxL, junk_BxL), mask_BxL


def test_masked_aggregations_equal_their_definitions_over_the_valid_tokens():
    x_BxL, mask_BxL = _masked_batch()
    x, m = np.asarray(jnp.where(mask_BxL, x_BxL, 0.0), np.float64), np.asarray(mask_BxL, np.float64)
    B, L = x.shape
    w_B = jnp.full(B, 1.0 / B)
    expected = {  # written from the definitions (TRL's bnpo / grpo losses, Dr. GRPO's constant)
        "token_mean": x.sum() / m.sum(),
        "seq_mean_token_mean": np.mean(x.sum(1) / m.sum(1)),
        "seq_mean_token_sum": np.mean(x.sum(1)),
        "seq_mean_token_sum_norm": x.sum() / (B * L),
    }
    for mode, want in expected.items():
        got = float(algos.aggregate(x_BxL, mode, w_B, mask_BxL=mask_BxL))
        assert got == pytest.approx(want, rel=1e-6), mode


def test_an_all_true_mask_gives_the_mask_free_numbers():
    """The toy families pass no mask (their code path is the old one, bit for bit); an all-True
    mask gives the same numbers: bit-identical for the sums, within float32 rounding (1e-6) for the means
    (XLA turns a division by the constant L into a multiplication, a division by the count not)."""
    x_BxL = jax.random.normal(jax.random.key(3), (8, 6))
    w_B = jnp.full(8, 1.0 / 8)
    ones = jnp.ones(x_BxL.shape, bool)
    for mode in algos.AGGREGATIONS:
        a, b = float(algos.aggregate(x_BxL, mode, w_B)), float(algos.aggregate(x_BxL, mode, w_B, mask_BxL=ones))
        assert a == b if "sum" in mode else a == pytest.approx(b, rel=1e-6, abs=0), mode
    logp, old = -jnp.abs(x_BxL), -jnp.abs(x_BxL) + 0.1
    adv_B = jnp.linspace(-1, 1, 8)
    for kind in algos.LOSSES:
        for mode in algos.AGGREGATIONS:
            loss = lambda m: algos.policy_loss(kind, mode, w_B, logp, old, adv_B, 0.2, 0.2, 0.1, x_BxL ** 2, 0.01,  # noqa: E731
                                               x_BxL, m)
            (a, aux_a), (b, aux_b) = loss(None), loss(ones)
            assert float(a) == pytest.approx(float(b), rel=1e-6, abs=1e-9), (kind, mode)
            assert float(aux_a["clip_frac"]) == float(aux_b["clip_frac"]), (kind, mode)


def test_tokens_after_the_end_reach_neither_the_loss_nor_its_gradient():
    x_BxL, mask_BxL = _masked_batch()
    B, L = x_BxL.shape
    w_B, adv_B = jnp.full(B, 1.0 / B), jnp.array([1.0, -0.5, 2.0, -1.0])
    logp_old = jnp.full((B, L), -1.0)

    def loss(logp_BxL, junk):  # junk: what the positions after the end hold
        logp_BxL = jnp.where(mask_BxL, logp_BxL, junk)
        return algos.policy_loss("pg", "token_mean", w_B, logp_BxL, logp_old, adv_B, 0.2, 0.2, mask_BxL=mask_BxL)[0]

    logp = -jnp.abs(jax.random.normal(jax.random.key(1), (B, L)))
    for junk in (0.0, -50.0, 3.0):
        assert float(loss(logp, junk)) == float(loss(logp, 0.0))
    grad_BxL = jax.grad(loss)(logp, -50.0)
    assert np.all(np.asarray(grad_BxL)[~np.asarray(mask_BxL)] == 0) and np.all(np.isfinite(grad_BxL))
    assert np.all(np.asarray(grad_BxL)[np.asarray(mask_BxL)] != 0)


@pytest.mark.parametrize("name", sorted(algos.ADVANTAGES))
@pytest.mark.parametrize("population", [False, True])
def test_component_advantages_add_up_to_the_advantage_and_each_is_its_own_rewards_centred(name, population):
    """Each reward's part of the advantage (the gradient decomposition's terms): the parts add up
    to advantages_PxG for every estimator; a component that is constant within every group (and
    across the batch) gets part 0 wherever the estimator centres; and the parts' ratio within a
    group-normalised estimator is the ratio of the centred weighted rewards (one shared scale)."""
    rng = np.random.default_rng(3)
    P, G, K = 3, 5, 3
    c_PxGxK = jnp.asarray(rng.normal(size=(P, G, K)), jnp.float32)
    w_K = jnp.array([4.0, 1.0, -0.04])
    u_PxG = jnp.asarray(rng.dirichlet(np.ones(G), P), jnp.float32) if population else None
    total = algos.advantages_PxG(name, c_PxGxK, w_K, 1e-4, u_PxG)
    parts = algos.component_advantages(name, c_PxGxK, w_K, 1e-4, u_PxG)
    assert parts.shape == (K, P, G)
    np.testing.assert_allclose(np.asarray(parts.sum(0)), np.asarray(total), rtol=1e-5, atol=1e-5)
    flat = c_PxGxK.at[..., 1].set(0.7)  # component 1 constant everywhere
    parts_flat = algos.component_advantages(name, flat, w_K, 1e-4, u_PxG)
    if name != "reinforce":  # (gdpo divides the constant's rounding residue by eps: ~1e-4)
        np.testing.assert_allclose(np.asarray(parts_flat[1]), 0.0, atol=1e-3)
    if name == "grpo":
        m = algos.Moments(u_PxG)
        centred_K = [np.asarray(w_K[k] * (c_PxGxK[..., k] - m.group_mean(c_PxGxK[..., k]))) for k in range(K)]
        np.testing.assert_allclose(np.asarray(parts[0]) * centred_K[1], np.asarray(parts[1]) * centred_K[0],
                                   rtol=1e-4, atol=1e-5)
