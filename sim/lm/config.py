"""The architecture of a checkpoint: every size read from the file, nothing assumed.

Parameters are a plain dict pytree, with the blocks stacked along a leading layer axis N so the
model scans over them (one compiled block, whatever the depth):

    embed        V x D          token embedding
    blocks:
      attn_norm  N x D          RMSNorm scale before attention
      wq         N x D x H*Dh   (x @ wq: the transpose of HF's q_proj.weight)
      wk, wv     N x D x K*Dh   K = kv_heads (grouped-query attention)
      wo         N x H*Dh x D
      bq, bk, bv N x H*Dh / N x K*Dh   only when cfg.attn_bias (Qwen2)
      mlp_norm   N x D
      w_gate     N x D x F      SwiGLU: (silu(x @ w_gate) * (x @ w_up)) @ w_down
      w_up       N x D x F
      w_down     N x F x D
    final_norm   D
    lm_head      D x V          absent when cfg.tied_embeddings (logits = x @ embed.T)

Rotary positions use HF Llama's "rotate half" layout (the two halves of each head are the pairs),
so q/k weights in HF's own row order apply directly; llama.cpp stores Llama's permuted (see
families/llama.py).

`family` names the checkpoint's family (families/), which reads and writes its files; the model
itself only reads the fields below, so a family that differs from Llama only in these (Qwen2: biases,
rope_theta) needs no model code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sim.config_values import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint that cannot be found or read, or holds what the model does not implement; one line."""


@dataclass(frozen=True)
class LMConfig:
    family: str
    vocab: int
    d_model: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tied_embeddings: bool = False
    attn_bias: bool = False
    max_positions: int = 2048
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")

    def to_dict(self) -> dict:
        return asdict(self)
