"""sim/lm/formats/gguf.py: GGUF files (F32 and quantised) that tests/lm/tiny.py writes with gguf's
own writer, read back through sim.lm.weights."""
from __future__ import annotations

import gguf
import numpy as np

from sim.lm import weights as ck
from tests.lm.tiny import GGUF_OF, QUANT, assert_identical

Q8_0, Q4_1, F16 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.F16


def test_f32_gguf_loads_the_same_parameters_exactly(tiny):
    cfg, params = ck.load(str(tiny["gguf"]))
    assert cfg == tiny["cfg"]  # metadata -> the same LMConfig (float32 eps read back as 1e-05)
    assert_identical(params, tiny["params"])


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
