"""Llama (and SmolLM2, which is Llama): how its checkpoints name and lay out the parameters of
config.py's layout, and which config fields give the sizes.

- HF: model.layers.{i}.self_attn.q_proj.weight ...; nn.Linear weights are out x in and the model
  computes x @ W, so matrices are stored transposed, vectors (norms, biases) as they are.
- GGUF: blk.{i}.attn_q.weight ..., the same out x in layout, but llama.cpp's converter permutes
  the rows of Q and K (its rotary pairs neighbours; HF's pairs the two halves of a head), so
  they are put back (`unpermute_qk`).

The functions taking a `family` are shared with the families that are Llama with other defaults
(qwen2.py).
"""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from sim.lm.config import CheckpointError, LMConfig
from sim.lm.formats.gguf import f32_decimal

NAME = "llama"  # config.json model_type and GGUF general.architecture

# pytree key in `blocks` -> (HF name inside model.layers.{i}., GGUF name inside blk.{i}., transposed)
_ATTN = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}  # self_attn.{x}_proj -> GGUF
BLOCK_NAMES = {
    "attn_norm": ("input_layernorm.weight", "attn_norm.weight", False),
    **{f"w{x}": (f"self_attn.{x}_proj.weight", f"{gg}.weight", True) for x, gg in _ATTN.items()},
    **{f"b{x}": (f"self_attn.{x}_proj.bias", f"{_ATTN[x]}.bias", False) for x in "qkv"},
    "mlp_norm": ("post_attention_layernorm.weight", "ffn_norm.weight", False),
    **{f"w_{x}": (f"mlp.{x}_proj.weight", f"ffn_{x}.weight", True) for x in ("gate", "up", "down")},
}
BIASES = ("bq", "bk", "bv")  # present iff cfg.attn_bias
# top-level pytree key -> (HF name, GGUF name, transposed)
TOP_NAMES = {
    "embed": ("model.embed_tokens.weight", "token_embd.weight", False),
    "final_norm": ("model.norm.weight", "output_norm.weight", False),
    "lm_head": ("lm_head.weight", "output.weight", True),
}


# ---------------------------------------------------------------------------- config.json

def config_from_hf(hf: dict) -> LMConfig:
    return hf_config(hf, family=NAME, attn_bias=bool(hf.get("attention_bias", False)))


def hf_config(hf: dict, *, family: str, attn_bias: bool) -> LMConfig:
    """LMConfig from a Llama-like config.json; CheckpointError for what the model does not implement."""
    rope = hf.get("rope_parameters") or {}  # transformers 5 writes rope_theta here
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"config.json rope_scaling={hf.get('rope_scaling') or rope!r} is not supported; "
                              "only plain rotary positions (rope_scaling null)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json hidden_act={hf['hidden_act']!r} is not supported; allowed: silu")
    if hf.get("mlp_bias"):
        raise CheckpointError("config.json mlp_bias=true is not supported; allowed: false")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if not isinstance(hf.get(k), int)]
    if missing:
        raise CheckpointError(f"config.json lacks an integer {missing[0]}")
    heads = hf["num_attention_heads"]
    return config(
        family=family, vocab=hf["vocab_size"], d_model=hf["hidden_size"],
        layers=hf["num_hidden_layers"], heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        ffn=hf["intermediate_size"], rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10_000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(hf.get("tie_word_embeddings", False)), attn_bias=attn_bias,
        max_positions=hf.get("max_position_embeddings", 2048),
        bos_id=hf.get("bos_token_id"), eos_id=_first(hf.get("eos_token_id")), pad_id=hf.get("pad_token_id"))


def config(**fields) -> LMConfig:
    try:
        return LMConfig(**fields)
    except ValueError as e:  # sizes that do not fit together (heads vs kv_heads)
        raise CheckpointError(str(e)) from None


def _first(x):
    """Some configs list several EOS ids; the first is the one the tokenizer calls eos."""
    return x[0] if isinstance(x, list) else x


def config_to_hf(cfg: LMConfig, dtype=jnp.float32) -> dict:
    """The config.json of `cfg` (what transformers' LlamaConfig reads)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": NAME,
        "vocab_size": cfg.vocab, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rope_theta": cfg.rope_theta, "rope_scaling": None, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tied_embeddings, "attention_bias": cfg.attn_bias,
        "mlp_bias": False, "max_position_embeddings": cfg.max_positions,
        "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id,
        "torch_dtype": np.dtype(dtype).name,
    }


# ---------------------------------------------------------------------------- GGUF

def config_from_gguf(value: Callable[[str, Any], Any], shapes: dict[str, tuple[int, ...]]) -> LMConfig:
    return gguf_config(value, shapes, family=NAME, attn_bias="blk.0.attn_q.bias" in shapes)


def gguf_config(value: Callable[[str, Any], Any], shapes: dict[str, tuple[int, ...]], *, family: str,
                attn_bias: bool) -> LMConfig:
    """LMConfig from GGUF metadata (`value(key, default)`) under `{family}.` and the tensor table."""
    v = lambda k, d=None: value(f"{family}.{k}", d)  # noqa: E731
    scaling = v("rope.scaling.type", "none")
    if scaling not in ("none", None) or v("rope.scaling.factor", 1.0) not in (0.0, 1.0):
        raise CheckpointError(f"GGUF {family}.rope.scaling.type={scaling!r} is not supported; "
                              "only plain rotary positions")
    d, heads = v("embedding_length"), v("attention.head_count")
    head_dim = v("attention.key_length") or d // heads
    if v("rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError(f"GGUF {family}.rope.dimension_count={v('rope.dimension_count')} is not "
                              f"supported; only rotary over the whole head ({head_dim})")
    return config(
        family=family, vocab=int(v("vocab_size") or shapes["token_embd.weight"][0]), d_model=d,
        layers=v("block_count"), heads=heads, kv_heads=v("attention.head_count_kv") or heads, head_dim=head_dim,
        ffn=v("feed_forward_length"), rope_theta=f32_decimal(v("rope.freq_base", 10_000.0)),
        norm_eps=f32_decimal(v("attention.layer_norm_rms_epsilon", 1e-5)),
        tied_embeddings="output.weight" not in shapes, attn_bias=attn_bias,
        max_positions=v("context_length", 2048),
        bos_id=value("tokenizer.ggml.bos_token_id", None), eos_id=value("tokenizer.ggml.eos_token_id", None),
        pad_id=value("tokenizer.ggml.padding_token_id", None))


def gguf_names(cfg: LMConfig, permuted: bool = True) -> dict[str, tuple[str, int | None]]:
    """HF name -> (GGUF name, the head count its rows are permuted by, or None when they are not)."""
    out = {hf: (gg, None) for hf, gg, _ in TOP_NAMES.values()}
    heads = {"q": cfg.heads, "k": cfg.kv_heads} if permuted else {}  # K by its own (kv) head count
    for hf, gg, _ in BLOCK_NAMES.values():
        n = heads.get(gg.split(".")[0].removeprefix("attn_"))
        for i in range(cfg.layers):
            out[f"model.layers.{i}.{hf}"] = (f"blk.{i}.{gg}", n)
    return out


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py) on the rows of a Q or K
    weight (out x in) or bias. llama.cpp interleaves each head's rotary pairs (rows 0,Dh/2,1,...);
    HF keeps the two halves apart (rotate-half), which is the order config.py's model uses."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
