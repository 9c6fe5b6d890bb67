"""One GRPO step on a real language model, built from sim.algos: the step the benchmark times and the
sharding tests run on 1 vs 8 devices and 1 vs 2 processes. The training loop's own step
(policies/pretrained.py with sim/step.py) is built from the same pieces.

    sample G responses per prompt (KV cache, one scan)  ->  rewards  ->  GRPO advantages
    reference log-probs (frozen copy, no gradient)      ->  k3 KL per token
    policy log-probs, loss and gradient (one forward + backward)  ->  adam

After EOS a response is finished: its later tokens are zeroed out of the rewards, KL and loss by
`response_mask`. Token aggregation: Dr. GRPO's constant normaliser (sum over real tokens / (B * N)),
so masked tokens weigh nothing and the normaliser does not depend on the sample.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sim import algos
from sim.lm import sampling
from sim.lm.config import LMConfig


def token_class_reward(tokens_BxN: jax.Array, mask_BxN: jax.Array, vocab: int) -> jax.Array:
    """A stand-in reward for benchmarks and tests: the fraction of a response's real tokens in the
    lower half of the vocabulary."""
    good_BxN = (tokens_BxN < vocab // 2) & mask_BxN
    return jnp.sum(good_BxN, -1) / jnp.maximum(jnp.sum(mask_BxN, -1), 1)


def make_grpo_step(cfg: LMConfig, optimizer: optax.GradientTransformation, group: int, new_tokens: int,
                   beta: float = 0.04, temperature: float = 1.0, remat: bool = False,
                   reward_fn: Callable | None = None, tokens_out: bool = False) -> Callable:
    """step(params, opt_state, ref_params, key, prompt_ids_PxT, prompt_mask_PxT) -> (params, opt_state,
    metrics); pure, to be jitted (with shardings, or not). With tokens_out, metrics carry the sampled
    tokens (tests compare them across layouts)."""
    reward_fn = reward_fn or (lambda t, m: token_class_reward(t, m, cfg.vocab))

    def step(params, opt_state, ref_params, key, prompt_ids_PxT, prompt_mask_PxT):
        P = prompt_ids_PxT.shape[0]
        ids_BxT = jnp.repeat(prompt_ids_PxT, group, 0)  # prompt-major: B = P * G
        mask_BxT = jnp.repeat(prompt_mask_PxT, group, 0)
        tokens_BxN = sampling.generate(params, cfg, key, ids_BxT, mask_BxT, new_tokens, temperature)
        keep_BxN = sampling.response_mask(tokens_BxN, cfg.eos_id)
        reward_B = reward_fn(tokens_BxN, keep_BxN)
        adv_B = algos.advantages_PxG("grpo", reward_B.reshape(P, group, 1), jnp.ones(1)).reshape(-1)
        ref_logp_BxN, _ = sampling.response_log_probs(ref_params, cfg, ids_BxT, mask_BxT, tokens_BxN)
        weight_B = jnp.full(adv_B.shape, 1.0 / adv_B.shape[0])

        def loss_fn(p):
            logp_BxN, _ = sampling.response_log_probs(p, cfg, ids_BxT, mask_BxT, tokens_BxN, remat)
            kl_BxN = algos.kl_BxL("k3", logp_BxN, ref_logp_BxN)
            loss, _ = algos.policy_loss("pg", "seq_mean_token_sum_norm", weight_B, logp_BxN,
                                        jax.lax.stop_gradient(logp_BxN), adv_B, 0.2, 0.2,
                                        kl_coef=beta, kl_BxL=kl_BxN, mask_BxL=keep_BxN)
            return loss, jnp.sum(jnp.where(keep_BxN, kl_BxN, 0.0), -1)

        (loss, kl_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "reward": jnp.mean(reward_B), "kl": jnp.mean(kl_B)}
        if tokens_out:
            metrics["tokens"] = tokens_BxN
        return params, opt_state, metrics

    return step
