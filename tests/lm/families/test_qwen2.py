"""Qwen2 as a second family (sim/lm/families/qwen2.py) on tiny checkpoints that tests/lm/tiny.py
writes (an HF directory as the Hub's Qwen2 ones are, and GGUF files as llama.cpp's converter
writes them), against a float64 NumPy Qwen2 written here from the architecture (it reads the HF
tensors by their names and shares no code with sim.lm.model)."""
from __future__ import annotations

import dataclasses
import json

import gguf
import jax
import numpy as np
import pytest

from sim.config_values import ConfigError
from sim.lm import model, tokenizer as tokenizer_lib, weights
from sim.lm.config import LMConfig
from sim.lm.families import FAMILIES, qwen2
from sim.lm.families.llama import unpermute_qk
from tests.lm.tiny import QUANT, QWEN2_PAD, assert_identical, hf_state, write_tiny_qwen2

# What the tiny checkpoint's config.json says, written out here (not read back through the code)
EXPECTED = LMConfig(family="qwen2", vocab=300, d_model=64, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=128,
                    rope_theta=1e6, norm_eps=1e-6, tied_embeddings=False, attn_bias=True, max_positions=256,
                    bos_id=0, eos_id=2, pad_id=None)
forward = jax.jit(model.forward, static_argnums=(1, 5))


def numpy_qwen2(state: dict, conf: dict, ids_BxT: np.ndarray, mask_BxT: np.ndarray) -> np.ndarray:
    """Logits, float64, from HF-named tensors and config.json's fields: y = x W^T + b with biases
    on q, k, v only; rotate-half rotary at theta^(-2i/Dh) on positions counted from the first real
    token; key/value head j serving query heads j*G .. j*G+G-1; RMSNorm; SiLU-gated MLP."""
    s = {k: np.asarray(v, np.float64) for k, v in state.items()}
    B, T = ids_BxT.shape
    H, K = conf["num_attention_heads"], conf["num_key_value_heads"]
    Dh = conf["hidden_size"] // H
    eps, theta = conf["rms_norm_eps"], conf["rope_theta"]

    def rms_norm(x, w):
        return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)

    def linear(x, name):
        y = x @ s[name + ".weight"].T
        return y + s[name + ".bias"] if name + ".bias" in s else y

    pos_BxT = np.maximum(np.cumsum(mask_BxT, 1) - 1, 0)
    angle = pos_BxT[..., None] * theta ** (-np.arange(0, Dh, 2) / Dh)  # B x T x Dh/2
    cos = np.cos(np.concatenate([angle, angle], -1))[:, :, None, :]
    sin = np.sin(np.concatenate([angle, angle], -1))[:, :, None, :]

    def rope(x):  # B x T x heads x Dh
        rotated = np.concatenate([-x[..., Dh // 2:], x[..., :Dh // 2]], -1)
        return x * cos + rotated * sin

    visible_BxTxS = np.tril(np.ones((T, T), bool))[None] & mask_BxT[:, None, :].astype(bool)
    x = s["model.embed_tokens.weight"][ids_BxT]
    for i in range(conf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, s[p + "input_layernorm.weight"])
        q = rope(linear(h, p + "self_attn.q_proj").reshape(B, T, H, Dh))
        k = np.repeat(rope(linear(h, p + "self_attn.k_proj").reshape(B, T, K, Dh)), H // K, axis=2)
        v = np.repeat(linear(h, p + "self_attn.v_proj").reshape(B, T, K, Dh), H // K, axis=2)
        scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(Dh)
        scores = np.where(visible_BxTxS[:, None], scores, -1e300)  # a padded query: garbage, not compared
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        x = x + linear(np.einsum("bhts,bshd->bthd", w, v).reshape(B, T, H * Dh), p + "self_attn.o_proj")
        h = rms_norm(x, s[p + "post_attention_layernorm.weight"])
        g = linear(h, p + "mlp.gate_proj")
        x = x + linear(g / (1 + np.exp(-g)) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms_norm(x, s["model.norm.weight"])
    return x @ s.get("lm_head.weight", s["model.embed_tokens.weight"]).T


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and isinstance(excinfo.value, ConfigError)
    return msg


@pytest.fixture(scope="module")
def batch():
    """Two rows of ids; the second left-padded by 3."""
    ids = np.random.default_rng(7).integers(3, EXPECTED.vocab, size=(2, 12)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    ids[1, :3], mask[1, :3] = QWEN2_PAD, False
    return ids, mask


def rel_err(ours, ref, mask) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref)[mask].max() / np.abs(ref[mask]).max())


def sim_logits(source, ids, mask):
    cfg, params = weights.load(str(source))
    return np.asarray(forward(params, cfg, ids, model.positions_from_mask(mask), mask, False))


# ---------------------------------------------------------------------------- logits

@pytest.mark.parametrize("source", ["hf_dir", "gguf"])
def test_logits_equal_the_float64_reference_on_the_weights_written(tiny_qwen2, batch, source):
    ids, mask = batch
    conf = json.loads((tiny_qwen2["hf_dir"] / "config.json").read_text())
    ref = numpy_qwen2(hf_state(tiny_qwen2["cfg"], tiny_qwen2["params"]), conf, ids, mask)
    assert np.abs(ref[mask]).max() > 1.0  # not a comparison of near-zero numbers
    err = rel_err(sim_logits(tiny_qwen2[source], ids, mask), ref, mask)
    print(f"{source}: max |sim - float64 reference| / max |logit| = {err:.2g}")
    assert err < 1e-5


def test_the_reference_sees_the_biases_and_the_rope_theta(tiny_qwen2, batch):
    """What makes Qwen2 differ from Llama changes the logits far beyond the tolerance above, so a
    loader that dropped the biases or a model that ignored rope_theta would fail that test."""
    ids, mask = batch
    conf = json.loads((tiny_qwen2["hf_dir"] / "config.json").read_text())
    state = hf_state(tiny_qwen2["cfg"], tiny_qwen2["params"])
    ref = numpy_qwen2(state, conf, ids, mask)
    no_bias = {k: v for k, v in state.items() if not k.endswith("_proj.bias")}
    assert rel_err(numpy_qwen2(no_bias, conf, ids, mask), ref, mask) > 1e-2
    assert rel_err(numpy_qwen2(state, conf | {"rope_theta": 1e4}, ids, mask), ref, mask) > 1e-3


# ---------------------------------------------------------------------------- loading

def test_hf_directory_loads_the_config_and_weights_written(tiny_qwen2):
    cfg, params = weights.load(str(tiny_qwen2["hf_dir"]))
    assert cfg == EXPECTED
    assert set(params["blocks"]) >= {"bq", "bk", "bv"} and "lm_head" in params
    assert_identical(params, tiny_qwen2["params"])


def test_gguf_holds_qk_rows_unpermuted_and_loads_the_same_weights(tiny_qwen2):
    """llama.cpp's Qwen2 converter writes Q/K as HF has them; applying Llama's un-permutation
    (what a loader treating qwen2 as llama would do) gives other weights."""
    cfg, params = weights.load(str(tiny_qwen2["gguf"]))
    assert cfg == dataclasses.replace(EXPECTED, pad_id=QWEN2_PAD)  # the GGUF carries the tokenizer's pad id
    assert_identical(params, tiny_qwen2["params"])
    reader = gguf.GGUFReader(tiny_qwen2["gguf"])
    assert reader.fields["general.architecture"].contents() == "qwen2"
    stored = {t.name: np.asarray(t.data) for t in reader.tensors}
    for key, name, heads in (("wq", "attn_q", cfg.heads), ("wk", "attn_k", cfg.kv_heads)):
        hf_rows = tiny_qwen2["params"]["blocks"][key][0].T
        np.testing.assert_array_equal(stored[f"blk.0.{name}.weight"], hf_rows)
        assert not np.array_equal(unpermute_qk(stored[f"blk.0.{name}.weight"], heads), hf_rows)
    np.testing.assert_array_equal(stored["blk.0.attn_k.bias"], tiny_qwen2["params"]["blocks"]["bk"][0])


def test_quantised_gguf_equals_gguf_dequantisation_of_the_hf_rows(tiny_qwen2):
    _, params = weights.load(str(tiny_qwen2["gguf_quant"]))
    orig = tiny_qwen2["params"]["blocks"]
    for key, name in (("wq", "attn_q.weight"), ("wk", "attn_k.weight"), ("w_gate", "ffn_gate.weight")):
        for i in range(EXPECTED.layers):
            hf_w = orig[key][i].T
            want = gguf.quants.dequantize(gguf.quants.quantize(hf_w, QUANT[name]), QUANT[name])
            np.testing.assert_array_equal(np.asarray(params["blocks"][key][i]).T, want)


def test_tied_head(tmp_path):
    t = write_tiny_qwen2(tmp_path, seed=1, tied=True)
    for source in (t["hf_dir"], t["gguf"]):
        cfg, params = weights.load(str(source))
        assert cfg.tied_embeddings and cfg.attn_bias and "lm_head" not in params
        assert_identical(params, t["params"])


def test_headers_give_every_tensor_shape(tiny_qwen2):
    for source in ("hf_dir", "gguf", "gguf_quant"):
        cfg, shapes = weights.read_header(str(tiny_qwen2[source]))
        assert cfg.family == "qwen2" and shapes["model.layers.1.self_attn.v_proj.bias"] == (32,)
        weights.check_header(cfg, shapes)


# ---------------------------------------------------------------------------- config.json

def test_transformers_5_config_reads_the_same():
    """transformers 5's Qwen2Config writes rope_theta inside rope_parameters and one layer_types
    entry per layer (what it printed for these sizes)."""
    hf = {"model_type": "qwen2", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
          "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 256,
          "max_window_layers": 28, "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
          "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": False,
          "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": None}
    assert weights.config_from_hf(hf) == EXPECTED


@pytest.mark.parametrize("change, words", [
    ({"use_sliding_window": True}, "config.json use_sliding_window=True is not supported; allowed: false"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types holds sliding_attention"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "rope_scaling="),
])
def test_what_the_model_does_not_implement_is_refused_in_one_line(tiny_qwen2, change, words):
    hf = json.loads((tiny_qwen2["hf_dir"] / "config.json").read_text())
    with pytest.raises(weights.CheckpointError) as e:
        weights.config_from_hf(hf | change)
    assert words in one_line(e)


def test_config_json_round_trip_and_save_hf(tiny_qwen2, tmp_path):
    hf = qwen2.config_to_hf(EXPECTED)
    assert hf["model_type"] == "qwen2" and "attention_bias" not in hf and "head_dim" not in hf
    assert weights.config_from_hf(json.loads(json.dumps(hf))) == EXPECTED
    cfg, params = weights.load(str(tiny_qwen2["gguf_quant"]))
    weights.save_hf(tmp_path / "out", cfg, params)
    cfg2, params2 = weights.load(str(tmp_path / "out"))
    assert cfg2 == cfg
    assert_identical(params2, params)
    with pytest.raises(weights.CheckpointError) as e:
        qwen2.config_to_hf(dataclasses.replace(EXPECTED, attn_bias=False))
    assert "attn_bias=False" in one_line(e)


def test_both_families_are_registered_and_others_refused(tiny_qwen2):
    assert set(FAMILIES) == {"llama", "qwen2"}
    hf = json.loads((tiny_qwen2["hf_dir"] / "config.json").read_text())
    with pytest.raises(weights.CheckpointError) as e:
        weights.config_from_hf(hf | {"model_type": "qwen3"})
    assert one_line(e) == "config.json model_type='qwen3' is not supported; supported: llama, qwen2"


# ---------------------------------------------------------------------------- tokenizer

TEXTS = ["In 2024 there were 365 days.", "She said: \"it's fine\", they'll see.\n\n  Done?",
         "<|im_start|>user\nHi<|im_end|>\n"]


def test_gguf_tokenizer_with_pre_qwen2_matches_the_tokenizer_json(tiny_qwen2):
    """tokenizer.ggml.pre "qwen2" builds sim's QWEN2_REGEX split, which must cut text as Qwen2's
    tokenizer.json does: digits one by one, contractions case-insensitively, newlines apart."""
    from_hf, from_gguf = tokenizer_lib.load(str(tiny_qwen2["hf_dir"])), tokenizer_lib.load(str(tiny_qwen2["gguf"]))
    for text in TEXTS:
        assert from_gguf.encode(text) == from_hf.encode(text), text
    digits = from_gguf.encode("2024")
    assert [from_gguf.decode([i]) for i in digits] == ["2", "0", "2", "4"]
    assert from_gguf.encode(TEXTS[2])[0] == 1  # <|im_start|> is one special token
    for tok in (from_hf, from_gguf):
        assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (0, 2, 0, False)
