"""Autoregressive policies: a network reads the prompt and the tokens so far and gives the next
token's logits. Every neural family (mlp, gru, transformer) is a `Net`; `make` turns one into a
`Policy` with batched sampling and teacher-forced log-probs.

Input ids: the response tokens are 0..V-1; prompt p is the id V+p and opens every sequence (one
BOS token per prompt, so the prompt conditions every position); PAD = V+P fills the MLP's window
before the start. So the network reads ids_BxL = [V+p, y_0, ..., y_{L-2}] and its output at t
is the distribution of y_t. Networks output logits over the V response tokens only.

The teacher's distribution depends on the position, so every family also reads a learned
position embedding (the transformer may use rotary positions instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from sim.config_values import integer
from sim.policies.base import BuildArgs, Params, Policy, prompt_major, sample_inverse_cdf
from sim.tasks.toy import Task

POSITIONS = ("learned", "rope")
# The policy section's keys every neural family accepts (policy.sft: sft.KEYS), and policy.eval's
KEYS = {"kind", "d_model", "hidden", "sft", "eval"}
EVAL_KEYS = {"samples", "enumerate_max"}


@dataclass(frozen=True)
class Arch:
    """A neural policy's architecture: shapes and code, so part of `config.Static`."""
    kind: str  # mlp | gru | transformer
    d_model: int = 32  # token (and position) embedding width; the transformer's residual width
    hidden: int = 64  # mlp: hidden width; gru: state width; transformer: feed-forward width
    layers: int = 0  # mlp: hidden layers; transformer: blocks; gru: 0 (one cell)
    heads: int = 0  # transformer only
    window: int = 0  # mlp only: how many previous input ids it sees
    positions: str = ""  # transformer only: learned | rope


def widths(cfg) -> dict:
    """policy.d_model and policy.hidden, which every neural family reads (Arch's fields)."""
    return {"d_model": integer(cfg, "policy.d_model", 1), "hidden": integer(cfg, "policy.hidden", 1)}


def static_fields(cfg, arch: Arch) -> dict:
    """A neural family's part of config.Static: its architecture and how its expectations are logged."""
    return {"arch": arch, "eval_samples": integer(cfg, "policy.eval.samples", 2),
            "enumerate_max": integer(cfg, "policy.eval.enumerate_max", 0)}


def build(net_of: Callable[[Arch, Task], "Net"], args: BuildArgs) -> Policy:
    """A neural family's policy: its network (`net_of`) started at the SFT-trained reference (args.ref)."""
    if args.arch is None or args.ref is None:
        kind = args.arch.kind if args.arch is not None else "neural"
        raise ValueError(f"policy.kind={kind!r} needs its architecture and SFT-trained reference params")
    return make(net_of(args.arch, args.task), args.ref, args.task)


def input_vocab(task: Task) -> int:
    return task.vocab + task.prompts + 1  # responses, prompts, PAD


def pad_id(task: Task) -> int:
    return task.vocab + task.prompts


class Net(NamedTuple):
    init: Callable[[jax.Array], Params]  # key -> random params
    # (params, ids_BxL) -> logits_BxLxV; output t depends on ids[:, :t+1] only
    logits: Callable[[Params, jax.Array], jax.Array]
    start: Callable[[Params, int], Any]  # (params, batch size) -> decoding state
    # (params, state, ids_B, t) -> (state, logits_BxV): one step of `logits`, fed ids[:, t]
    step: Callable[[Params, Any, jax.Array, jax.Array], tuple[Any, jax.Array]]


def input_ids_BxL(task: Task, prompts_B: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    return jnp.concatenate([task.vocab + prompts_B[:, None], tokens_BxL[:, :-1]], 1).astype(jnp.int32)


def make(net: Net, ref_params: Params, task: Task) -> Policy:
    """The policy of `net`; it starts at `ref_params` (the SFT-trained reference)."""

    def token_logits(params, prompts_B, tokens_BxL):
        return net.logits(params, input_ids_BxL(task, prompts_B, tokens_BxL))

    def log_probs(params, prompts_B, tokens_BxL):
        logp_BxLxV = jax.nn.log_softmax(token_logits(params, prompts_B, tokens_BxL))
        return jnp.take_along_axis(logp_BxLxV, tokens_BxL[..., None], -1)[..., 0]

    def sample(params, key, per_prompt):
        prompts_B = prompt_major(task.prompts, per_prompt)

        def one_token(carry, key_t):
            state, ids_B, t = carry
            state, logits_BxV = net.step(params, state, ids_B, t)
            tok_B = sample_inverse_cdf(key_t, jnp.cumsum(jax.nn.softmax(logits_BxV), -1)).astype(jnp.int32)
            return (state, tok_B, t + 1), tok_B

        ids0_B = (task.vocab + prompts_B).astype(jnp.int32)
        carry = (net.start(params, prompts_B.shape[0]), ids0_B, jnp.int32(0))
        _, tokens_LxB = jax.lax.scan(one_token, carry, jax.random.split(key, task.length))
        return tokens_LxB.T

    return Policy(init=lambda: ref_params, sample=sample, log_probs=log_probs, token_logits=token_logits)


def dense_init(key: jax.Array, fan_in: int, shape: tuple[int, ...]) -> jax.Array:
    """Variance-preserving normal init (std 1/sqrt(fan_in))."""
    return jax.random.normal(key, shape) / jnp.sqrt(fan_in)
