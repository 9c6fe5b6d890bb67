"""Qwen2 (Qwen2.5-*-Instruct, the DeepSeek-R1 Qwen distills): Llama's parameters and names, with
biases on q, k and v (always; never on o nor the MLP), and its own config fields and defaults.

- config.json (transformers' Qwen2Config): no `attention_bias` key (the biases are always there);
  `rope_theta` (1e6 in Qwen2.5; transformers 5 writes it under `rope_parameters`);
  `tie_word_embeddings` true for the small sizes, false for 7B and up; `use_sliding_window`,
  `sliding_window` and `max_window_layers` describe a sliding window that Qwen2.5's own configs
  switch off and that this model does not implement (refused when on).
- GGUF (llama.cpp's Qwen2Model converter): architecture "qwen2", keys under `qwen2.`, Llama's
  tensor names, and Q/K rows NOT permuted: llama.cpp runs Qwen2 with NeoX-style rotary, which is
  HF's rotate-half, so the converter writes the HF rows as they are.
- Tokenizer: byte-level BPE with tokenizer.ggml.pre "qwen2" (sim/lm/tokenizer.py's QWEN2_REGEX).
"""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from sim.lm.config import CheckpointError, LMConfig
import sim.lm.families.llama as llama  # the module, not the package (whose __init__ imports this one)

NAME = "qwen2"
BLOCK_NAMES, TOP_NAMES, BIASES = llama.BLOCK_NAMES, llama.TOP_NAMES, llama.BIASES


def config_from_hf(hf: dict) -> LMConfig:
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"config.json use_sliding_window={hf['use_sliding_window']!r} is not supported; "
                              "allowed: false (full attention in every layer)")
    other = sorted({t for t in hf.get("layer_types") or [] if t != "full_attention"})
    if other:  # transformers 5 spells the sliding window out per layer
        raise CheckpointError(f"config.json layer_types holds {', '.join(other)}, which is not supported; "
                              "allowed: full_attention")
    return llama.hf_config(hf, family=NAME, attn_bias=True)


def config_to_hf(cfg: LMConfig, dtype=jnp.float32) -> dict:
    """The config.json of `cfg` as transformers' Qwen2Config writes it (head_dim only when it is
    not d_model / heads, which Qwen2 otherwise assumes)."""
    if not cfg.attn_bias:
        raise CheckpointError("a qwen2 checkpoint has q/k/v biases; this config has attn_bias=False")
    out = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": NAME,
        "vocab_size": cfg.vocab, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads, "hidden_act": "silu",
        "rope_theta": cfg.rope_theta, "rope_scaling": None, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tied_embeddings, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": cfg.layers, "attention_dropout": 0.0,
        "max_position_embeddings": cfg.max_positions,
        "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id,
        "torch_dtype": np.dtype(dtype).name,
    }
    if cfg.head_dim * cfg.heads != cfg.d_model:
        out["head_dim"] = cfg.head_dim
    return out


def config_from_gguf(value: Callable[[str, Any], Any], shapes: dict[str, tuple[int, ...]]) -> LMConfig:
    return llama.gguf_config(value, shapes, family=NAME, attn_bias=True)


def gguf_names(cfg: LMConfig) -> dict[str, tuple[str, int | None]]:
    return llama.gguf_names(cfg, permuted=False)
