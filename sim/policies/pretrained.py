"""A real decoder-only language model (a checkpoint) as a `Policy`: a thin adapter over sim/lm.

The model reads the task's P prompts, left-padded to T tokens (`prompt_ids_PxT`, with
`prompt_mask_PxT` True on real tokens); a response is `task.length` new tokens. Layout as every
family's: per_prompt responses to each prompt, prompt-major; `prompts_B` indexes the P prompts.

- init() is the checkpoint itself, in float32 (the trained copy keeps float32 master weights, so an
  update of lr ~1e-6 is not rounded away as it would be in bfloat16); the frozen reference passed
  to `make` is stored in `Settings.dtype` and the model always computes in that dtype, so the
  policy at init gives exactly the reference's numbers.
- The trained policy is the model's softmax at `temperature`: sampling draws from it and the
  teacher-forced log-probs are those of logits / temperature (as TRL does). top_k < vocab or
  top_p < 1 truncate the sampler only, which is then not exactly the policy whose log-probs are
  trained (TRL's convention too); the defaults do not truncate.
- A response ends at its first EOS (included): `response_mask`, so the training step leaves the
  tokens after it out of log-probs, KL, entropy, rewards and the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from sim.lm import sampling
from sim.lm.config import LMConfig
from sim.policies.base import Params, Policy, prompt_major

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Settings:
    """policy=pretrained's static settings (part of config.Static: they change code or shapes).
    `model` and `eos_id` are read from the checkpoint at the edge (sim/lm_setup.py); None before."""
    checkpoint: str
    dtype: str = "float32"  # the model's compute dtype and the frozen reference's storage
    remat: bool = False  # recompute each block's activations in the backward pass (less memory)
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    top_p: float = 1.0  # 1: no nucleus truncation
    chat_template: bool = True  # wrap each prompt in the checkpoint's chat template, when it has one
    model: LMConfig | None = None
    eos_id: int | None = None
    mesh: tuple[int, int, int] = (1, 1, 1)  # runtime.mesh (data, fsdp, tp); (1, 1, 1): not sharded

    @property
    def sharded(self) -> bool:
        return self.mesh != (1, 1, 1)


class Frozen(NamedTuple):
    """What every run of a pretrained policy shares, un-vmapped (train.py's `shared`): the frozen
    checkpoint (the reference, one copy) and the task's prompts, left-padded."""
    params: Params
    prompt_ids_PxT: jax.Array
    prompt_mask_PxT: jax.Array


def cast(params: Params, dtype: str) -> Params:
    return jax.tree.map(lambda x: x.astype(dtype), params)


def make(settings: Settings, ref_params: Params, prompt_ids_PxT: jax.Array, prompt_mask_PxT: jax.Array,
         new_tokens: int) -> Policy:
    """The policy of the checkpoint whose frozen params are `ref_params` (stored in settings.dtype)."""
    cfg, dtype = settings.model, settings.dtype
    batch, weights = lambda x: x, lambda p: p  # noqa: E731  (no mesh: leave placement to the runs' layout)
    if settings.sharded:  # the batch over data x fsdp, the weights by the rules beside the model
        from sim.lm import sharding

        mesh = sharding.make_mesh(*settings.mesh)
        batch = lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, sharding.BATCH))  # noqa: E731
        weights = lambda p: jax.lax.with_sharding_constraint(p, sharding.param_shardings(cfg, p, mesh))  # noqa: E731

    def token_logits(params, prompts_B, tokens_BxL):
        _, logits_BxLxV = sampling.response_log_probs(cast(params, dtype), cfg, batch(prompt_ids_PxT[prompts_B]),
                                                      batch(prompt_mask_PxT[prompts_B]), batch(tokens_BxL),
                                                      settings.remat)
        return logits_BxLxV.astype(jnp.float32) / settings.temperature

    def log_probs(params, prompts_B, tokens_BxL):
        logp_BxLxV = jax.nn.log_softmax(token_logits(params, prompts_B, tokens_BxL))
        return jnp.take_along_axis(logp_BxLxV, tokens_BxL[..., None], -1)[..., 0]

    def sample(params, key, per_prompt):
        prompts_B = prompt_major(prompt_ids_PxT.shape[0], per_prompt)
        return batch(sampling.generate(cast(params, dtype), cfg, key, batch(prompt_ids_PxT[prompts_B]),
                                       batch(prompt_mask_PxT[prompts_B]), new_tokens, settings.temperature,
                                       settings.top_k, settings.top_p).astype(jnp.int32))

    response_mask = None
    if settings.eos_id is not None:
        response_mask = lambda tokens_BxL: sampling.response_mask(tokens_BxL, settings.eos_id)  # noqa: E731
    return Policy(init=lambda: weights(cast(ref_params, "float32")), sample=sample, log_probs=log_probs,
                  token_logits=token_logits, response_mask=response_mask)
