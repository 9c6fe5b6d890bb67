"""Tokenizers of real checkpoints, on the `tokenizers` package, with the checkpoint's chat template.

`load(source)` takes what `weights.load` takes (a registered name, an HF directory, a .gguf):

- HF directory: tokenizer.json as transformers' fast tokenizer runs it, plus tokenizer_config.json
  (special tokens, chat_template; add_bos_token when it is given, else the post-processor decides).
- GGUF: the equivalent `tokenizers.Tokenizer` built from the metadata, as llama.cpp reads it:
  tokenizer.ggml.model "gpt2" (byte-level BPE): tokens, merges, token types (CONTROL -> special,
  USER_DEFINED -> added), and the pre-tokenizer named by tokenizer.ggml.pre (PRE_TOKENIZERS);
  BOS/EOS/PAD ids, tokenizer.chat_template. BOS is prepended by `encode` iff
  tokenizer.ggml.add_bos_token says so (absent: llama.cpp's default for that pre-tokenizer,
  true only for the Llama-3 family). SmolLM2's file says false: its texts start without BOS.

`encode` recognises special tokens written in the text (a rendered chat template is encoded as
is); `decode` keeps them unless asked (`skip_special_tokens`). Text from `apply_chat_template`
already holds whatever BOS the template writes, so encode it with `add_special_tokens=False`.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from sim.lm.config import CheckpointError
from sim.lm.formats.gguf import reader as gguf_reader
from sim.lm.weights import resolve

# llama.cpp's tokenizer.ggml.pre -> the pre-tokenizer of its regexes (llama-vocab.cpp), and
# whether that family adds BOS by default and ignores merges for whole words (llama.cpp's flags)
GPT2_SPLIT = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(regex: str):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone")
PRE_TOKENIZERS = {  # name -> (pre-tokenizer factory, add BOS by default, ignore_merges)
    **{p: (lambda: GPT2_SPLIT, False, False) for p in ("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais")},
    **{p: (lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), GPT2_SPLIT]),
           False, False) for p in _DIGITS_THEN_GPT2},
    **{p: (lambda: _split_then_bytes(LLAMA3_REGEX), True, True) for p in ("llama3", "llama-v3", "llama-bpe")},
    **{p: (lambda: _split_then_bytes(QWEN2_REGEX), False, False) for p in ("qwen2", "deepseek-r1-qwen")},
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


class Tokenizer:
    def __init__(self, tok: tokenizers.Tokenizer, *, bos_id: int | None, eos_id: int | None,
                 pad_id: int | None, chat_template: str | None = None):
        self.tok, self.bos_id, self.eos_id, self.pad_id = tok, bos_id, eos_id, pad_id
        self.chat_template = chat_template
        self._texts: tuple[str, ...] | None = None
        probe = tok.encode("a", add_special_tokens=True).ids
        self.add_bos = bos_id is not None and len(probe) > 1 and probe[0] == bos_id

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows (the model's embedding may have more rows)."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; BOS first iff `add_special_tokens` and the checkpoint adds it (`add_bos`)."""
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_texts(self) -> tuple[str, ...]:
        """Each id's text decoded alone ('\ufffd' where a token is part of a UTF-8 character)."""
        if self._texts is None:
            ids = [[i] for i in range(self.vocab_size)]
            self._texts = tuple(self.tok.decode_batch(ids, skip_special_tokens=False))
        return self._texts

    def token(self, i: int | None) -> str | None:
        return None if i is None else self.tok.id_to_token(i)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """The chat rendered by the checkpoint's template, as transformers renders it."""
        if not self.chat_template:
            raise CheckpointError("this checkpoint has no chat template; use plain prompts")
        return _compile(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.token(self.bos_id),
            eos_token=self.token(self.eos_id), pad_token=self.token(self.pad_id), **kwargs)

    def save(self, directory) -> None:
        """tokenizer.json + tokenizer_config.json, which `from_hf_dir` reads back to the same tokenizer."""
        directory = Path(directory)
        self.tok.save(str(directory / "tokenizer.json"))
        config = {"bos_token": self.token(self.bos_id), "eos_token": self.token(self.eos_id),
                  "pad_token": self.token(self.pad_id), "add_bos_token": self.add_bos,
                  "clean_up_tokenization_spaces": False, "chat_template": self.chat_template}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    """jinja2 set up as transformers' `_compile_jinja_template` sets it up."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def load(source: str) -> Tokenizer:
    path = resolve(source)
    return from_gguf(path) if path.suffix == ".gguf" else from_hf_dir(path)


def _with_bos(tok: tokenizers.Tokenizer, bos: str, bos_id: int) -> None:
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, bos_id)])])


def from_hf_dir(directory) -> Tokenizer:
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: no tokenizer.json (only fast tokenizers are supported)")
    tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    cfg_path, model_cfg_path = directory / "tokenizer_config.json", directory / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    model_cfg = json.loads(model_cfg_path.read_text()) if model_cfg_path.is_file() else {}

    def special_id(name: str) -> int | None:
        t = cfg.get(f"{name}_token")
        t = t.get("content") if isinstance(t, dict) else t
        if t is not None and tok.token_to_id(t) is not None:
            return tok.token_to_id(t)
        i = model_cfg.get(f"{name}_token_id")
        return i[0] if isinstance(i, list) else i

    bos_id = special_id("bos")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{name, template}, ...]: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text()
    out = Tokenizer(tok, bos_id=bos_id, eos_id=special_id("eos"), pad_id=special_id("pad"), chat_template=template)
    if cfg.get("add_bos_token") and not out.add_bos and bos_id is not None:
        _with_bos(tok, tok.id_to_token(bos_id), bos_id)  # what LlamaTokenizerFast does with the flag
        out = Tokenizer(tok, bos_id=bos_id, eos_id=out.eos_id, pad_id=out.pad_id, chat_template=template)
    return out


def from_gguf(path) -> Tokenizer:
    reader = gguf_reader(path)

    def value(key, default=None):
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    model, pre = value("tokenizer.ggml.model"), value("tokenizer.ggml.pre", "default")
    if model != "gpt2":
        raise CheckpointError(f"GGUF tokenizer.ggml.model={model!r} is not supported; allowed: gpt2 (byte-level BPE)")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"GGUF tokenizer.ggml.pre={pre!r} is not supported; allowed: {', '.join(PRE_TOKENIZERS)}")
    make_pre, bos_default, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = value("tokenizer.ggml.tokens")
    types = value("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{Path(path).name}: tokenizer.ggml.tokens has duplicate entries")
    # llama.cpp splits a merge at the first space after its first character
    merges = [(m[:k], m[k + 1:]) for m in value("tokenizer.ggml.merges") for k in [m.find(" ", 1)]]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = make_pre()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    bos_id = value("tokenizer.ggml.bos_token_id")
    if value("tokenizer.ggml.add_bos_token", bos_default) and bos_id is not None:
        _with_bos(tok, tokens[bos_id], bos_id)
    return Tokenizer(tok, bos_id=bos_id, eos_id=value("tokenizer.ggml.eos_token_id"),
                     pad_id=value("tokenizer.ggml.padding_token_id"),
                     chat_template=value("tokenizer.chat_template"))
