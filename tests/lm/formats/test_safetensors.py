"""sim/lm/formats/safetensors.py: a Hugging Face directory whose weights are sharded over several
safetensors files listed in model.safetensors.index.json."""
from __future__ import annotations

import json

from safetensors.numpy import save_file

from sim.lm import weights as ck
from tests.lm.tiny import assert_identical, hf_state


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
