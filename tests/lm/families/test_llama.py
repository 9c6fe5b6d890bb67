"""sim/lm/families/llama.py: llama.cpp's Q/K row permutation undone on the tiny GGUF that
tests/lm/tiny.py writes, and the config.json a Llama config round-trips through."""
from __future__ import annotations

import json

import gguf
import numpy as np

from sim.lm import weights as ck
from sim.lm.config import LMConfig
from sim.lm.families.llama import unpermute_qk
from tests.lm.tiny import GGUF_OF


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


def test_config_json_round_trip():
    cfg = LMConfig(family="llama", vocab=10, d_model=8, layers=1, heads=2, kv_heads=1, head_dim=4, ffn=16,
                   rope_theta=5e5, norm_eps=1e-6, tied_embeddings=True, bos_id=1, eos_id=2, pad_id=None)
    assert ck.config_from_hf(json.loads(json.dumps(ck.config_to_hf(cfg)))) == cfg
