"""Advantage estimators, KL estimators and the policy-gradient loss: pure functions.

Conventions (public implementations differ; these are chosen on purpose):
- GRPO's group std uses Bessel's correction (ddof=1), as TRL and verl do via torch.std, and the
  denominator is std + eps with eps = `std_eps` (TRL uses 1e-4, verl 1e-6).
- RLOO's baseline is the mean of the *other* G-1 samples of the same prompt.
- KL estimators follow Schulman's "Approximating KL divergence" with log_ratio = log pi - log pi_ref
  on samples y ~ pi: k1 = log_ratio, k2 = log_ratio^2 / 2, k3 = exp(-log_ratio) - 1 + log_ratio.
  Token estimates are summed over the response (the KL of the sequence distributions).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _reinforce(r_PxG, eps):
    return r_PxG


def _reinforce_baseline(r_PxG, eps):
    return r_PxG - jnp.mean(r_PxG)


def _rloo(r_PxG, eps):
    G = r_PxG.shape[-1]
    return G / (G - 1) * (r_PxG - jnp.mean(r_PxG, -1, keepdims=True))


def _grpo(r_PxG, eps):
    centred = r_PxG - jnp.mean(r_PxG, -1, keepdims=True)
    return centred / (jnp.std(r_PxG, -1, ddof=1, keepdims=True) + eps)


ADVANTAGES: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "reinforce": _reinforce,
    "reinforce_baseline": _reinforce_baseline,
    "rloo": _rloo,
    "grpo": _grpo,
}
NEEDS_GROUPS = ("rloo", "grpo")  # estimators that compare samples of the same prompt


def advantages_PxG(name: str, rewards_PxG: jax.Array, eps: float = 1e-4) -> jax.Array:
    return ADVANTAGES[name](rewards_PxG, eps)


KL_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "k1": lambda log_ratio: log_ratio,
    "k2": lambda log_ratio: 0.5 * log_ratio**2,
    "k3": lambda log_ratio: jnp.expm1(-log_ratio) + log_ratio,
}
KL_PLACEMENTS = ("reward", "loss")


def kl_B(name: str, logp_BxL: jax.Array, logp_ref_BxL: jax.Array) -> jax.Array:
    """Per-sequence estimate of KL(pi || pi_ref) from samples of pi."""
    return jnp.sum(KL_ESTIMATORS[name](logp_BxL - logp_ref_BxL), -1)


def policy_gradient_loss(logp_BxL: jax.Array, adv_B: jax.Array) -> jax.Array:
    """Score-function surrogate: its gradient is -mean_b adv_b * grad log pi(y_b)."""
    return -jnp.mean(jax.lax.stop_gradient(adv_B) * jnp.sum(logp_BxL, -1))
