"""Diagnostics of a training batch and of a policy: the blog's Table 1, the advantage's
per-reward variance split, and the orthogonality of phi and phi_prime. Pure functions.

Quadrants (the blog's Table 1): each sample's phi and phi_prime are compared with the mean of
its own group (the same prompt), as GRPO's baseline does. First letter phi, second phi_prime;
'u' = above the group mean, 'd' = below it, 't' = a tie (at the mean). A tie is neither up nor
down: the blog counts dv <= 0 as down, but with a binary phi_prime that every sample of a group
gets right most samples are ties, and its inequality p(ud) > p(uu) would then hold by
construction. So the four quadrants are strict and the ties have cells of their own; the
inequality is read among untied samples (analysis.quadrant_summary), with the ties' share beside it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sim.analysis import geometry
from sim.tasks.toy import Task

QUADRANTS = ("uu", "ud", "du", "dd")  # untied: strictly above or below the group mean in both rewards
TIED = ("ut", "dt", "tu", "td", "tt")  # at the group mean in phi_prime (second letter), phi or both
CELLS = QUADRANTS + TIED
BATCH_METRICS = (tuple(f"quad_frac_{c}" for c in CELLS) + tuple(f"quad_adv_{c}" for c in CELLS)
                 + ("adv_share_phi", "adv_share_phi_prime", "frac_reward_zero_std"))
# Rewards are multiples of 1/K, so a real deviation from a group mean is >= 1/(K G) >> TIE;
# anything smaller is float rounding of a tie and counts as 'at the mean'.
TIE = 1e-6


def _centred_PxG(x_PxG: jax.Array, w_PxG: jax.Array) -> jax.Array:
    """x minus its group's weighted mean (the group is one prompt's responses)."""
    u_PxG = w_PxG / jnp.sum(w_PxG, -1, keepdims=True)
    return x_PxG - jnp.sum(u_PxG * x_PxG, -1, keepdims=True)


def quadrant_metrics(phi_PxG: jax.Array, phi_prime_PxG: jax.Array, adv_PxG: jax.Array,
                     w_PxG: jax.Array) -> dict[str, jax.Array]:
    """Share of the batch (weight w, summing to 1) in each cell of CELLS and the mean advantage there
    (NaN for an empty cell). Samples: w = 1/B; exact mode: w = pi(y|p)/P, the population table."""
    def side(x_PxG):
        c_PxG = _centred_PxG(x_PxG, w_PxG)
        return {"u": c_PxG > TIE, "d": c_PxG < -TIE, "t": jnp.abs(c_PxG) <= TIE}

    phi, phi_prime = side(phi_PxG), side(phi_prime_PxG)
    cells = {c: phi[c[0]] & phi_prime[c[1]] for c in CELLS}
    out = {}
    for name, mask_PxG in cells.items():
        mass = jnp.sum(jnp.where(mask_PxG, w_PxG, 0.0))
        out[f"quad_frac_{name}"] = mass
        out[f"quad_adv_{name}"] = jnp.where(
            mass > 0, jnp.sum(jnp.where(mask_PxG, w_PxG * adv_PxG, 0.0)) / jnp.where(mass > 0, mass, 1.0), jnp.nan)
    return out


def advantage_split(phi_PxG: jax.Array, phi_prime_PxG: jax.Array, adv_PxG: jax.Array,
                    w_PxG: jax.Array) -> dict[str, jax.Array]:
    """The share of the within-prompt variance of the advantage that comes from each reward.

    The group-centred advantage is regressed (weights w) on both group-centred rewards,
    a = b1 dphi + b2 dphi' + rest, and reward k gets b_k Cov(a, dr_k) / Var(a) (Pratt's measure):
    its own part's variance plus half the cross term. The shares add up to the R^2 of the fit
    (<= 1); the rest is the KL term in the reward or the estimator's unequal per-group scaling.
    A small share for the weaker reward is its dilution; phi and phi_prime are independent
    within a prompt, so the cross term is only sampling noise."""
    w_N = w_PxG.ravel()
    a_N = _centred_PxG(adv_PxG, w_PxG).ravel()
    x_Nx2 = jnp.stack([_centred_PxG(phi_PxG, w_PxG).ravel(), _centred_PxG(phi_prime_PxG, w_PxG).ravel()], -1)
    cov_2 = x_Nx2.T @ (w_N * a_N)
    # pinv: a reward that is constant within every group gets coefficient 0
    b_2 = jnp.linalg.pinv(x_Nx2.T @ (w_N[:, None] * x_Nx2)) @ cov_2
    var = jnp.sum(w_N * a_N**2)
    share_2 = jnp.where(var > 0, b_2 * cov_2 / jnp.where(var > 0, var, 1.0), 0.0)
    return {"adv_share_phi": share_2[0], "adv_share_phi_prime": share_2[1]}


def frac_zero_std(reward_PxG: jax.Array, w_PxG: jax.Array) -> jax.Array:
    """TRL's frac_reward_zero_std: the share of prompt groups whose total reward is the same for
    every response, so that GRPO's group-centred advantage is 0 there and the group teaches
    nothing (binary rewards on prompts that are too easy or too hard). Sample groups, or in exact
    mode the prompts whose whole weighted population is one reward value (TIE: float rounding)."""
    spread_P = jnp.max(jnp.where(w_PxG > 0, jnp.abs(_centred_PxG(reward_PxG, w_PxG)), 0.0), -1)
    return jnp.mean(spread_P <= TIE)


def batch_metrics(phi_PxG: jax.Array, phi_prime_PxG: jax.Array, adv_PxG: jax.Array, w_PxG: jax.Array,
                  reward_PxG: jax.Array) -> dict[str, jax.Array]:
    return (quadrant_metrics(phi_PxG, phi_prime_PxG, adv_PxG, w_PxG)
            | advantage_split(phi_PxG, phi_prime_PxG, adv_PxG, w_PxG)
            | {"frac_reward_zero_std": frac_zero_std(reward_PxG, w_PxG)})


def joint_pmf(task: Task, logits_PxLxV: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(phi values_J, phi_prime values_K, P(phi, phi_prime) JxK) of a factorised policy, averaged
    over prompts. Within a prompt the two rewards read disjoint positions, which a factorised
    policy draws independently, so only differences between prompts can correlate them."""
    (values_J, pmf_PxJ), (values_K, pmf_PxK) = geometry.policy_pmfs(task, logits_PxLxV)
    return values_J, values_K, jnp.mean(pmf_PxJ[:, :, None] * pmf_PxK[:, None, :], 0)


def collapse(values_J: np.ndarray, values_K: np.ndarray, joint_JxK: np.ndarray):
    """Merge entries with equal reward values (e.g. counts 0..K-1 all give 0 under shape 'all')."""
    vj, ij = np.unique(np.asarray(values_J), return_inverse=True)
    vk, ik = np.unique(np.asarray(values_K), return_inverse=True)
    out = np.zeros((vj.size, vk.size))
    np.add.at(out, (ij[:, None], ik[None, :]), np.asarray(joint_JxK, np.float64))
    return vj, vk, out


def orthogonality(values_J: np.ndarray, values_K: np.ndarray, joint_JxK: np.ndarray) -> dict:
    """Correlation of phi and phi_prime and the joint support: how many (phi, phi_prime) value
    pairs have positive probability, and the smallest such probability."""
    vj, vk, joint = collapse(values_J, values_K, joint_JxK)
    joint = joint / joint.sum()
    pj, pk = joint.sum(1), joint.sum(0)
    mj, mk = pj @ vj, pk @ vk
    cov = vj @ joint @ vk - mj * mk
    var = (pj @ vj**2 - mj**2) * (pk @ vk**2 - mk**2)
    return {"corr": float(cov / np.sqrt(var)) if var > 0 else 0.0,
            "support_pairs": int(np.sum(joint > 0)), "value_pairs": int(joint.size),
            "min_pair_prob": float(joint.min())}
