"""The text task: the toy's two rewards carried over to a real tokenizer and real prompts.

A token-class reward is the toy's `good_tokens` on a real vocabulary: a rule over each token's
decoded text (a regex, a character class, a word list) picks the good ids ONCE, over the whole
vocabulary, and `positions` are a slice of the response. So a text task holds an ordinary toy
`Task` (vocab = the tokenizer's, length = new_tokens) and `task.rewards_B` computes the
rewards inside the jitted step unchanged; tokens after the end-of-sequence token are masked
(never good). A text reward (sim/tasks/text_rewards.py) is a Python function of the decoded response,
run on the host through a callback. `parse` validates the config (pure); `build` needs the
tokenizer, so it runs at the edge once the checkpoint is loaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import jax
import numpy as np

from sim.tasks import toy as task_lib
from sim.tasks import text_rewards
from sim.config_values import PROBABILITY, ConfigError, choice, integer, lookup, real
from sim.tasks.toy import REWARDS, SHAPES, RewardSpec, Task

RULES = ("regex", "chars", "words")
# the keys a text task's sections accept (sim/config.py refuses anything else)
REWARD_KEYS = {"weight", "shape", "positions", "rule", "text"}
KEYS = {"kind", "prompts_file", "prompts", "prompts_per_step", "eval_prompts", "new_tokens", "chat_template",
        "kappa_delta", "phi", "phi_prime"}
SHIPPED_PROMPTS = "instructions.txt"  # sim/data/: our own short English instructions


class Tokenizer(text_rewards.Decoder, Protocol):
    """What the text task needs of a tokenizer (sim/lm/tokenizer.Tokenizer provides it)."""
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool  # whether the checkpoint's tokenizer starts a text with BOS

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def token_texts(self) -> Sequence[str]: ...

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str: ...


@dataclass(frozen=True)
class TextRewardConfig:
    start: int  # positions: the slice [start, stop) of the response
    stop: int
    shape: str = "mean"
    rule: tuple[str, object] | None = None  # (kind in RULES, pattern str | tuple of words)
    text: str | None = None  # a text_rewards.REGISTRY name, instead of a rule


@dataclass(frozen=True)
class TextTaskConfig:
    prompts_file: str | None  # None: the shipped file
    prompts: int
    new_tokens: int
    chat_template: bool
    phi: TextRewardConfig
    phi_prime: TextRewardConfig
    prompts_per_step: int = 0  # training prompts drawn per step with the run's key; 0: all, every step
    eval_prompts: int = 0  # the file's next prompts, held out for the logged metrics; 0: the training ones


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (it holds arrays and the tokenizer)
class TextTask:
    task: Task  # the toy task: rewards on device through task_lib.rewards_B / self.rewards_B
    # the training prompts (task.prompts), then the held-out evaluation prompts (config.eval_prompts)
    prompt_ids_PxT: np.ndarray  # int32, LEFT-padded
    prompt_mask_PxT: np.ndarray  # bool, False on padding
    prompt_texts: tuple[str, ...]  # the instructions, before any chat template
    text_rewards: tuple[str | None, str | None]  # per reward (phi, phi_prime): a text-reward name or None
    tokenizer: Tokenizer

    def rewards_B(self, tokens_BxN: jax.Array, mask_BxN: jax.Array,
                  prompt_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(phi, phi_prime) of each response (jittable): token-class rewards on the device, text
        rewards through the host callback. `mask_BxN`: False after the end-of-sequence token;
        `prompt_B`: each row's prompt index (passed to text rewards as `prompts`)."""
        return task_lib.rewards_B(self.task, tokens_BxN, mask_BxN, prompt_B)


# ---- config (pure) ----

def _reward(cfg: Mapping, name: str, new_tokens: int) -> TextRewardConfig:
    key = f"task.{name}"
    pos = lookup(cfg, f"{key}.positions")
    if not isinstance(pos, Mapping) or set(pos) != {"start", "stop"}:
        raise ConfigError(f"{key}.positions={pos!r}: must be a slice of the response, {{start: <int>, stop: <int>}}")
    start = integer(cfg, f"{key}.positions.start", 0, new_tokens - 1)
    stop = integer(cfg, f"{key}.positions.stop", start + 1, new_tokens)
    sec = lookup(cfg, key)
    rule, text = sec.get("rule"), sec.get("text")
    if (rule is None) == (text is None):
        raise ConfigError(f"{key}: give exactly one of rule ({{regex: ...}}, {{chars: ...}} or {{words: [...]}}) "
                          f"or text (one of {', '.join(sorted(text_rewards.REGISTRY))})")
    shape = choice(cfg, f"{key}.shape", SHAPES) if "shape" in sec else "mean"
    if text is not None:
        if text not in text_rewards.REGISTRY:
            raise ConfigError(f"{key}.text={text!r}: allowed values are {', '.join(sorted(text_rewards.REGISTRY))}")
        return TextRewardConfig(start, stop, shape, text=text)
    if not isinstance(rule, Mapping) or len(rule) != 1 or next(iter(rule)) not in RULES:
        raise ConfigError(f"{key}.rule={rule!r}: must be one of {{regex: <pattern>}}, {{chars: <character class>}}, "
                          "{words: [<word>, ...]}")
    kind, value = next(iter(rule.items()))
    if kind == "words":
        # a Sequence: a DictConfig's list is a ListConfig, not a list
        if isinstance(value, str) or not isinstance(value, Sequence) or not value \
                or not all(isinstance(w, str) and w.strip() for w in value):
            shown = value if isinstance(value, str) or not isinstance(value, Sequence) else list(value)
            raise ConfigError(f"{key}.rule.words={shown!r}: must be a non-empty list of non-empty words")
        value = tuple(w.strip().lower() for w in value)
    else:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}.rule.{kind}={value!r}: must be a non-empty string")
        try:
            _pattern(kind, value)
        except re.error as e:
            raise ConfigError(f"{key}.rule.{kind}={value!r}: not a valid {'regex' if kind == 'regex' else 'character class'} "
                              f"({e})") from None
    return TextRewardConfig(start, stop, shape, rule=(kind, value))


def parse(cfg: Mapping) -> TextTaskConfig:
    """Validate the `task` section of a text task (kind: text)."""
    pf = lookup(cfg, "task").get("prompts_file")
    if pf is not None and (not isinstance(pf, str) or not pf):
        raise ConfigError(f"task.prompts_file={pf!r}: must be a file path, or null for the shipped prompts")
    new_tokens = integer(cfg, "task.new_tokens", 1)
    phi, phi_prime = (_reward(cfg, name, new_tokens) for name in REWARDS)
    # two token rules on the same positions are not orthogonal (a token can be good for at most one
    # of them when their classes are disjoint); text rewards judge the whole text and may overlap
    if phi.rule and phi_prime.rule and max(phi.start, phi_prime.start) < min(phi.stop, phi_prime.stop):
        raise ConfigError(f"task.phi_prime.positions=[{phi_prime.start}, {phi_prime.stop}): must not overlap "
                          f"task.phi.positions=[{phi.start}, {phi.stop})")
    real(cfg, "task.kappa_delta", *PROBABILITY)
    chat = lookup(cfg, "task").get("chat_template", True)
    if not isinstance(chat, bool):
        raise ConfigError(f"task.chat_template={chat!r}: must be true or false")
    prompts = integer(cfg, "task.prompts", 1)
    per_step = lookup(cfg, "task").get("prompts_per_step")
    per_step = 0 if per_step is None else integer(cfg, "task.prompts_per_step", 1, prompts)
    held_out = lookup(cfg, "task").get("eval_prompts")
    held_out = 0 if held_out is None else integer(cfg, "task.eval_prompts", 0)
    return TextTaskConfig(pf, prompts, new_tokens, chat, phi, phi_prime, per_step, held_out)


# ---- token classes ----

def _pattern(kind: str, value: str) -> re.Pattern:
    # chars: the whole token, apart from surrounding whitespace, is made of the class's characters
    return re.compile(value if kind == "regex" else rf"\s*[{value}]+\s*")


def token_is_good(rule: tuple[str, object], text: str) -> bool:
    """The rule's definition on one token's decoded text. regex: re.search finds the pattern in
    it (anchor with ^ and $); chars: it is, apart from surrounding whitespace, non-empty and made
    only of the class's characters (regex bracket syntax, e.g. '0-9' or '.,;:!?'); words: its
    text without surrounding whitespace, lower-cased, is one of the words."""
    kind, value = rule
    if kind == "regex":
        return _pattern(kind, value).search(text) is not None
    if kind == "chars":
        return _pattern(kind, value).fullmatch(text) is not None
    return text.strip().lower() in value


def good_tokens(rule: tuple[str, object], tokenizer: Tokenizer) -> tuple[int, ...]:
    """The ids whose decoded text satisfies the rule. Special tokens never do: BOS, EOS, PAD and
    any other control token (e.g. <|endoftext|>: one that decoding with skip_special_tokens drops)."""
    skip = {i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if i is not None}
    texts = tokenizer.token_texts()
    match = [i for i, t in enumerate(texts) if i not in skip and token_is_good(rule, t)]
    return tuple(i for i in match if not texts[i] or tokenizer.decode([i], skip_special_tokens=True))


def rule_candidates(tokenizer: Tokenizer) -> int:
    """How many ids a rule can match at all: every token but the special ones (good_tokens)."""
    return len(good_tokens(("regex", ""), tokenizer))  # the empty pattern matches every text


# ---- prompts ----

def read_prompts(path: str | None) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped. A file that is
    missing, unreadable, not UTF-8 or holds no prompt is a ConfigError naming task.prompts_file."""
    if path is None:
        text = (resources.files("sim.data") / SHIPPED_PROMPTS).read_text("utf-8")
    else:
        key = f"task.prompts_file={path}"
        try:
            text = Path(path).expanduser().read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{key}: no such file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{key}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
        except OSError as e:
            raise ConfigError(f"{key}: cannot be read ({e.strerror or e})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"task.prompts_file={path}: holds no prompt (one per line; blank lines and '#' lines are "
                          "skipped)")
    return prompts


def encode_prompt(tokenizer: Tokenizer, text: str, chat_template: bool) -> list[int]:
    """A prompt's ids as transformers makes them: a chat is rendered by the template (which writes
    any BOS it wants as text) and encoded without special tokens; a plain prompt gets BOS first
    when the tokenizer adds one (`add_bos`)."""
    if chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special_tokens=False))
    ids = list(tokenizer.encode(text, add_special_tokens=True))
    if tokenizer.add_bos and tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids = [tokenizer.bos_id] + ids  # a tokenizer whose encode does not add it itself
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids_PxT int32, mask_PxT bool): each row right-aligned, padding on the left."""
    T = max(len(r) for r in rows)
    ids_PxT = np.full((len(rows), T), pad_id, np.int32)
    mask_PxT = np.zeros((len(rows), T), bool)
    for p, r in enumerate(rows):
        ids_PxT[p, T - len(r):] = r
        mask_PxT[p, T - len(r):] = True
    return ids_PxT, mask_PxT


# ---- build (at the edge: needs the tokenizer) ----

def build(cfg: TextTaskConfig, tokenizer: Tokenizer, vocab: int | None = None) -> TextTask:
    """The text task for this tokenizer. `vocab`: the model's vocabulary size when its embedding
    has more rows than the tokenizer has tokens (the extra ids are never good)."""
    texts = read_prompts(cfg.prompts_file)
    where = cfg.prompts_file or f"the shipped {SHIPPED_PROMPTS}"
    if cfg.prompts + cfg.eval_prompts > len(texts):
        held_out = f" + task.eval_prompts={cfg.eval_prompts}" if cfg.eval_prompts else ""
        raise ConfigError(f"task.prompts={cfg.prompts}{held_out}: {where} has {len(texts)} prompts; allowed at most that")
    texts = texts[:cfg.prompts + cfg.eval_prompts]
    V = vocab if vocab is not None else len(tokenizer.token_texts())
    specs, names = [], []
    for name, r in zip(REWARDS, (cfg.phi, cfg.phi_prime)):
        good = good_tokens(r.rule, tokenizer) if r.rule is not None else ()
        if r.rule is not None and not good:
            raise ConfigError(f"task.{name}.rule={dict([r.rule])!r}: matches 0 of the {V} tokens; "
                              "allowed: at least one token good and one bad")
        if r.rule is not None and len(good) == (n := rule_candidates(tokenizer)):
            raise ConfigError(f"task.{name}.rule={dict([r.rule])!r}: matches every one of the {n} tokens a rule can "
                              "match (special tokens never are); allowed: at least one token good and one bad")
        positions = tuple(range(r.start, r.stop))
        score = None if r.text is None else text_rewards.scorer(r.text, tokenizer, positions, texts)
        specs.append(RewardSpec(positions, good, r.shape, text=r.text, score=score))
        names.append(r.text)
    pad = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)
    ids_PxT, mask_PxT = left_pad([encode_prompt(tokenizer, t, cfg.chat_template) for t in texts], pad)
    task = Task(prompts=cfg.prompts, length=cfg.new_tokens, vocab=V, phi=specs[0], phi_prime=specs[1])
    return TextTask(task, ids_PxT, mask_PxT, tuple(texts), (names[0], names[1]), tokenizer)

