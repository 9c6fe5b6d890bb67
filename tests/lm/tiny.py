"""Tiny random checkpoints that the tests write themselves, from ONE set of float32 weights:

    write_tiny(directory, *, seed=0, tied=False, attn_bias=False) -> dict with
      hf_dir      Path: config.json + model.safetensors + tokenizer.json + tokenizer_config.json
      gguf        Path: the same weights, all F32, Q/K rows permuted as llama.cpp's converter does
      gguf_quant  Path: the same, with some tensors quantised (QUANT below) to exercise dequantising
      cfg         LMConfig (2 layers, d=64, 4 heads / 2 KV heads of 16, FFN 128, vocab ~300)
      params      the original weights, numpy float32, in sim/lm/config.py's layout
    write_tiny_qwen2(directory, *, seed=0, tied=False) -> the same dict for a Qwen2 checkpoint

The tokenizer is a byte-level BPE trained here on a few sentences (SmolLM2's pre-tokenizer:
single digits, then GPT-2's split; special tokens <|endoftext|> <|im_start|> <|im_end|> =
ids 0, 1, 2; BOS 1, EOS = PAD 2 as in SmolLM2) with a ChatML chat template.

The Qwen2 checkpoint has q/k/v biases (larger than Llama's test biases, so they matter), an untied
head by default, rope theta 1e6 and RMSNorm eps 1e-6; its config.json is written as transformers'
Qwen2Config writes it (no attention_bias key, sliding-window fields off); its tokenizer uses
Qwen2's pre-tokenizer regex (tokenizer.json's Split + ByteLevel; GGUF tokenizer.ggml.pre "qwen2"),
BOS = PAD = <|endoftext|> (0) and EOS = <|im_end|> (2) as Qwen2.5-Instruct has them (its config.json
has no pad id: cfg.pad_id is None, and the GGUF's is the tokenizer's, 0); its GGUF has
architecture "qwen2" and Q/K rows as HF has them (llama.cpp's Qwen2 converter does not permute).

Everything here is written independently of sim/lm/weights.py (its own HF names, its own
llama.cpp permutation, gguf's own writer), so a test comparing the two formats can fail.
`tests/lm/conftest.py` writes it once per session: the `tiny` fixture.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import jax
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from sim.lm import tokenizer as sim_tokenizer
from sim.lm.config import LMConfig

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, PAD = 1, 2, 2
TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "A language model assigns a probability to every sequence of tokens.",
    "In 2024 there were 365 days; in 2025, 12 months and 52 weeks.",
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "Rewards, penalties and the KL term: what the policy learns is what it is paid for.",
    "She said: \"it's fine\", they'll see, we're done, I'm here, you've won, he'd go.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SIZES = dict(layers=2, d_model=64, heads=4, kv_heads=2, head_dim=16, ffn=128)
# GGUF tensor (inside blk.N.) -> the type gguf_quant stores it as (everything else: F32)
QUANT = {"attn_q.weight": gguf.GGMLQuantizationType.Q8_0, "attn_k.weight": gguf.GGMLQuantizationType.Q8_0,
         "ffn_gate.weight": gguf.GGMLQuantizationType.Q4_1, "attn_output.weight": gguf.GGMLQuantizationType.F16}
# pytree key of a block matrix -> its GGUF name (the layout the tests expect, written out here)
GGUF_OF = {"wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight", "wo": "attn_output.weight",
           "w_gate": "ffn_gate.weight", "w_up": "ffn_up.weight", "w_down": "ffn_down.weight"}


# Qwen2's tokenizer.json: Split on this regex (isolated), then ByteLevel without its own regex
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_BOS, QWEN2_EOS, QWEN2_PAD = 0, 2, 0  # PAD: the tokenizer's and the GGUF's; Qwen2's config.json has none


def tokenizer_pad(cfg: LMConfig) -> int:
    return cfg.pad_id if cfg.pad_id is not None else QWEN2_PAD


def make_tokenizer(pre: str = "smollm") -> Tokenizer:
    """Byte-level BPE with SmolLM2's pre-tokenizer (pre="smollm"), GPT-2's (pre="gpt-2") or
    Qwen2's (pre="qwen2")."""
    tok = Tokenizer(models.BPE())
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    qwen2 = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.pre_tokenizer = {"smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2]),
                         "gpt-2": gpt2, "qwen2": qwen2}[pre]
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json has it (llama.cpp does not apply it)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    return tok


def tiny_tokenizer(add_bos: bool = False) -> sim_tokenizer.Tokenizer:
    """make_tokenizer's byte-level BPE (300 tokens, ChatML template) as sim.lm's Tokenizer;
    add_bos: with a post-processor that starts every plain text with BOS, as Llama's does."""
    tok = make_tokenizer()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<|im_start|>:0 $A:0",
                                                           special_tokens=[("<|im_start|>", BOS)])
    out = sim_tokenizer.Tokenizer(tok, bos_id=BOS, eos_id=EOS, pad_id=PAD, chat_template=CHAT_TEMPLATE)
    assert out.add_bos == add_bos
    return out


def random_params(cfg: LMConfig, seed: int = 0, bias_scale: float = 0.1) -> dict:
    """Weights at the scales of a trained model (unit-ish activations), float32, config.py's layout."""
    rng = np.random.default_rng(seed)
    N, D, F, V = cfg.layers, cfg.d_model, cfg.ffn, cfg.vocab
    Q, KV = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim

    def mat(*shape):  # x @ W with W: in x out
        return (rng.standard_normal(shape) / np.sqrt(shape[-2])).astype(np.float32)

    def norm(*shape):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)

    blocks = {"attn_norm": norm(N, D), "wq": mat(N, D, Q), "wk": mat(N, D, KV), "wv": mat(N, D, KV),
              "wo": mat(N, Q, D), "mlp_norm": norm(N, D), "w_gate": mat(N, D, F), "w_up": mat(N, D, F),
              "w_down": mat(N, F, D)}
    if cfg.attn_bias:
        blocks.update(bq=bias_scale * mat(N, 1, Q)[:, 0], bk=bias_scale * mat(N, 1, KV)[:, 0],
                      bv=bias_scale * mat(N, 1, KV)[:, 0])
    params = {"embed": rng.standard_normal((V, D)).astype(np.float32), "blocks": blocks,
              "final_norm": norm(D)}
    if not cfg.tied_embeddings:
        params["lm_head"] = mat(D, V)
    return params


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, on HF-layout rows (out x in, or a bias)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_state(cfg: LMConfig, params: dict) -> dict[str, np.ndarray]:
    """HF parameter name -> tensor in HF's layout (nn.Linear weights are out x in)."""
    b = params["blocks"]
    out = {"model.embed_tokens.weight": params["embed"], "model.norm.weight": params["final_norm"]}
    if "lm_head" in params:
        out["lm_head.weight"] = params["lm_head"].T
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": b["attn_norm"][i],
                p + "post_attention_layernorm.weight": b["mlp_norm"][i],
                p + "self_attn.q_proj.weight": b["wq"][i].T, p + "self_attn.k_proj.weight": b["wk"][i].T,
                p + "self_attn.v_proj.weight": b["wv"][i].T, p + "self_attn.o_proj.weight": b["wo"][i].T,
                p + "mlp.gate_proj.weight": b["w_gate"][i].T, p + "mlp.up_proj.weight": b["w_up"][i].T,
                p + "mlp.down_proj.weight": b["w_down"][i].T}
        if cfg.attn_bias:
            out |= {p + "self_attn.q_proj.bias": b["bq"][i], p + "self_attn.k_proj.bias": b["bk"][i],
                    p + "self_attn.v_proj.bias": b["bv"][i]}
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def gguf_state(cfg: LMConfig, params: dict) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 tensor as llama.cpp's converter writes it (Q/K rows permuted for
    Llama; as they are for Qwen2)."""
    hf = hf_state(cfg, params)
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    if "lm_head.weight" in hf:
        out["output.weight"] = hf["lm_head.weight"]
    names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(cfg.layers):
        for h, g in names.items():
            if (w := hf.get(f"model.layers.{i}.{h}")) is None:
                continue
            if cfg.family == "llama" and g.startswith("attn_q."):
                w = llamacpp_permute(w, cfg.heads)
            elif cfg.family == "llama" and g.startswith("attn_k."):
                w = llamacpp_permute(w, cfg.kv_heads)
            out[f"blk.{i}.{g}"] = np.ascontiguousarray(w)
    return out


def hf_config(cfg: LMConfig) -> dict:
    """config.json as transformers' LlamaConfig / Qwen2Config (4.x, as the Hub's files are) write it."""
    sizes = {"vocab_size": cfg.vocab, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn,
             "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
             "hidden_act": "silu", "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
             "tie_word_embeddings": cfg.tied_embeddings, "max_position_embeddings": cfg.max_positions,
             "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id, "torch_dtype": "float32"}
    if cfg.family == "qwen2":  # Qwen2Config: no attention_bias (always biased), no head_dim, no pad id
        assert cfg.head_dim * cfg.heads == cfg.d_model
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **sizes, "attention_dropout": 0.0,
                "initializer_range": 0.02, "max_window_layers": cfg.layers, "sliding_window": cfg.max_positions,
                "use_sliding_window": False, "use_cache": True, "transformers_version": "4.43.1"}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **sizes, "head_dim": cfg.head_dim,
            "rope_scaling": None, "attention_bias": cfg.attn_bias, "pad_token_id": cfg.pad_id}


def write_hf(directory: Path, cfg: LMConfig, params: dict, tok: Tokenizer) -> Path:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    save_file(hf_state(cfg, params), str(directory / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(directory / "tokenizer.json"))
    bos = SPECIAL[cfg.bos_id] if cfg.family == "llama" else None  # Qwen2's tokenizer_config has bos_token null
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer" if cfg.family == "llama" else "Qwen2Tokenizer", "bos_token": bos,
        "eos_token": SPECIAL[cfg.eos_id], "pad_token": SPECIAL[tokenizer_pad(cfg)], "unk_token": SPECIAL[0] if bos else None,
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_positions,
        "chat_template": CHAT_TEMPLATE}, indent=2))
    return directory


def write_gguf(path: Path, cfg: LMConfig, params: dict, tok: Tokenizer, quant: dict | None = None,
               pre: str = "smollm", add_bos: bool = False) -> Path:
    """A GGUF file as llama.cpp's converter writes it; `quant`: tensor name suffix -> GGML type;
    `pre`: tokenizer.ggml.pre (name of the pre-tokenizer `tok` was trained with)."""
    quant = quant or {}
    w = gguf.GGUFWriter(str(path), cfg.family)  # general.architecture, and the prefix of the keys below
    w.add_block_count(cfg.layers)
    w.add_context_length(cfg.max_positions)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.ffn)
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.kv_heads)
    llama = cfg.family == "llama"  # Qwen2's converter leaves out head_dim (= d / heads) and the vocabulary size
    if llama:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    if llama:
        w.add_vocab_size(cfg.vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([tok.id_to_token(i) for i in range(tok.get_vocab_size())])
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    w.add_token_types([gguf.TokenType.CONTROL if tok.id_to_token(i) in special else gguf.TokenType.NORMAL
                       for i in range(tok.get_vocab_size())])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(cfg.bos_id)
    w.add_eos_token_id(cfg.eos_id)
    w.add_pad_token_id(tokenizer_pad(cfg))
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, t in gguf_state(cfg, params).items():
        qtype = next((q for suffix, q in quant.items() if name.endswith(suffix)), None)
        if qtype is None or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny(directory, *, seed: int = 0, tied: bool = False, attn_bias: bool = False) -> dict:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    cfg = LMConfig(family="llama", vocab=tok.get_vocab_size(), rope_theta=10_000.0, norm_eps=1e-5,
                   tied_embeddings=tied, attn_bias=attn_bias, max_positions=256,
                   bos_id=BOS, eos_id=EOS, pad_id=PAD, **SIZES)
    params = random_params(cfg, seed)
    return dict(hf_dir=write_hf(directory / "hf", cfg, params, tok),
                gguf=write_gguf(directory / "tiny-f32.gguf", cfg, params, tok),
                gguf_quant=write_gguf(directory / "tiny-quant.gguf", cfg, params, tok, QUANT),
                cfg=cfg, params=params)


def write_tiny_qwen2(directory, *, seed: int = 0, tied: bool = False) -> dict:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer("qwen2")
    cfg = LMConfig(family="qwen2", vocab=tok.get_vocab_size(), rope_theta=1e6, norm_eps=1e-6,
                   tied_embeddings=tied, attn_bias=True, max_positions=256,
                   bos_id=QWEN2_BOS, eos_id=QWEN2_EOS, pad_id=None, **SIZES)
    params = random_params(cfg, seed, bias_scale=1.0)
    return dict(hf_dir=write_hf(directory / "hf", cfg, params, tok),
                gguf=write_gguf(directory / "tiny-qwen2-f32.gguf", cfg, params, tok, pre="qwen2"),
                gguf_quant=write_gguf(directory / "tiny-qwen2-quant.gguf", cfg, params, tok, QUANT, pre="qwen2"),
                cfg=cfg, params=params)


def leaves(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def assert_identical(a, b):
    """The same pytree keys, dtypes and shapes, and the same values bit for bit."""
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k].dtype == lb[k].dtype and la[k].shape == lb[k].shape, k
        assert np.array_equal(la[k].view(np.uint8), lb[k].view(np.uint8)), k
