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
- `adapter: lora` trains low-rank adapters instead (x W + (alpha/r) x A B on `lora_targets`, B = 0
  at the start, A drawn from the run's policy key): params are the adapters alone, the base stays
  the frozen shared copy and is also the reference (adapters off), as in TRL, verl and Tunix. A run
  is then a few MB, so runs are vmapped against the one base (train.py, layout.py). Written by hand:
  the JAX LoRA libraries hook Flax modules (qwix, flax nnx) and this model is a plain pytree.
- `lora_split: reward_positions` gives each run TWO adapter sets, split by response position at
  phi_prime's first position b (`split_boundary`): a slot that predicts a token at a position < b
  (every prompt slot included) uses set 0, one that predicts a position >= b set 1 (model._dense).
  phi's log-probs then depend on set 0 alone (gradient exactly 0 for set 1); phi_prime's depend on
  set 1 directly and on set 0 through the context (attention to the earlier slots' keys and values,
  which no causal LM can avoid). The real model's counterpart of the tabular control (nothing
  shared between the rewards' positions). Both sets start as the unsplit run's adapters.
- A group's prompt is computed once: the sampler prefills each prompt and repeats its cache, and
  teacher forcing (`group_token_logits`) lets the group's responses attend to it (model.hidden_grouped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from sim.config_values import POSITIVE, ConfigError, choice, integer, is_list, lookup, real
from sim.lm import model, sampling
from sim.lm.config import LMConfig
from sim.policies.base import BuildArgs, Params, Policy

DTYPES = ("float32", "bfloat16")
ADAPTERS = ("none", "lora")
LORA_SPLITS = ("none", "reward_positions")  # one adapter set | one for phi's positions and before, one from phi_prime's
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")  # every dense matrix of a block
# The policy section's keys, and policy.lora's (read by `_lora`)
KEYS = {"kind", "checkpoint", "dtype", "remat", "temperature", "top_k", "top_p", "eval", "adapter", "lora"}
EVAL_KEYS = {"samples", "enumerate_max"}
LORA_KEYS = {"rank", "alpha", "targets", "runs_per_block", "split"}


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
    adapter: str = "none"  # ADAPTERS: none trains every weight (full fine-tuning); lora trains adapters
    lora_rank: int = 16
    lora_alpha: float = 32.0  # the adapter's output is scaled by alpha / rank (peft's convention)
    lora_targets: tuple[str, ...] = LORA_TARGETS
    runs_per_block: int = 1  # LoRA runs vmapped together (train.py's run blocks): memory vs speed
    lora_split: str = "none"  # LORA_SPLITS: reward_positions gives each run two adapter sets (split_boundary)

    @property
    def lora(self) -> bool:
        return self.adapter == "lora"

    @property
    def lora_sets(self) -> int:
        """Adapter sets per run: 2 under a position split, else 1."""
        return 2 if self.lora and self.lora_split != "none" else 1

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora else 1.0

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


def init_lora(cfg: LMConfig, targets: tuple[str, ...], rank: int, key: jax.Array, sets: int = 1) -> Params:
    """Adapters of every layer, float32: A ~ U(-1/sqrt(fan in), 1/sqrt(fan in)) (peft's Kaiming
    init), B = 0, so that the policy starts exactly at the base. sets=2 (a position split): a set
    axis after the layer axis, both sets a copy of the one-set adapters of the same key, so a split
    run starts with the parameters of the unsplit run of its seed and differs only in what it shares."""
    shapes = model.lora_shapes(cfg, targets)
    keys = jax.random.split(key, len(shapes))
    one = {name: {"a": jax.random.uniform(k, (cfg.layers, i, rank), jnp.float32, -i ** -0.5, i ** -0.5),
                  "b": jnp.zeros((cfg.layers, rank, o), jnp.float32)}
           for k, (name, (i, o)) in zip(keys, shapes.items())}
    return one if sets == 1 else jax.tree.map(lambda x: jnp.stack([x] * sets, 1), one)


def split_boundary(settings: Settings, task) -> int | None:
    """The response position from which a position-split adapter uses set 1: phi_prime's first
    position (task: toy.Task, whose rewards carry their positions). None without a split. phi's
    positions must all come before it, else phi would read set 1: a one-line ConfigError."""
    if settings.lora_sets == 1:
        return None
    phi, phi_prime = task.phi.positions, task.phi_prime.positions
    if max(phi) >= min(phi_prime):
        raise ConfigError(f"policy.lora.split={settings.lora_split}: needs task.phi.positions (last {max(phi)}) "
                          f"before task.phi_prime.positions (first {min(phi_prime)}); allowed: phi's stop <= "
                          "phi_prime's start, or policy.lora.split=none")
    return min(phi_prime)


def make(settings: Settings, frozen: Frozen, new_tokens: int, key: jax.Array | None = None,
         prompts: int | None = None, split_at: int | None = None) -> Policy:
    """The policy of the checkpoint whose frozen params are `frozen.params` (stored in
    settings.dtype); `key` draws a LoRA run's A matrices. `prompts`: the task's (training) prompts,
    the first of frozen's table, which `sample` answers unless told others (None: the whole table).
    `split_at`: a position-split adapter's boundary (`split_boundary`; required with the split)."""
    cfg, dtype, scale = settings.model, settings.dtype, settings.lora_scale
    if (settings.lora_sets == 2) != (split_at is not None):
        raise ValueError(f"policy.lora.split={settings.lora_split} (adapter {settings.adapter}) with split_at={split_at}")
    ids_PxT, mask_PxT = frozen.prompt_ids_PxT, frozen.prompt_mask_PxT
    train_P = jnp.arange(ids_PxT.shape[0] if prompts is None else prompts)
    batch, weights = lambda x: x, lambda p: p  # noqa: E731  (no mesh: leave placement to the runs' layout)
    if settings.sharded:  # the batch over data x fsdp, the weights by the rules beside the model
        from sim.lm import sharding

        mesh = sharding.make_mesh(*settings.mesh)
        batch = lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, sharding.BATCH))  # noqa: E731
        if not settings.lora:  # adapters are small: replicated
            weights = lambda p: jax.lax.with_sharding_constraint(p, sharding.param_shardings(cfg, p, mesh))  # noqa: E731

    def model_params(params):
        """The model's pytree: the trained copy (full fine-tuning) or the frozen base plus the
        adapters (none: the reference), in the compute dtype."""
        if not settings.lora:
            return cast(params, dtype)
        if not params:
            return frozen.params
        return frozen.params | {"blocks": frozen.params["blocks"] | {"lora": params}}

    def token_logits(params, prompts_B, tokens_BxL):
        _, logits_BxLxV = sampling.response_log_probs(model_params(params), cfg, batch(ids_PxT[prompts_B]),
                                                      batch(mask_PxT[prompts_B]), batch(tokens_BxL),
                                                      settings.remat, scale, split_at)
        return logits_BxLxV.astype(jnp.float32) / settings.temperature

    def group_token_logits(params, prompts_P, tokens_BxL):
        _, logits_BxLxV = sampling.group_log_probs(model_params(params), cfg, ids_PxT[prompts_P], mask_PxT[prompts_P],
                                                   batch(tokens_BxL), settings.remat, scale, split_at)
        return logits_BxLxV.astype(jnp.float32) / settings.temperature

    def group_log_probs(params, prompts_P, tokens_BxL):
        return sampling.group_token_log_probs(model_params(params), cfg, ids_PxT[prompts_P], mask_PxT[prompts_P],
                                              batch(tokens_BxL), settings.remat, scale, settings.temperature,
                                              lora_split_at=split_at)

    def log_probs(params, prompts_B, tokens_BxL):
        logp_BxLxV = jax.nn.log_softmax(token_logits(params, prompts_B, tokens_BxL))
        return jnp.take_along_axis(logp_BxLxV, tokens_BxL[..., None], -1)[..., 0]

    def sample(params, key, per_prompt, prompts_P=None):
        """per_prompt responses to each of prompts_P (None: the training prompts), prompt-major."""
        prompts_P = train_P if prompts_P is None else prompts_P
        ids, mask = ids_PxT[prompts_P], mask_PxT[prompts_P]
        return batch(sampling.generate(model_params(params), cfg, key, ids, mask, new_tokens, settings.temperature,
                                       settings.top_k, settings.top_p, per_prompt, scale, split_at).astype(jnp.int32))

    def init():
        if settings.lora:
            return init_lora(cfg, settings.lora_targets, settings.lora_rank,
                             jax.random.key(0) if key is None else key, settings.lora_sets)
        return weights(cast(frozen.params, "float32"))

    response_mask = None
    if settings.eos_id is not None:
        response_mask = lambda tokens_BxL: sampling.response_mask(tokens_BxL, settings.eos_id)  # noqa: E731
    return Policy(init=init, sample=sample, log_probs=log_probs, token_logits=token_logits,
                  response_mask=response_mask, group_token_logits=group_token_logits, group_log_probs=group_log_probs,
                  reference=(lambda: {}) if settings.lora else None)


def build(args: BuildArgs) -> Policy:
    if args.lm is None or args.ref is None:
        raise ValueError("policy.kind='pretrained' needs its settings and the loaded checkpoint")
    return make(args.lm, args.ref, args.task.length, args.key, args.task.prompts, split_boundary(args.lm, args.task))


def parse(cfg) -> dict:
    """policy=pretrained's part of config.Static. The checkpoint is only located here (a missing file
    or an unregistered name is a one-line error before anything runs); it is read at the edge
    (sim/lm_setup.py), which completes `Settings.model` and `eos_id`."""
    from sim.lm import weights as checkpoint  # here, not at the top: only this family needs gguf and safetensors

    temperature = real(cfg, "policy.temperature", *POSITIVE)
    top_p = real(cfg, "policy.top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
    remat = lookup(cfg, "policy.remat")
    if not isinstance(remat, bool):
        raise ConfigError(f"policy.remat={remat!r}: must be true or false")
    dtype, top_k = choice(cfg, "policy.dtype", DTYPES), integer(cfg, "policy.top_k", 0)
    source = lookup(cfg, "policy.checkpoint")  # last: the other keys' errors do not depend on what is installed
    if not isinstance(source, str) or not source:
        raise ConfigError(f"policy.checkpoint={source!r}: must be a registered name "
                          f"({', '.join(checkpoint.REGISTRY)}), a Hugging Face directory or a .gguf file")
    try:
        checkpoint.resolve(source)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"policy.checkpoint={source}: {e}") from None
    settings = Settings(checkpoint=source, dtype=dtype, remat=remat, temperature=temperature, top_k=top_k, top_p=top_p,
                        **_lora(cfg))
    return {"lm": settings, "eval_samples": integer(cfg, "policy.eval.samples", 2)}


def _lora(cfg) -> dict:
    """policy.adapter and, for lora, policy.lora's LORA_KEYS: rank, alpha, targets, runs_per_block and split."""
    adapter = choice(cfg, "policy.adapter", ADAPTERS) if "adapter" in lookup(cfg, "policy") else "none"
    if adapter == "none":
        return {"adapter": "none"}
    targets = lookup(cfg, "policy.lora.targets")
    if isinstance(targets, str) or not is_list(targets) or not targets or any(t not in LORA_TARGETS for t in targets) \
            or len(set(targets)) != len(targets):
        raise ConfigError(f"policy.lora.targets={targets if isinstance(targets, str) else list(targets or [])!r}: must be "
                          f"a non-empty list of distinct matrices from {', '.join(LORA_TARGETS)}")
    return {"adapter": adapter, "lora_rank": integer(cfg, "policy.lora.rank", 1),
            "lora_alpha": real(cfg, "policy.lora.alpha", *POSITIVE), "lora_targets": tuple(targets),
            "runs_per_block": integer(cfg, "policy.lora.runs_per_block", 1),
            "lora_split": choice(cfg, "policy.lora.split", LORA_SPLITS) if "split" in lookup(cfg, "policy.lora") else "none"}
