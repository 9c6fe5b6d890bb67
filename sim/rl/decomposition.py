"""Which term of the update moves E[phi'] (and E[phi]), to first order: the gradient decomposition.

The blog argues in weight space with u = grad E[phi] and v = grad E[phi']; this measures them at
a logged step. The update's direction is minus the surrogate loss's gradient, a sum over terms:
the phi part of the advantage, the phi' part, and the KL (its part of the advantage when the KL
is in the reward, its loss term when it is in the loss). For each reward k and term t:

    d<k>_by_<t> = < -grad loss_t , grad E[k] >

the first-order change of E[k] per unit learning rate of plain gradient descent along that term
alone. The three add up to the whole update's. Adam's preconditioning is not applied (it rescales
each coordinate and can change the split); the entropy bonus is left out. Also
cos_grad_phi_phi_prime = cos(grad E[phi], grad E[phi']): the blog's angle between u and v.

grad E[k] is the score-function estimate on a second, independent batch (the step's prompts, a
key of its own, a leave-one-out baseline per prompt), so each inner product is unbiased for the
expected update's. In exact mode every response is weighted by its probability: both are exact.
Pure; sim/rl/train.py adds these to a logged step's batch statistics when
`analysis_decomposition` is on.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sim.config import Static
from sim.policies.base import Policy, group_log_probs
from sim.rl import algos
from sim.rl.step import StepBatch, loss_fn
from sim.tasks import toy as task_lib

TERMS = ("phi", "phi_prime", "kl")
METRICS = tuple(f"d{k}_by_{t}" for k in ("phi", "phi_prime") for t in TERMS) + ("cos_grad_phi_phi_prime",)


def _vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def term_advantages(static: Static, hp: dict, batch: StepBatch) -> dict[str, jax.Array]:
    """batch.adv_B split into each reward's part (algos.component_advantages: the total's scale,
    each component's own centring), and the KL's part when the KL is in the reward."""
    P = batch.prompts_P.shape[0]
    components, weights = [batch.phi_B, batch.phi_prime_B], [hp["w_phi"], hp["w_phi_prime"]]
    if static.kl_placement == "reward":
        components, weights = components + [batch.kl_B], weights + [-hp["beta"]]
    u_PxG = batch.weight_B.reshape(P, -1) * P if static.mode == "exact" else None
    parts_KxPxG = algos.component_advantages(static.advantage, jnp.stack(components, -1).reshape(P, -1, len(weights)),
                                             jnp.stack(weights), static.std_eps, u_PxG)
    parts = {t: parts_KxPxG[k].reshape(-1) for k, t in enumerate(TERMS[:len(weights)])}
    if static.kl_placement == "loss":
        parts["kl"] = jnp.zeros_like(batch.adv_B)
    return parts


def term_gradients(static: Static, policy: Policy, ref_params, hp: dict, params, batch: StepBatch) -> dict:
    """-grad loss_t at params (the batch's pi_old) for each term t: the loss with only that term's
    advantages, and the KL penalty only in the KL's own term."""
    def direction(adv_B, beta):
        hp_t = hp | {"beta": beta, "entropy_coef": jnp.zeros_like(hp["entropy_coef"])}
        loss = lambda p: loss_fn(static, policy, ref_params, hp_t, batch._replace(adv_B=adv_B), p)[0]  # noqa: E731
        return jax.tree.map(jnp.negative, jax.grad(loss)(params))

    beta_kl = hp["beta"] if static.kl_placement == "loss" else jnp.zeros_like(hp["beta"])
    zero = jnp.zeros_like(hp["beta"])
    adv = term_advantages(static, hp, batch)
    return {t: direction(adv[t], beta_kl if t == "kl" else zero) for t in TERMS}


def expectation_gradients(static: Static, policy: Policy, params, key: jax.Array, batch: StepBatch) -> tuple:
    """(grad E[phi], grad E[phi']) over the step's prompts: exact in exact mode (the batch itself,
    weighted by probability, centred by the population mean), else from G fresh responses per
    prompt drawn with `key`, centred by the leave-one-out mean (unbiased)."""
    P = batch.prompts_P.shape[0]
    if static.mode == "exact":
        tokens_BxL, weight_B, mask_BxL = batch.tokens_BxL, batch.weight_B, batch.mask_BxL
        rewards = (batch.phi_B, batch.phi_prime_B)
        u_PxG = weight_B.reshape(P, -1) * P
        centred = [(r.reshape(P, -1) - jnp.sum(u_PxG * r.reshape(P, -1), -1, keepdims=True)).reshape(-1)
                   for r in rewards]
    else:
        G = batch.tokens_BxL.shape[0] // P
        if static.prompts_per_step:
            tokens_BxL = policy.sample(params, key, G, batch.prompts_P)
        else:
            tokens_BxL = policy.sample(params, key, G)
        mask_BxL = None if policy.response_mask is None else policy.response_mask(tokens_BxL)
        rewards = task_lib.rewards_B(static.task, tokens_BxL, mask_BxL, batch.prompts_B)
        weight_B = jnp.full(batch.prompts_B.shape, 1.0 / batch.prompts_B.shape[0])
        loo = algos.Moments().leave_one_out_mean if G > 1 else (lambda x: jnp.zeros_like(x))
        centred = [(r.reshape(P, -1) - loo(r.reshape(P, -1))).reshape(-1) for r in rewards]

    def grad_of(c_B):
        def surrogate(p):
            logp_BxL = group_log_probs(policy, p, batch.prompts_P, tokens_BxL)
            if mask_BxL is not None:
                logp_BxL = jnp.where(mask_BxL, logp_BxL, 0.0)
            return jnp.sum(jax.lax.stop_gradient(weight_B * c_B) * jnp.sum(logp_BxL, -1))
        return jax.grad(surrogate)(params)

    return grad_of(centred[0]), grad_of(centred[1])


def metrics(static: Static, policy: Policy, ref_params, hp: dict, params, batch: StepBatch, key: jax.Array) -> dict:
    """METRICS at params (pi_old of `batch`); `key` draws the independent batch of grad E[k]."""
    directions = term_gradients(static, policy, ref_params, hp, params, batch)
    grads = dict(zip(("phi", "phi_prime"), expectation_gradients(static, policy, params, key, batch)))
    out = {f"d{k}_by_{t}": _vdot(directions[t], grads[k]) for k in grads for t in TERMS}
    norms = jnp.sqrt(_vdot(grads["phi"], grads["phi"]) * _vdot(grads["phi_prime"], grads["phi_prime"]))
    out["cos_grad_phi_phi_prime"] = jnp.where(norms > 0, _vdot(grads["phi"], grads["phi_prime"]) / norms, jnp.nan)
    return out


def no_metrics() -> dict:
    return {name: jnp.float32(jnp.nan) for name in METRICS}
