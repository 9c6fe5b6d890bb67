"""One policy-gradient update of one run: draw the batch (samples, or every response in exact
mode) with its rewards, KL and advantages; take the surrogate loss's gradient and the optimizer
step, for each inner epoch; and the batch statistics that describe the update.

Pure functions of (static, policy, hparams, params, key); sim/rl/train.py scans them over steps and
vmaps them over runs.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sim.rl import algos
from sim.analysis import diagnostics
from sim.reward_models import model as reward_model
from sim.tasks import toy as task_lib
from sim.config import Static
from sim.policies.base import Policy, group_log_probs, group_token_logits, prompt_major, token_log_probs

# Statistics of the last training batch before a logged step (NaN at step 0: no batch yet).
# The *_std_sampled and entropy_sampled are TRL's rewards/<name>/std, reward_std and entropy
# (docs/outputs.md maps sim's names to TRL's); appended so that every earlier column keeps its place.
BATCH_METRICS = (("phi_sampled", "phi_prime_sampled", "reward_sampled", "kl_sampled",
                  "adv_mean", "adv_std", "grad_norm", "loss", "clip_frac") + diagnostics.BATCH_METRICS
                 + ("phi_std_sampled", "phi_prime_std_sampled", "reward_std_sampled", "entropy_sampled"))


def make_optimizer(static: Static, hp: dict) -> optax.GradientTransformation:
    base = {"adam": optax.adam, "sgd": optax.sgd}[static.optimizer]

    def chain(learning_rate, max_grad_norm):
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), base(learning_rate))

    return optax.inject_hyperparams(chain)(learning_rate=hp["lr"], max_grad_norm=hp["max_grad_norm"])


class StepBatch(NamedTuple):
    """One update's data, fixed across its inner epochs: the responses (samples, or every response
    in exact mode) and what the policy that drew them says about them."""
    prompts_P: jax.Array  # the step's prompts (indices into the task's), each with B / P responses
    prompts_B: jax.Array
    tokens_BxL: jax.Array
    weight_B: jax.Array  # probability weight of each response in the batch: 1/B, or pi_old(y|p)/P (exact)
    # None where the loss takes pi_old's log-probs from its own first pass (reuses_old_log_probs)
    logp_old_BxL: jax.Array | None
    logp_ref_BxL: jax.Array
    phi_B: jax.Array
    phi_prime_B: jax.Array
    # the configured KL estimator under pi_old, per response; None when the KL is in the loss, where
    # only the kl_sampled metric reads it: batch_statistics computes it then, on logged steps alone
    kl_B: jax.Array | None
    adv_B: jax.Array
    mask_BxL: jax.Array | None = None  # Policy.response_mask of the tokens; None: every token counts


def reuses_old_log_probs(static: Static) -> bool:
    """A real model's step takes pi_old's log-probs from the loss's own first pass (their
    stop-gradient values: with one inner epoch the policy has not moved yet) instead of a separate
    forward pass; the toys keep their separate pass, so their numbers stay bit for bit."""
    return static.lm is not None and static.epochs == 1 and static.kl_placement == "loss" and static.mode == "sampled"


def per_token_BxL(policy: Policy, f: Callable, params_list: tuple, prompts_P, tokens_BxL) -> jax.Array:
    """f(*logits_BxLxV) -> BxL, a function of each token's full next-token distribution (entropy,
    exact KL). In a factorised policy that distribution depends only on (prompt, position), so f
    runs on the P x L x V table and is gathered: the same numbers for a fraction of the work
    (in exact mode B = P * V**L)."""
    if policy.marginals is not None:
        return f(*(policy.marginals(p) for p in params_list))[jnp.repeat(prompts_P, tokens_BxL.shape[0] // prompts_P.shape[0])]
    return f(*(group_token_logits(policy, p, prompts_P, tokens_BxL) for p in params_list))


def _kl_tokens_BxL(static: Static, policy: Policy, ref_params, params, prompts_P, tokens_BxL, logp_BxL, logp_ref_BxL,
                   mask_BxL=None):
    if static.kl_estimator == "exact":
        exact_kl = lambda logits, ref_logits: algos.kl_BxL("exact", None, None, logits, ref_logits)
        kl_BxL = per_token_BxL(policy, exact_kl, (params, ref_params), prompts_P, tokens_BxL)
        return kl_BxL if mask_BxL is None else jnp.where(mask_BxL, kl_BxL, 0.0)
    if mask_BxL is not None:  # log-ratio 0 after the end: every estimator is then 0, and so is its gradient
        logp_BxL, logp_ref_BxL = (jnp.where(mask_BxL, x, 0.0) for x in (logp_BxL, logp_ref_BxL))
    return algos.kl_BxL(static.kl_estimator, logp_BxL, logp_ref_BxL)


def batch_kl_B(static: Static, policy: Policy, ref_params, params_old, batch: StepBatch) -> jax.Array:
    """The configured KL estimator of each response of the batch under pi_old, summed over its tokens."""
    logp_old_BxL = batch.logp_old_BxL
    if logp_old_BxL is None:  # a step that reuses the loss's pass keeps none (reuses_old_log_probs)
        logp_old_BxL = group_log_probs(policy, params_old, batch.prompts_P, batch.tokens_BxL)
    return jnp.sum(_kl_tokens_BxL(static, policy, ref_params, params_old, batch.prompts_P, batch.tokens_BxL,
                                  logp_old_BxL, batch.logp_ref_BxL, batch.mask_BxL), -1)


def make_step_batch(static: Static, policy: Policy, ref_params, hp: dict, params, key, proxy=None) -> StepBatch:
    """Draw P x G samples (sampled mode) or take all N = V**L responses of each prompt weighted by
    their probability (exact mode), and compute rewards, KL and advantages under `params`.
    With static.reward_model the reward is the frozen `proxy` (reward_model.py), not the gold."""
    P = static.task.prompts
    prompts_P = jnp.arange(P)
    if static.mode == "exact":
        all_NxL = task_lib.all_responses_NxL(static.task)
        prompts_B = prompt_major(P, all_NxL.shape[0])
        tokens_BxL = jnp.tile(all_NxL, (P, 1))
    elif static.prompts_per_step:  # a data set larger than a step: this step's prompts drawn with its key
        key, prompts_key = jax.random.split(key)
        prompts_P = jax.random.choice(prompts_key, P, (static.prompts_per_step,), replace=False)
        prompts_B = jnp.repeat(prompts_P, static.group_size)
        tokens_BxL = policy.sample(params, key, static.group_size, prompts_P)
    else:
        prompts_B = prompt_major(P, static.group_size)
        tokens_BxL = policy.sample(params, key, static.group_size)
    P = prompts_P.shape[0]
    mask_BxL = None if policy.response_mask is None else policy.response_mask(tokens_BxL)
    logp_old_BxL = None
    if not reuses_old_log_probs(static):
        logp_old_BxL = jax.lax.stop_gradient(group_log_probs(policy, params, prompts_P, tokens_BxL))
    logp_ref_BxL = group_log_probs(policy, ref_params, prompts_P, tokens_BxL)
    u_PxG = None  # sample statistics
    weight_B = jnp.full(prompts_B.shape, 1.0 / prompts_B.shape[0])
    if static.mode == "exact":  # population statistics: each response weighted by pi_old(y|p)
        u_PxG = jax.nn.softmax(jnp.sum(logp_old_BxL, -1).reshape(P, -1), -1)
        weight_B = u_PxG.reshape(-1) / P
    phi_B, phi_prime_B = task_lib.rewards_B(static.task, tokens_BxL, mask_BxL, prompts_B)
    batch = StepBatch(prompts_P, prompts_B, tokens_BxL, weight_B, logp_old_BxL, logp_ref_BxL, phi_B, phi_prime_B,
                      None, None, mask_BxL)
    components, weights = [phi_B, phi_prime_B], [hp["w_phi"], hp["w_phi_prime"]]
    if static.reward_model is not None:  # RL against the learned proxy; the gold stays in the batch's statistics
        components = [reward_model.score_B(static.reward_model, static.task, proxy, prompts_B, tokens_BxL, hp)]
        weights = [jnp.float32(1.0)]
    if static.kl_placement == "reward":
        batch = batch._replace(kl_B=batch_kl_B(static, policy, ref_params, params, batch))
        components, weights = components + [batch.kl_B], weights + [-hp["beta"]]
    rewards_PxGxK = jnp.stack(components, -1).reshape(P, -1, len(components))
    adv_B = algos.advantages_PxG(static.advantage, rewards_PxGxK, jnp.stack(weights), static.std_eps, u_PxG)
    return batch._replace(adv_B=jax.lax.stop_gradient(adv_B.reshape(-1)))


def loss_fn(static: Static, policy: Policy, ref_params, hp: dict, batch: StepBatch, params):
    """The surrogate whose gradient is the update; at params = pi_old it is the on-policy one."""
    b = batch
    if policy.group_log_probs is not None and not static.entropy_bonus and static.kl_estimator != "exact":
        # a real model whose loss needs no full next-token distribution: the log-probs alone, its
        # head in chunks (the B x L x V logits were most of the step's memory)
        logp_BxL, entropy_BxL = group_log_probs(policy, params, b.prompts_P, b.tokens_BxL), None
    elif policy.marginals is None:
        # A network: one teacher-forced pass gives both the log-probs and the entropies, so the
        # backward pass runs once (two passes cost two backward passes: ~1.5x the step, measured)
        logits_BxLxV = group_token_logits(policy, params, b.prompts_P, b.tokens_BxL)
        logp_BxL = jnp.take_along_axis(jax.nn.log_softmax(logits_BxLxV), b.tokens_BxL[..., None], -1)[..., 0]
        entropy_BxL = algos.entropy_BxL(logits_BxLxV) if static.entropy_bonus else None
    else:  # likewise one evaluation of the logits table (the entropy's would be a second backward pass)
        logits_PxLxV = policy.marginals(params)
        logp_BxL = token_log_probs(logits_PxLxV, b.prompts_B, b.tokens_BxL)
        entropy_BxL = algos.entropy_BxL(logits_PxLxV)[b.prompts_B] if static.entropy_bonus else None
    kl_BxL = None
    if static.kl_placement == "loss":
        kl_BxL = _kl_tokens_BxL(static, policy, ref_params, params, b.prompts_P, b.tokens_BxL, logp_BxL, b.logp_ref_BxL,
                                b.mask_BxL)
    logp_old_BxL = jax.lax.stop_gradient(logp_BxL) if b.logp_old_BxL is None else b.logp_old_BxL
    loss, aux = algos.policy_loss(static.loss, static.aggregation, b.weight_B, logp_BxL, logp_old_BxL, b.adv_B,
                                  hp["eps_low"], hp["eps_high"], hp["beta"], kl_BxL, hp["entropy_coef"], entropy_BxL,
                                  b.mask_BxL)
    if b.logp_old_BxL is None:  # the logged step's statistics read pi_old's log-probs from here
        aux = aux | {"logp_old_BxL": logp_old_BxL}
    return loss, aux


def inner_epoch(static: Static, policy: Policy, ref_params, hp: dict, batch: StepBatch, carry):
    """One optimizer step on the batch; returns the new (params, opt_state) and (loss, grad norm, aux)."""
    params, opt_state = carry
    (loss, aux), grads = jax.value_and_grad(partial(loss_fn, static, policy, ref_params, hp, batch), has_aux=True)(params)
    updates, opt_state = make_optimizer(static, hp).update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (loss, optax.tree.norm(grads), aux)


def _weighted_mean_std(x_B, weight_B):
    mean = jnp.sum(weight_B * x_B)
    return mean, jnp.sqrt(jnp.sum(weight_B * (x_B - mean) ** 2))


def train_step(static: Static, policy: Policy, ref_params, hp: dict, params, opt_state, key, proxy=None):
    """One policy-gradient update: a batch, then `static.epochs` optimizer steps on it.
    Returns the new (params, opt_state) and what batch_statistics needs to describe the update."""
    batch = make_step_batch(static, policy, ref_params, hp, params, key, proxy)
    (params, opt_state), (loss_E, grad_norm_E, aux_E) = jax.lax.scan(
        lambda carry, _: inner_epoch(static, policy, ref_params, hp, batch, carry), (params, opt_state), None,
        length=static.epochs)
    return params, opt_state, (batch, loss_E, grad_norm_E, aux_E)


def batch_statistics(static: Static, policy: Policy, ref_params, hp: dict, params_old, batch: StepBatch,
                     loss_E, grad_norm_E, aux_E) -> dict:
    """The BATCH_METRICS of the update from params_old (= pi_old) on `batch`. Only logged steps need
    them, so the loop computes them there alone: the advantage split solves a small least-squares
    problem per run, and with the KL in the loss its per-response KL and pi_old's log-probs are
    gathers per token that nothing else needs (at every step they cost ~9% of training)."""
    if batch.kl_B is None:
        if reuses_old_log_probs(static):  # the loss's first pass computed them
            logp_old_BxL = aux_E["logp_old_BxL"][0]
        else:  # read again here, so that the step need not keep them
            logp_old_BxL = group_log_probs(policy, params_old, batch.prompts_P, batch.tokens_BxL)
        batch = batch._replace(logp_old_BxL=logp_old_BxL)
        batch = batch._replace(kl_B=batch_kl_B(static, policy, ref_params, params_old, batch))
    w_B = batch.weight_B  # batch statistics are weighted means: exact expectations in exact mode
    reward_B = hp["w_phi"] * batch.phi_B + hp["w_phi_prime"] * batch.phi_prime_B
    adv_mean, adv_std = _weighted_mean_std(batch.adv_B, w_B)
    metrics = {
        "phi_sampled": jnp.sum(w_B * batch.phi_B), "phi_prime_sampled": jnp.sum(w_B * batch.phi_prime_B),
        "reward_sampled": jnp.sum(w_B * reward_B), "kl_sampled": jnp.sum(w_B * batch.kl_B),
        "adv_mean": adv_mean, "adv_std": adv_std,
        "grad_norm": grad_norm_E[0], "loss": loss_E[0],  # the first epoch's: the on-policy update
        "clip_frac": aux_E["clip_frac"][-1],  # the last epoch's: how much of the batch clipping froze
    }
    P = batch.prompts_P.shape[0]  # the blog's Table 1, the advantage split and zero-spread groups, per prompt group
    metrics |= diagnostics.batch_metrics(*(x.reshape(P, -1) for x in (batch.phi_B, batch.phi_prime_B,
                                                                         batch.adv_B, w_B, reward_B)))
    # spreads over the whole batch, as TRL's rewards/<name>/std and reward_std (weighted: exact in exact mode)
    for name, x_B in (("phi", batch.phi_B), ("phi_prime", batch.phi_prime_B), ("reward", reward_B)):
        metrics[f"{name}_std_sampled"] = _weighted_mean_std(x_B, w_B)[1]
    # TRL's entropy: pi_old's entropy per valid token of the batch (the exact `entropy` is per response)
    entropy_BxL = per_token_BxL(policy, algos.entropy_BxL, (params_old,), batch.prompts_P, batch.tokens_BxL)
    metrics["entropy_sampled"] = algos.aggregate(entropy_BxL, "token_mean", w_B, mask_BxL=batch.mask_BxL)
    return metrics


def no_batch_statistics() -> dict:
    """BATCH_METRICS where no update describes them (step 0, unlogged steps, a frozen run): NaN."""
    return {name: jnp.float32(jnp.nan) for name in BATCH_METRICS}
