"""The toy world: prompts, responses of L tokens over V, two orthogonal rewards, the reference.

phi and phi_prime look at disjoint positions and disjoint sets of "good" tokens, so any value of
one can go with any value of the other. The reference (SFT) policy is factorised: at a reward's
positions it puts mass `competence` on that reward's good tokens (uniform inside the good and the
bad set); elsewhere it is uniform. Competence may vary by prompt (prompts of unequal difficulty).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from sim.config_values import ConfigError, choice, int_list, integer

REWARDS = ("phi", "phi_prime")
SHAPES = ("mean", "all", "parity")
# The task section's keys (task.phi_prime also takes relative_weight: hparams.DERIVED_KEYS) and a reward's
KEYS = {"kind", "prompts", "length", "vocab", "seed", "competence_spread", "kappa_delta", "phi", "phi_prime"}
REWARD_KEYS = {"positions", "good_tokens", "shape", "weight", "competence", "kappa"}


@dataclass(frozen=True)
class RewardSpec:
    positions: tuple[int, ...]
    good_tokens: tuple[int, ...]
    shape: str = "mean"  # 'mean': fraction of good tokens (dense); 'all': 1 iff every one is good;
    # 'parity': 1 iff an odd number are good (no sum over positions can rank its best responses first)
    text: str | None = None  # a text task's reward of the decoded text (sim/tasks/text_rewards.py): no good tokens
    # a reward its task computes itself, jittable: score(tokens_BxL, mask_BxL | None, prompt_B | None) -> reward_B.
    # The text task binds its text rewards here (tokenizer, prompts), so this module knows nothing of text.
    score: Callable[[jax.Array, jax.Array | None, jax.Array | None], jax.Array] | None = None


@dataclass(frozen=True)
class Task:
    prompts: int
    length: int
    vocab: int
    phi: RewardSpec
    phi_prime: RewardSpec
    seed: int = 0  # fixes per-prompt difficulty offsets; the same for every run

    @property
    def specs(self) -> tuple[RewardSpec, RewardSpec]:
        return (self.phi, self.phi_prime)


def parse(cfg) -> Task:
    """The task section of the toy task (kind: toy, the default)."""
    length, vocab = integer(cfg, "task.length", 2), integer(cfg, "task.vocab", 4)
    specs = []
    for name in REWARDS:
        key = f"task.{name}"
        specs.append(RewardSpec(
            positions=int_list(cfg, f"{key}.positions", 0, length),
            good_tokens=int_list(cfg, f"{key}.good_tokens", 0, vocab),
            shape=choice(cfg, f"{key}.shape", SHAPES),
        ))
        if len(specs[-1].good_tokens) >= vocab:
            raise ConfigError(f"{key}.good_tokens has {vocab} tokens: at least one of the task.vocab={vocab} "
                              "tokens must be bad")
    phi, phi_prime = specs
    if set(phi.positions) & set(phi_prime.positions):
        raise ConfigError(f"task.phi_prime.positions={list(phi_prime.positions)}: must be disjoint from "
                          f"task.phi.positions={list(phi.positions)}")
    if set(phi.good_tokens) & set(phi_prime.good_tokens):
        raise ConfigError(f"task.phi_prime.good_tokens={list(phi_prime.good_tokens)}: must be disjoint from "
                          f"task.phi.good_tokens={list(phi.good_tokens)} (raise task.vocab for more tokens)")
    return Task(prompts=integer(cfg, "task.prompts", 1), length=length, vocab=vocab,
                phi=phi, phi_prime=phi_prime, seed=integer(cfg, "task.seed", 0))


def good_mask_V(spec: RewardSpec, vocab: int) -> jax.Array:
    return jnp.zeros(vocab, bool).at[jnp.array(spec.good_tokens, jnp.int32)].set(True)  # none: a text reward


def position_mask_L(spec: RewardSpec, length: int) -> jax.Array:
    return jnp.zeros(length, bool).at[jnp.array(spec.positions)].set(True)


def prompt_logit_P(task: Task, competence: jax.Array, spread: jax.Array, which: int) -> jax.Array:
    """Per-prompt competence in logit space: logit(c) shifted by spread * z_p, z_p ~ N(0,1) fixed by task.seed."""
    z_P = jax.random.normal(jax.random.fold_in(jax.random.key(task.seed), which), (task.prompts,))
    return jax.scipy.special.logit(competence) + spread * z_P


def prompt_competence_P(task: Task, competence: jax.Array, spread: jax.Array, which: int) -> jax.Array:
    return jax.nn.sigmoid(prompt_logit_P(task, competence, spread, which))


def reference_logits_PxLxV(task: Task, competence: tuple[jax.Array, jax.Array], spread: jax.Array) -> jax.Array:
    """Log-probabilities of the factorised reference policy (rows are normalised)."""
    V = task.vocab
    logp_PxLxV = jnp.full((task.prompts, task.length, V), -jnp.log(V))
    for which, (spec, c) in enumerate(zip(task.specs, competence)):
        # log c and log(1 - c) from the logit: finite even where a large spread saturates c to 0 or 1
        x_P = prompt_logit_P(task, c, spread, which)
        n_good = len(spec.good_tokens)
        good_V = good_mask_V(spec, V)
        row_PxV = jnp.where(good_V, (jax.nn.log_sigmoid(x_P) - jnp.log(n_good))[:, None],
                            (jax.nn.log_sigmoid(-x_P) - jnp.log(V - n_good))[:, None])
        pos_L = position_mask_L(spec, task.length)
        logp_PxLxV = jnp.where(pos_L[None, :, None], row_PxV[:, None, :], logp_PxLxV)
    return logp_PxLxV


def _aggregate(good_BxK: jax.Array, shape: str) -> jax.Array:
    """The reward from each position's goodness: indicators (a response) or, positions being
    independent, probabilities (its exact expectation): each shape is multilinear in them."""
    if shape == "mean":
        return jnp.mean(good_BxK, -1)
    if shape == "all":
        return jnp.prod(good_BxK, -1)
    return (1.0 - jnp.prod(1.0 - 2.0 * good_BxK, -1)) / 2.0  # parity: (1 - (-1)^count) / 2


def reward_of_count_J(spec: RewardSpec) -> jax.Array:
    """The reward of a response with j = 0..K good tokens at the reward's K positions (every
    shape is symmetric in the positions, so the count of good tokens determines the reward)."""
    K = len(spec.positions)
    good_JxK = (jnp.arange(K)[None, :] < jnp.arange(K + 1)[:, None]).astype(jnp.float32)
    return _aggregate(good_JxK, spec.shape)


def rewards_B(task: Task, tokens_BxL: jax.Array, mask_BxL: jax.Array | None = None,
              prompt_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(phi, phi_prime) of each sampled response. A position where `mask_BxL` is False (a real
    model's tokens after its end-of-sequence token) is never good: it still counts in a `mean`'s
    denominator and fails an `all`. None: every position counts (the toy's case, unchanged).
    `prompt_B`: each row's prompt index, which a text reward gets as its prompts' text."""
    phi_B, phi_prime_B = (reward_B(spec, task.vocab, tokens_BxL, mask_BxL, prompt_B) for spec in task.specs)
    return phi_B, phi_prime_B


def reward_B(spec: RewardSpec, vocab: int, tokens_BxL: jax.Array, mask_BxL: jax.Array | None = None,
             prompt_B: jax.Array | None = None) -> jax.Array:
    """One reward of each response (see rewards_B): the fraction (`mean`) or all (`all`) of its
    positions holding a good token, or the spec's own `score` (a text task's text reward)."""
    if spec.score is not None:
        return spec.score(tokens_BxL, mask_BxL, prompt_B)
    tok_BxK = tokens_BxL[:, jnp.array(spec.positions)]
    good_BxK = good_mask_V(spec, vocab)[tok_BxK]
    if mask_BxL is not None:
        good_BxK = good_BxK & mask_BxL[:, jnp.array(spec.positions)]
    return _aggregate(good_BxK.astype(jnp.float32), spec.shape)


def good_prob_PxK(spec: RewardSpec, logits_PxLxV: jax.Array) -> jax.Array:
    """Probability of a good token at each of the reward's positions, per prompt."""
    probs_PxKxV = jax.nn.softmax(logits_PxLxV[:, jnp.array(spec.positions)], -1)
    return jnp.sum(jnp.where(good_mask_V(spec, logits_PxLxV.shape[-1]), probs_PxKxV, 0.0), -1)


def spill_spec(task: Task) -> RewardSpec:
    """phi's good tokens at phi_prime's positions: phi's behaviour spilled over to where phi_prime
    is scored. It takes mass from phi_prime's good tokens without any reward asking for it (shared
    parameters carry it there)."""
    return RewardSpec(task.phi_prime.positions, task.phi.good_tokens)


def spill_P(task: Task, logits_PxLxV: jax.Array) -> jax.Array:
    """Per prompt, the mean probability of one of phi's good tokens at phi_prime's positions."""
    return jnp.mean(good_prob_PxK(spill_spec(task), logits_PxLxV), -1)


def expected_rewards_P(task: Task, logits_PxLxV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exact E[phi], E[phi_prime] per prompt under a factorised policy (positions independent)."""
    a, b = (_aggregate(good_prob_PxK(spec, logits_PxLxV), spec.shape) for spec in task.specs)
    return a, b


MAX_RESPONSES = 65_536  # exact mode enumerates every response; beyond this it is too slow to be useful


def all_responses_NxL(task: Task) -> jax.Array:
    """Every response, in lexicographic order: N = V**L rows (exact mode sums over them)."""
    V, L = task.vocab, task.length
    n_N = jnp.arange(V**L)
    return jnp.stack([(n_N // V ** (L - 1 - t)) % V for t in range(L)], -1).astype(jnp.int32)
