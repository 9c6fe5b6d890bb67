"""Text rewards: Python functions of the decoded response, registered by name.

A text reward has the form TRL's `reward_funcs` take: `f(completions: list[str], **kw) ->
list[float]`, one value per completion (`kw` carries `prompts`, the prompt text of each one).
They are for rewards that no token rule expresses (format, length, a keyword). Token-class
rewards (sim/tasks/text.py) run on the device; a text reward runs on the host: `reward_B` wraps
it in `jax.pure_callback`, so the jitted training step stops at that point, copies the tokens
to the host, decodes each response there, calls the function and copies the B values back
(docs/text-task.md gives what that costs).
"""
from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TextReward = Callable[..., list[float]]


class Decoder(Protocol):
    """What a text reward needs of a tokenizer (sim/lm/tokenizer.py provides it)."""
    eos_id: int | None

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


REGISTRY: dict[str, TextReward] = {}


def register(name: str) -> Callable[[TextReward], TextReward]:
    """Decorator: make `f(completions, **kw) -> list[float]` available as `text: <name>` in a task."""
    def add(f: TextReward) -> TextReward:
        if name in REGISTRY:
            raise ValueError(f"text reward {name!r} is already registered")
        REGISTRY[name] = f
        return f
    return add


_WORD = re.compile(r"[A-Za-z0-9']+")


@register("ends_with_period")
def ends_with_period(completions: list[str], **kw) -> list[float]:
    """1 when the response, without trailing whitespace, ends with '.'."""
    return [float(c.rstrip().endswith(".")) for c in completions]


@register("no_digits")
def no_digits(completions: list[str], **kw) -> list[float]:
    """1 when the response contains no decimal digit."""
    return [float(not any(ch.isdigit() for ch in c)) for c in completions]


@register("starts_with_capital")
def starts_with_capital(completions: list[str], **kw) -> list[float]:
    """1 when the first non-space character is an uppercase letter."""
    return [float(c.lstrip()[:1].isupper()) for c in completions]


@register("mentions_you")
def mentions_you(completions: list[str], **kw) -> list[float]:
    """1 when the response contains the word 'you' (any case): addressing the reader."""
    return [float(any(w.lower() == "you" for w in _WORD.findall(c))) for c in completions]


@register("at_most_20_words")
def at_most_20_words(completions: list[str], **kw) -> list[float]:
    """1 when the response has between 1 and 20 words: a short, non-empty answer."""
    return [float(1 <= len(_WORD.findall(c)) <= 20) for c in completions]


def response_text(tokenizer: Decoder, ids_N: np.ndarray, mask_N: np.ndarray) -> str:
    """The decoded response: its unmasked tokens, without the end-of-sequence token."""
    return tokenizer.decode([int(t) for t, m in zip(ids_N, mask_N) if m and t != tokenizer.eos_id])


def host_values(f: TextReward, tokenizer: Decoder, tokens_BxN: np.ndarray, mask_BxN: np.ndarray,
                prompts: Sequence[str] | None = None) -> np.ndarray:
    """f on each decoded response, float32 B; on the host (numpy in, numpy out). An empty window
    (no token of the response in it: EOS came before it) scores 0 whatever f says, as a token-class
    reward does (no token is good after EOS): otherwise a rule such as no_digits would pay a policy
    for stopping early."""
    completions = [response_text(tokenizer, t, m) for t, m in zip(tokens_BxN, mask_BxN)]
    values = f(completions, prompts=list(prompts) if prompts is not None else None)
    if len(values) != len(completions):
        raise ValueError(f"a text reward returned {len(values)} values for {len(completions)} completions")
    empty_B = ~np.any(np.asarray(mask_BxN, bool) & (np.asarray(tokens_BxN) != tokenizer.eos_id), -1)
    return np.where(empty_B, np.float32(0), np.asarray(values, np.float32))


def reward_B(name: str, tokenizer: Decoder, tokens_BxN: jax.Array, mask_BxN: jax.Array,
             prompt_B: jax.Array | None = None, prompt_texts: Sequence[str] | None = None) -> jax.Array:
    """The registered text reward `name` of each response, callable inside jit (and vmap: the
    callback sees every batched run at once, one host call). `prompt_B` (the prompt index of each
    row) and `prompt_texts` give the function its `prompts`."""
    f = REGISTRY[name]
    N = tokens_BxN.shape[-1]
    if prompt_B is None:
        prompt_B = jnp.zeros(tokens_BxN.shape[:-1], jnp.int32)
        prompt_texts = None

    def host(tokens, mask, prompt):  # leading dims: vmapped runs, then B
        tokens, mask, prompt = np.broadcast_arrays(tokens, mask, prompt[..., None])
        lead = tokens.shape[:-1]
        texts = None if prompt_texts is None else [prompt_texts[i] for i in prompt[..., 0].reshape(-1)]
        return host_values(f, tokenizer, tokens.reshape(-1, N), mask.reshape(-1, N), texts).reshape(lead)

    out = jax.ShapeDtypeStruct(tokens_BxN.shape[:-1], jnp.float32)
    return jax.pure_callback(host, out, tokens_BxN, mask_BxN, prompt_B, vmap_method="broadcast_all")


def reward_at_B(name: str, tokenizer: Decoder, positions: Sequence[int], tokens_BxN: jax.Array,
                mask_BxN: jax.Array | None = None, prompt_B: jax.Array | None = None,
                prompt_texts: Sequence[str] | None = None) -> jax.Array:
    """reward_B on the tokens at a reward's positions (a contiguous slice of the response; leading
    dims, e.g. vmapped runs, pass through). `mask_BxN` None: every position counts."""
    window = slice(positions[0], positions[-1] + 1)
    tokens = tokens_BxN[..., window]
    mask = jnp.ones(tokens.shape, bool) if mask_BxN is None else mask_BxN[..., window]
    return reward_B(name, tokenizer, tokens, mask, prompt_B, prompt_texts)


def scorer(name: str, tokenizer: Decoder, positions: Sequence[int], prompt_texts: Sequence[str] | None = None):
    """The text reward `name` as a `RewardSpec.score`: (tokens_BxL, mask_BxL | None, prompt_B | None)
    -> reward_B, with the tokenizer that decodes and the prompts' texts bound here."""
    texts = None if prompt_texts is None else tuple(prompt_texts)

    def score(tokens_BxL: jax.Array, mask_BxL: jax.Array | None, prompt_B: jax.Array | None) -> jax.Array:
        return reward_at_B(name, tokenizer, positions, tokens_BxL, mask_BxL, prompt_B, texts)

    return score

