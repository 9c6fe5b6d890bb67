"""The KL price of moving a reward: C(delta) and the asymmetry kappa(delta) = C(+delta) / C(-delta).

C(delta) = min KL(pi || pi_ref) subject to E_pi[R] = E_ref[R] + delta. Over *all* policies the
minimiser is the exponential tilt pi ∝ pi_ref * exp(lam * R) (Gibbs' variational principle). A
tilt reweights responses by their reward only, so both E_pi[R] and the KL depend on pi_ref
through the distribution of R under pi_ref alone: a pmf over the reward's values, exact by a
DP over positions for a factorised policy (`reward_pmf_PxJ`) or by enumeration of all V^L
responses for tiny tasks (`enumerated_pmf_PxJ`).

Prompts: the objective is the prompt-averaged KL under the prompt-averaged reward constraint,
which is what training pays for and what `phi` reports. Its minimiser tilts every prompt with
ONE shared lam (the multiplier of the single constraint), so prompts on which R varies more
move more; tilting each prompt by delta on its own costs more and is not the minimum.

Within a policy family (`family_kl_cost`) the same minimum is taken over the family's
parameters by an augmented Lagrangian; a family can only be as cheap as the tilt.

Everything here is pure JAX (jittable, vmappable) except `competence_for_kappa`, the host-side
solver (numpy) for configs that state a target kappa instead of a competence.
"""
from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sim.tasks import toy as task_lib
from sim.policies.base import Policy
from sim.tasks.toy import RewardSpec, Task

# Safeguarded Newton (Newton inside a shrinking bracket, bisection when it would leave it): 12
# steps already hit every delta up to 0.999 of the reachable range to float32 rounding, for
# competences 0.01-0.99 (tests/analysis/test_geometry.py); 16 leave a margin.
ROOT_STEPS = 16
# ... but it stops at the first step that moves lam by <= ROOT_RTOL relative: it has then converged
# to float32 rounding, and further Newton steps only cycle among neighbouring floats (periods 1-3
# seen). A training run's kappas get there in ~5 steps; all 16 took ~7% of the default run's time
# (kappa is solved at every logged step). Against 16 steps, logged kappas move by <= 7e-6 relative,
# their own float32 precision (each C is a difference of terms ~20x larger than itself).
ROOT_RTOL = 1e-6
# Within a family the optimiser stops near the target: a shift within 1% of delta counts as
# reached (C then within ~2%); a move out of the family's reach misses by far more.
FAMILY_TOL = 1e-2
LAM_SPAN = 64.0  # |lam| * (smallest reward step) <= 64: beyond, probability ratios exceed e^64


def reward_pmf_PxJ(spec: RewardSpec, good_prob_PxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(values_J, pmf_PxJ): the reward's values for j = 0..K good tokens and their probabilities
    per prompt, by a DP over positions (positions independent given the prompt)."""
    P, K = good_prob_PxK.shape
    pmf_PxJ = jnp.zeros((P, K + 1)).at[:, 0].set(1.0)
    for k in range(K):  # add position k: j good so far -> j (bad here) or j + 1 (good here)
        c_Px1 = good_prob_PxK[:, k:k + 1]
        shifted_PxJ = jnp.pad(pmf_PxJ, ((0, 0), (1, 0)))[:, :-1]
        pmf_PxJ = pmf_PxJ * (1 - c_Px1) + shifted_PxJ * c_Px1
    return task_lib.reward_of_count_J(spec), pmf_PxJ


def policy_pmfs(task: Task, logits_PxLxV: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """(values_J, pmf_PxJ) of phi and of phi_prime under a factorised policy."""
    return tuple(reward_pmf_PxJ(spec, task_lib.good_prob_PxK(spec, logits_PxLxV)) for spec in task.specs)


def enumerated_pmf_PxJ(task: Task, which: int, logits_PxLxV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(values_J, pmf_PxJ) with one entry per response (J = V^L): exact for any reward, tiny tasks only."""
    L, V = task.length, task.vocab
    tokens_JxL = jnp.array(list(itertools.product(range(V), repeat=L)))
    values_J = task_lib.rewards_B(task, tokens_JxL)[which]
    logp_PxLxV = jax.nn.log_softmax(logits_PxLxV)
    logp_PxJ = jnp.sum(logp_PxLxV[:, jnp.arange(L), tokens_JxL], -1)
    return values_J, jnp.exp(logp_PxJ)


def _tilt(values_J: jax.Array, logq_PxJ: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(shift, kl, d shift / d lam) of the tilt pi_p ∝ q_p exp(lam R), averaged over prompts. The
    reward is centred per prompt so that KL = lam (m - m0) - log E_q[exp(lam (R - m0))] does not
    cancel digits; the slope is the tilted variance of R."""
    m0_P = jnp.sum(jnp.exp(logq_PxJ) * values_J, -1)
    logw_PxJ = logq_PxJ + lam * (values_J - m0_P[:, None])
    logz_P = jax.nn.logsumexp(logw_PxJ, -1)
    pi_PxJ = jnp.exp(logw_PxJ - logz_P[:, None])
    m_P = jnp.sum(pi_PxJ * values_J, -1)
    var_P = jnp.sum(pi_PxJ * (values_J - m_P[:, None]) ** 2, -1)
    return jnp.mean(m_P - m0_P), jnp.mean(lam * (m_P - m0_P) - logz_P), jnp.mean(var_P)


def tilt_lambda(values_J: jax.Array, pmf_PxJ: jax.Array, delta: jax.Array) -> jax.Array:
    """The shared multiplier lam whose tilt moves the prompt-averaged E[R] by delta. The shift is
    increasing in lam (its slope is the tilted variance), so a bracket [lo, hi] around the root
    shrinks at every step; Newton steps converge fast, bisection guards the far tails."""
    logq_PxJ = jnp.log(pmf_PxJ)
    # (max - min) / (J - 1) is the reward step when the values are evenly spaced (counts of good
    # tokens); for other values a target that needs |lam| beyond the span reads as unreachable
    span = LAM_SPAN * (values_J.size - 1) / jnp.maximum(jnp.max(values_J) - jnp.min(values_J), 1e-6)

    def step(carry):
        i, lo, hi, lam, _ = carry
        shift, _, slope = _tilt(values_J, logq_PxJ, lam)
        below = shift < delta
        lo, hi = jnp.where(below, lam, lo), jnp.where(below, hi, lam)
        newton = lam + (delta - shift) / slope
        # <=: at convergence the Newton point may round onto the bracket's end; False for NaN
        inside = (newton >= lo) & (newton <= hi)
        # bisect in asinh(lam): from a wide bracket it reaches lam ~ 1 in a few steps, not ~log2(span)
        mid = jnp.sinh(0.5 * (jnp.arcsinh(lo) + jnp.arcsinh(hi)))
        return i + 1, lo, hi, jnp.where(inside, newton, mid), lam

    def more(carry):
        i, _, _, lam, previous = carry
        # not "> tol": a NaN step (the first, from previous = NaN) must read as not converged
        return (i < ROOT_STEPS) & ~(jnp.abs(lam - previous) <= ROOT_RTOL * jnp.abs(lam))

    start = (jnp.int32(0), -span, span, jnp.zeros_like(span), jnp.full_like(span, jnp.nan))
    return jax.lax.while_loop(more, step, start)[3]


def kl_cost(values_J: jax.Array, pmf_PxJ: jax.Array, delta: jax.Array) -> jax.Array:
    """C(delta) over all policies; inf where no tilt reaches the target (e.g. a loss larger than
    the current mean, or a gain past the maximum reward)."""
    lam = tilt_lambda(values_J, pmf_PxJ, delta)
    shift, kl, _ = _tilt(values_J, jnp.log(pmf_PxJ), lam)
    reached = jnp.abs(shift - delta) <= 1e-3 * jnp.abs(delta) + 1e-7
    return jnp.where(reached, jnp.maximum(kl, 0.0), jnp.inf)


def kappa(values_J: jax.Array, pmf_PxJ: jax.Array, delta: jax.Array) -> jax.Array:
    """kappa(delta) = C(+delta) / C(-delta): > 1 when gains cost more KL than losses; inf when
    only the gain is unreachable, 0 when only the loss is, NaN (undefined) when neither is (a
    policy whose other reward values have underflowed to probability 0 in float32)."""
    gain, loss = jax.vmap(lambda d: kl_cost(values_J, pmf_PxJ, d))(jnp.stack([delta, -delta]))
    return gain / loss


def policy_kappas(task: Task, logits_PxLxV: jax.Array, delta: jax.Array) -> dict[str, jax.Array]:
    """kappa of phi and phi_prime with the given factorised policy as the reference: the asymmetry
    the optimiser faces from where it is now (logged during training)."""
    return marginal_kappas(task, tuple(task_lib.good_prob_PxK(spec, logits_PxLxV) for spec in task.specs), delta)


def marginal_kappas(task: Task, good_prob_PxK: tuple[jax.Array, jax.Array], delta: jax.Array) -> dict[str, jax.Array]:
    """kappa of phi and phi_prime from each reward's per-position probabilities of a good token,
    positions taken as independent given the prompt: exact for a factorised policy; for a network
    (estimates.py), the kappa of the factorised policy with the same marginals."""
    pmfs = [reward_pmf_PxJ(spec, g_PxK) for spec, g_PxK in zip(task.specs, good_prob_PxK)]
    if pmfs[0][1].shape == pmfs[1][1].shape:  # one root-finding loop for both: half its kernels
        kappas = jax.vmap(kappa, (0, 0, None))(*(jnp.stack(x) for x in zip(*pmfs)), delta)
    else:
        kappas = [kappa(values_J, pmf_PxJ, delta) for values_J, pmf_PxJ in pmfs]
    return {f"kappa_{name}": kappas[i] for i, name in enumerate(task_lib.REWARDS)}


@partial(jax.jit, static_argnums=(0, 1))
def reference_costs(task: Task, which: int, competence_C: jax.Array, spread: jax.Array,
                    delta_D: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(C(+delta), C(-delta)), each CxD, of reward `which` for the reference at each competence c
    (the other reward's competence does not matter: it lives on other positions)."""
    spec = task.specs[which]

    def at(c):
        comp = (c, c)  # the same value for both rewards; only reward `which` is read
        logits_PxLxV = task_lib.reference_logits_PxLxV(task, comp, spread)
        values_J, pmf_PxJ = reward_pmf_PxJ(spec, task_lib.good_prob_PxK(spec, logits_PxLxV))
        cost = jax.vmap(lambda d: kl_cost(values_J, pmf_PxJ, d))
        return cost(delta_D), cost(-delta_D)

    return jax.vmap(at)(competence_C)


def competence_for_kappa(task: Task, which: int, target: float, delta: float, spread: float,
                         grid: int = 1001) -> float:
    """The competence at which the reference's kappa(delta) of reward `which` equals `target`.

    Host-side: kappa on a grid of logit(competence) in [-12, 12], then on a grid inside the
    cell where log(kappa / target) changes sign, then linear interpolation (logit steps of
    ~2e-5: exact to float32). Every call has the same shapes, so it compiles once. Raises
    ValueError naming the reachable range when no competence gives the target: for a fixed
    delta kappa is bounded, since a gain of delta is impossible above competence ~1 - delta
    (kappa jumps to inf) and a loss below ~delta (kappa drops to 0)."""

    def log_ratio_C(logits_C: np.ndarray) -> np.ndarray:
        c_C = jax.nn.sigmoid(jnp.asarray(logits_C, jnp.float32))
        gain, loss = reference_costs(task, which, c_C, jnp.float32(spread), jnp.array([delta], jnp.float32))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.asarray(gain[:, 0] / loss[:, 0], np.float64)) - np.log(target)

    coarse_C = np.linspace(-12.0, 12.0, grid)
    logits_C, f_C = coarse_C, log_ratio_C(coarse_C)
    finite_C = np.isfinite(f_C)
    if not finite_C.any():
        raise ValueError(f"no competence gives a finite kappa at delta={delta:g}")

    def unreachable() -> ValueError:  # the range, with the grid cells at its two ends refined
        ends = np.flatnonzero(finite_C)[[0, -1]]
        f = [log_ratio_C(coarse_C)]
        for i in (ends[0] - 1, ends[1]):
            if 0 <= i < grid - 1:
                f.append(log_ratio_C(np.linspace(coarse_C[i], coarse_C[i + 1], grid)))
        f = np.concatenate(f)
        lo, hi = np.exp(np.array([np.min(f[np.isfinite(f)]), np.max(f[np.isfinite(f)])]) + np.log(target))
        return ValueError(f"reachable targets at this delta lie between {lo:.3g} and {hi:.3g}")

    for refine in (True, False):
        up_C = np.nan_to_num(f_C, nan=-np.inf) > 0
        crossings = np.flatnonzero(~up_C[:-1] & up_C[1:])
        # a crossing into inf is kappa's jump where the gain becomes impossible, not a root
        if not crossings.size or not np.isfinite(f_C[crossings[0]:crossings[0] + 2]).all():
            raise unreachable()
        i = crossings[0]
        if refine:
            logits_C = np.linspace(logits_C[i], logits_C[i + 1], grid)
            f_C = log_ratio_C(logits_C)
    x0, x1, f0, f1 = logits_C[i], logits_C[i + 1], f_C[i], f_C[i + 1]
    return float(1 / (1 + np.exp(-(x0 - f0 * (x1 - x0) / (f1 - f0)))))


def factorised_kl(logp_PxLxV: jax.Array, logq_PxLxV: jax.Array) -> jax.Array:
    """Exact KL(pi || q) of factorised policies: summed over positions, averaged over prompts."""
    return jnp.mean(jnp.sum(jnp.exp(logp_PxLxV) * (logp_PxLxV - logq_PxLxV), (-1, -2)))


def family_kl_cost(task: Task, which: int | jax.Array, policy: Policy, delta_D: jax.Array, outer: int = 8,
                   inner: int = 150, rho: float = 1e3, lr: float = 0.02) -> tuple[jax.Array, jax.Array]:
    """(C_D, shift_D): the least KL within the policy's family (over its params) that moves the
    prompt-averaged E[R] of reward `which` (an int, or one per delta) by delta, started at the
    reference; C is inf where the family does not reach the target (missed by > FAMILY_TOL |delta|:
    out of the family's reach, or, for large moves of a badly conditioned family, not converged).

    Augmented Lagrangian: `outer` multiplier updates mu <- mu - rho * gap, each after `inner` Adam
    steps on KL - mu * gap + rho/2 * gap^2. Near the optimum the multiplier error contracts by
    ~1 / (1 + rho Var[R]) per update, so rho = 1e3 and 8 updates converge for Var[R] >= 1e-3.
    Adam rather than L-BFGS: as accurate here (tabular matches the tilt to 1e-5) and it compiles
    in a fraction of the time of optax's line searches. Needs a factorised family (marginals)."""
    if policy.marginals is None:
        raise ValueError("family_kl_cost needs a factorised policy family (one with marginals)")
    logq_PxLxV = jax.nn.log_softmax(policy.marginals(policy.init()))
    opt = optax.adam(lr)

    def solve(which, delta):  # `which` is data, so both rewards share one compiled solver
        def mean(logp_PxLxV):
            return jnp.mean(jnp.stack(task_lib.expected_rewards_P(task, logp_PxLxV))[which])

        m0 = mean(logq_PxLxV)

        def kl_and_shift(params):
            logp_PxLxV = jax.nn.log_softmax(policy.marginals(params))
            return factorised_kl(logp_PxLxV, logq_PxLxV), mean(logp_PxLxV) - m0

        def outer_step(carry, _):
            params, mu = carry

            def lagrangian(p):
                kl, shift = kl_and_shift(p)
                return kl - mu * (shift - delta) + 0.5 * rho * (shift - delta) ** 2

            def inner_step(state, _):
                p, s = state
                updates, s = opt.update(jax.grad(lagrangian)(p), s, p)
                return (optax.apply_updates(p, updates), s), None

            (params, _), _ = jax.lax.scan(inner_step, (params, opt.init(params)), None, length=inner)
            return (params, mu - rho * (kl_and_shift(params)[1] - delta)), None

        (params, _), _ = jax.lax.scan(outer_step, (policy.init(), jnp.float32(0.0)), None, length=outer)
        kl, shift = kl_and_shift(params)
        reached = jnp.abs(shift - delta) <= FAMILY_TOL * jnp.abs(delta)
        return jnp.where(reached, kl, jnp.inf), shift

    return jax.vmap(solve)(jnp.broadcast_to(which, delta_D.shape), delta_D)


# ---- kappa from samples: the tilt over the reference's sampled rewards ----

def sampled_kl_cost(r_PxS: jax.Array, delta: jax.Array) -> jax.Array:
    """C(delta) of the empirical reference: per prompt, S sampled responses of equal weight 1/S,
    with reward values r_PxS. The tilt reweights sample i of prompt p ∝ exp(lam r_pi), one lam
    for all prompts, as `kl_cost` does for a pmf: `_tilt` broadcasts values per prompt, so the
    same root finder serves (values_PxS in place of values_J)."""
    pmf_PxS = jnp.full(r_PxS.shape, 1.0 / r_PxS.shape[-1])
    return kl_cost(r_PxS, pmf_PxS, delta)


def sampled_kappa(r_PxS: jax.Array, delta: jax.Array) -> jax.Array:
    """kappa(delta) = C(+delta) / C(-delta) of the empirical reference (see `kappa`). It is the
    exact tilt kappa of the reference as S grows: E and KL of a tilt of the reference depend on
    the reference only through the distribution of R, which the samples estimate."""
    gain, loss = jax.vmap(lambda d: sampled_kl_cost(r_PxS, d))(jnp.stack([delta, -delta]))
    return gain / loss


def bootstrap_kappa(key: jax.Array, r_PxS: jax.Array, delta: jax.Array, resamples: int = 200
                    ) -> tuple[jax.Array, jax.Array]:
    """(kappa, standard error): the sampled kappa and the std of its value over `resamples`
    bootstrap resamples (each prompt's S samples drawn again with replacement, prompts kept)."""
    P, S = r_PxS.shape
    idx_RxPxS = jax.random.randint(key, (resamples, P, S), 0, S)
    boot_R = jax.lax.map(lambda idx_PxS: sampled_kappa(jnp.take_along_axis(r_PxS, idx_PxS, -1), delta), idx_RxPxS)
    return sampled_kappa(r_PxS, delta), jnp.std(boot_R)
