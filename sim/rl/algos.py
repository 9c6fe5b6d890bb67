"""Advantage estimators, KL estimators, token aggregation and the policy loss: pure functions.

Shapes: P prompts x G responses per prompt (B = P*G, prompt-major), L tokens, K reward components.

Every statistic an estimator needs (group mean and std, batch mean and std, leave-one-out
mean) comes from one of two sources, so each estimator is written once:
- samples (`u_PxG=None`, sampled mode): means over the G samples of a prompt or the B samples
  of the batch; stds with Bessel's correction (ddof=1), as torch.std in TRL and verl;
- the population (`u_PxG` = probability of each enumerated response under the sampling
  policy, summing to 1 per prompt; exact mode): expectations, population stds (no Bessel).
  This is the infinite-sample limit G -> infinity of the sampled estimator, with prompts
  weighted equally (every prompt is used every step).

Estimators (r = sum_k w_k c_k is the weighted reward; a bar is a sample mean, mu/sigma a population
mean/std; eps = `std_eps` is added to every std before dividing):
- reinforce:             r                                  (no baseline)
- reinforce_baseline:    r - batch mean of r
- rloo:                  r - mean of the other G-1 samples  = G/(G-1) (r - rbar_p); limit r - mu_p
- grpo:                  (r - rbar_p) / (s_p + eps)          (DeepSeekMath; TRL, verl)
- dr_grpo:               r - rbar_p                          (Dr. GRPO: no std division)
- gdpo:                  x = sum_k w_k (c_k - cbar_pk)/(s_pk + eps), then (x - xbar)/(s_x + eps)
                         over the batch (GDPO: each reward normalised in its group, then the
                         weighted sum renormalised over the batch, as NVlabs/GDPO's TRL code)
- reinforce_pp:          (r - rbar)/(s + eps) over the batch (REINFORCE++ global whitening)
- reinforce_pp_baseline: d = r - rbar_p, then (d - dbar)/(s_d + eps) over the batch (verl's
                         reinforce_plus_plus_baseline)
Expectations: reinforce, reinforce_baseline (in the limit) and rloo (at any G) are unbiased for
grad E[r]; dr_grpo's finite-G expectation is exactly (G-1)/G times its limit; grpo's differs from
its limit by a factor that depends on the reward distribution (`grpo_binary_gain`).

Conventions where public implementations differ (chosen on purpose):
- Bessel's correction for every sample std (TRL, verl, GDPO); verl whitens REINFORCE++ over
  tokens, here over sequences (responses have a fixed length L, so the two differ only in the
  Bessel factor B/(B-1) vs BL/(BL-1)).
- eps is added to the std (TRL/GDPO: std + 1e-4); verl adds 1e-6 to the group std and whitens
  with rsqrt(var + 1e-8). One knob, `std_eps`, for all of them.
- Groups of one: verl silently uses mean 0, std 1 (GRPO becomes REINFORCE without a baseline);
  here estimators that need groups refuse G < 2 in config.parse, and batch whitening needs B >= 2.
- KL estimators (Schulman, "Approximating KL divergence"), with l = log pi - log pi_ref on tokens
  of samples y ~ pi: k1 = l, k2 = l^2/2, k3 = exp(-l) - 1 + l; `exact` is the full-distribution
  KL of each token's next-token distribution (exact for factorised policies). A sequence's
  estimate is the sum over its tokens. On-policy gradients: k1 in the reward and k2 in the loss
  give grad KL(pi||ref); k1 in the loss gives 0; k3 in the loss gives grad KL(ref||pi).
- The PPO ratio is per token, exp(log pi - log pi_old) with the log-ratio clamped to [-20, 20]
  (verl), clipped to [1 - eps_low, 1 + eps_high] (DAPO's clip-higher when eps_high > eps_low).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Moments(NamedTuple):
    """Group and batch statistics of x_PxG, from samples (u_PxG None) or from the population."""
    u_PxG: jax.Array | None = None

    def group_mean(self, x_PxG):
        if self.u_PxG is None:
            return jnp.mean(x_PxG, -1, keepdims=True)
        return jnp.sum(self.u_PxG * x_PxG, -1, keepdims=True)

    def group_std(self, x_PxG):
        if self.u_PxG is None:
            return jnp.std(x_PxG, -1, ddof=1, keepdims=True)
        return jnp.sqrt(self.group_mean((x_PxG - self.group_mean(x_PxG)) ** 2))

    def batch_mean(self, x_PxG):
        return jnp.mean(self.group_mean(x_PxG))

    def batch_std(self, x_PxG):
        if self.u_PxG is None:
            return jnp.std(x_PxG, ddof=1)
        return jnp.sqrt(self.batch_mean((x_PxG - self.batch_mean(x_PxG)) ** 2))

    def leave_one_out_mean(self, x_PxG):
        if self.u_PxG is None:
            G = x_PxG.shape[-1]
            return (jnp.sum(x_PxG, -1, keepdims=True) - x_PxG) / (G - 1)
        return self.group_mean(x_PxG)  # leaving one out of infinitely many changes nothing


def _group_normalised(x_PxG, eps, m: Moments):
    return (x_PxG - m.group_mean(x_PxG)) / (m.group_std(x_PxG) + eps)


def _whitened(x_PxG, eps, m: Moments):
    return (x_PxG - m.batch_mean(x_PxG)) / (m.batch_std(x_PxG) + eps)


# name -> (components c_PxGxK, weights w_K, eps, moments) -> advantages A_PxG
def _summed(fn):
    return lambda c_PxGxK, w_K, eps, m: fn(c_PxGxK @ w_K, eps, m)


def _gdpo(c_PxGxK, w_K, eps, m: Moments):
    z_KxPxG = jax.vmap(lambda c_PxG: _group_normalised(c_PxG, eps, m), in_axes=-1)(c_PxGxK)
    return _whitened(jnp.tensordot(w_K, z_KxPxG, 1), eps, m)


ADVANTAGES: dict[str, Callable] = {
    "reinforce": _summed(lambda r, eps, m: r),
    "reinforce_baseline": _summed(lambda r, eps, m: r - m.batch_mean(r)),
    "rloo": _summed(lambda r, eps, m: r - m.leave_one_out_mean(r)),
    "grpo": _summed(_group_normalised),
    "dr_grpo": _summed(lambda r, eps, m: r - m.group_mean(r)),
    "gdpo": _gdpo,
    "reinforce_pp": _summed(_whitened),
    "reinforce_pp_baseline": _summed(lambda r, eps, m: _whitened(r - m.group_mean(r), eps, m)),
}
NEEDS_GROUPS = ("rloo", "grpo", "dr_grpo", "gdpo", "reinforce_pp_baseline")  # compare samples of a prompt
NEEDS_BATCH = ("reinforce_pp",)  # whitens over the batch: needs B = P*G >= 2


def component_advantages(name: str, rewards_PxGxK: jax.Array, w_K: jax.Array, eps: float = 1e-4,
                         u_PxG: jax.Array | None = None) -> jax.Array:
    """Each reward component's part of advantages_PxG(name, ...), K x P x G, adding up to it: the
    estimator's centring applied to w_k * c_k alone, times the scale the total's statistics set
    (GRPO's 1 / (group std + eps), REINFORCE++'s batch one; 1 where there is none). gdpo: each
    normalised component's share of the whitened sum. Used by the gradient decomposition
    (sim/rl/decomposition.py) to tell which reward's advantage moves what."""
    m = Moments(u_PxG)
    w_K = jnp.asarray(w_K, rewards_PxGxK.dtype)
    x_KxPxG = jnp.moveaxis(rewards_PxGxK * w_K, -1, 0)
    r_PxG = rewards_PxGxK @ w_K
    per_k = lambda f: jax.vmap(f)(x_KxPxG)  # noqa: E731
    if name == "reinforce":
        return x_KxPxG
    if name == "reinforce_baseline":
        return per_k(lambda x: x - m.batch_mean(x))
    if name == "rloo":
        return per_k(lambda x: x - m.leave_one_out_mean(x))
    if name == "grpo":
        return per_k(lambda x: x - m.group_mean(x)) / (m.group_std(r_PxG) + eps)
    if name == "dr_grpo":
        return per_k(lambda x: x - m.group_mean(x))
    if name == "reinforce_pp":
        return per_k(lambda x: x - m.batch_mean(x)) / (m.batch_std(r_PxG) + eps)
    if name == "reinforce_pp_baseline":
        d_KxPxG = per_k(lambda x: x - m.group_mean(x))
        return jax.vmap(lambda d: d - m.batch_mean(d))(d_KxPxG) / (m.batch_std(r_PxG - m.group_mean(r_PxG)) + eps)
    if name == "gdpo":
        z_KxPxG = jax.vmap(lambda c_PxG: _group_normalised(c_PxG, eps, m), in_axes=-1)(rewards_PxGxK) * w_K[:, None, None]
        return jax.vmap(lambda z: z - m.batch_mean(z))(z_KxPxG) / (m.batch_std(jnp.sum(z_KxPxG, 0)) + eps)
    raise ValueError(f"advantage {name!r}; allowed: {', '.join(ADVANTAGES)}")


def advantages_PxG(name: str, rewards_PxGxK: jax.Array, w_K: jax.Array, eps: float = 1e-4,
                   u_PxG: jax.Array | None = None) -> jax.Array:
    """Advantages from the reward components and their weights (r = rewards_PxGxK @ w_K).

    The components are kept apart because gdpo normalises each one separately; the KL penalty
    in the reward is one more component, with weight -beta. `u_PxG`: see `Moments`."""
    return ADVANTAGES[name](rewards_PxGxK, jnp.asarray(w_K, rewards_PxGxK.dtype), eps, Moments(u_PxG))


def grpo_binary_gain(p: float, group_size: int, eps: float = 1e-4) -> float:
    """E[A | r=1] - E[A | r=0] of GRPO for a binary reward with success probability p.

    The expected GRPO gradient on that prompt is this gain times grad p; its population limit
    is grad p / (sqrt(p(1-p)) + eps). With n successes among G, the Bessel std of the group is
    sqrt(n (G-n) / (G (G-1))); the others' successes are Binomial(G-1, p)."""
    G = group_size

    def adv(own: int, k: int) -> float:
        n = own + k
        if n in (0, G):  # all equal: no signal (0 / eps)
            return 0.0
        std = math.sqrt(n * (G - n) / (G * (G - 1)))
        return (own - n / G) / (std + eps)

    log_binom = [math.lgamma(G) - math.lgamma(k + 1) - math.lgamma(G - k) + k * math.log(p)
                 + (G - 1 - k) * math.log1p(-p) for k in range(G)]
    return sum(math.exp(lb) * (adv(1, k) - adv(0, k)) for k, lb in enumerate(log_binom))


KL_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array] | None] = {
    "k1": lambda log_ratio: log_ratio,
    "k2": lambda log_ratio: 0.5 * log_ratio**2,
    "k3": lambda log_ratio: jnp.expm1(-log_ratio) + log_ratio,
    "exact": None,  # needs the full next-token distributions: see kl_BxL
}
KL_PLACEMENTS = ("reward", "loss")


def kl_BxL(name: str, logp_BxL: jax.Array, logp_ref_BxL: jax.Array,
           logits_BxLxV: jax.Array | None = None, ref_logits_BxLxV: jax.Array | None = None) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi. `exact` needs the logits of
    each token's next-token distribution under pi and pi_ref."""
    if name == "exact":
        logq_BxLxV = jax.nn.log_softmax(logits_BxLxV)
        return jnp.sum(jnp.exp(logq_BxLxV) * (logq_BxLxV - jax.nn.log_softmax(ref_logits_BxLxV)), -1)
    return KL_ESTIMATORS[name](logp_BxL - logp_ref_BxL)


def kl_B(name: str, logp_BxL: jax.Array, logp_ref_BxL: jax.Array, *logits) -> jax.Array:
    """Per-sequence estimate: the sum over the response's tokens."""
    return jnp.sum(kl_BxL(name, logp_BxL, logp_ref_BxL, *logits), -1)


def entropy_BxL(logits_BxLxV: jax.Array) -> jax.Array:
    """Entropy of each token's full next-token distribution (verl's entropy_from_logits)."""
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV)
    return -jnp.sum(jnp.exp(logp_BxLxV) * logp_BxLxV, -1)


# Token aggregation. weight_B is each response's probability weight in the batch (1/B for samples;
# pi_old(y|p)/P in exact mode). mask_BxL marks the tokens a response really has (a real model's
# response ends at its first EOS: the tokens after it are out of every sum); None = every token
# (the toy world: every response has the same length L), and the formulas are then the mask-free ones.
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def aggregate(x_BxL: jax.Array, mode: str, weight_B: jax.Array, max_length: int | None = None,
              mask_BxL: jax.Array | None = None) -> jax.Array:
    """token_mean: sum over all tokens / number of tokens (TRL bnpo/dapo, verl token-mean);
    seq_mean_token_mean: mean over responses of each one's token mean (TRL grpo);
    seq_mean_token_sum: mean over responses of each one's token sum;
    seq_mean_token_sum_norm: token sums over B * max_length, a constant (Dr. GRPO, TRL dr_grpo).
    With fixed L the first, second and fourth coincide and the third is L times larger; with
    variable lengths (a mask) they do not: token_mean weights every valid token alike (long
    responses count more), seq_mean_token_mean every response alike, and the last two are sums.
    A response with no valid token contributes 0 to seq_mean_token_mean (not 0/0)."""
    L = x_BxL.shape[-1]
    if mask_BxL is None:
        sum_B = jnp.sum(x_BxL, -1)
        if mode == "token_mean":
            return jnp.sum(weight_B * sum_B) / (jnp.sum(weight_B) * L)
        if mode == "seq_mean_token_mean":
            return jnp.sum(weight_B * sum_B / L)
    else:
        sum_B = jnp.sum(jnp.where(mask_BxL, x_BxL, 0.0), -1)
        n_B = jnp.sum(mask_BxL, -1).astype(sum_B.dtype)  # exactly L where every token is valid
        if mode == "token_mean":
            return jnp.sum(weight_B * sum_B) / jnp.maximum(jnp.sum(weight_B * n_B), jnp.finfo(sum_B.dtype).tiny)
        if mode == "seq_mean_token_mean":
            return jnp.sum(weight_B * sum_B / jnp.maximum(n_B, 1.0))
    if mode == "seq_mean_token_sum":
        return jnp.sum(weight_B * sum_B)
    if mode == "seq_mean_token_sum_norm":
        return jnp.sum(weight_B * sum_B) / (max_length or L)
    raise ValueError(f"aggregation {mode!r}; allowed: {', '.join(AGGREGATIONS)}")


LOSSES = ("pg", "clip")


def token_loss_BxL(kind: str, logp_BxL: jax.Array, logp_old_BxL: jax.Array, adv_B: jax.Array,
                   eps_low: jax.Array, eps_high: jax.Array) -> jax.Array:
    """pg: the score-function surrogate -A log pi(y_t); clip: PPO's -min(rho A, clip(rho) A) with
    rho = pi / pi_old per token. At pi = pi_old both have the gradient -A grad log pi(y_t)."""
    adv_Bx1 = jax.lax.stop_gradient(adv_B)[:, None]
    if kind == "pg":
        return -adv_Bx1 * logp_BxL
    ratio_BxL = jnp.exp(jnp.clip(logp_BxL - jax.lax.stop_gradient(logp_old_BxL), -20.0, 20.0))
    clipped_BxL = jnp.clip(ratio_BxL, 1.0 - eps_low, 1.0 + eps_high)
    return -jnp.minimum(ratio_BxL * adv_Bx1, clipped_BxL * adv_Bx1)


def policy_loss(kind: str, aggregation: str, weight_B: jax.Array, logp_BxL: jax.Array, logp_old_BxL: jax.Array,
                adv_B: jax.Array, eps_low, eps_high, kl_coef=0.0, kl_BxL: jax.Array | None = None,
                entropy_coef=0.0, entropy_BxL: jax.Array | None = None,
                mask_BxL: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """The scalar loss: per-token policy loss + kl_coef * KL - entropy_coef * entropy, aggregated
    (KL and entropy per token inside the aggregation, as TRL and verl do) over the valid tokens
    (`mask_BxL`, None: all)."""
    tok_BxL = token_loss_BxL(kind, logp_BxL, logp_old_BxL, adv_B, eps_low, eps_high)
    if kl_BxL is not None:
        tok_BxL = tok_BxL + kl_coef * kl_BxL
    if entropy_BxL is not None:
        tok_BxL = tok_BxL - entropy_coef * entropy_BxL
    ratio_BxL = jnp.exp(logp_BxL - logp_old_BxL)
    clipped_BxL = ((ratio_BxL > 1 + eps_high) & (adv_B[:, None] > 0)) | ((ratio_BxL < 1 - eps_low) & (adv_B[:, None] < 0))
    clip_frac = (aggregate(clipped_BxL.astype(logp_BxL.dtype), "token_mean", weight_B, mask_BxL=mask_BxL)
                 if kind == "clip" else 0.0)
    return aggregate(tok_BxL, aggregation, weight_B, mask_BxL=mask_BxL), {"clip_frac": jax.lax.stop_gradient(clip_frac)}
