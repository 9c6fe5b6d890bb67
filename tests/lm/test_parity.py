"""Optional parity with transformers: sim's model vs `LlamaForCausalLM` and `Qwen2ForCausalLM` on the
same tiny checkpoints.

Skipped (with the reason) when torch or transformers is not importable: sim's own environment has
neither, on purpose. To run it, use the peer environment of experiments/trl/requirements.txt, with
sim's own jax, optax, hydra-core and pytest installed into it, and without the xdist options:

    PYTHONPATH=$PWD /work/peer-venv/bin/python -m pytest -q -s -o addopts="" tests/lm/test_parity.py

transformers reads the HF directories (and the GGUF files) that tests/lm/tiny.py writes; sim reads
them with sim.lm.weights.load. Both run in float32 on the CPU. The tolerance, 1e-4 of the
largest |logit|, is float32 round-off for a 2-layer model (the measured difference is ~1e-6
relative); a wrong rotary layout, a missing norm or a transposed weight gives O(1) differences.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional parity environment only)")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (optional parity "
                                                          "environment only)")

from sim.lm import weights as checkpoint, model  # noqa: E402

RTOL = 1e-4


def sim_logits(source, ids_BxT: np.ndarray, mask_BxT: np.ndarray) -> np.ndarray:
    cfg, params = checkpoint.load(str(source), jnp.float32)
    ids, mask = jnp.asarray(ids_BxT), jnp.asarray(mask_BxT)
    return np.asarray(model.forward(params, cfg, ids, model.positions_from_mask(mask), mask))


def hf_logits(hf_model, ids_BxT: np.ndarray, mask_BxT: np.ndarray) -> np.ndarray:
    mask = torch.tensor(mask_BxT, dtype=torch.long)
    positions = torch.clamp(torch.cumsum(mask, -1) - 1, min=0)  # counted from the first real token
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(ids_BxT, dtype=torch.long), attention_mask=mask,
                       position_ids=positions)
    return out.logits.float().numpy()


@pytest.fixture(scope="module")
def batch(tiny):
    """Two rows of random ids; the second left-padded by 3 (pad id 2) to check masks and positions."""
    rng = np.random.default_rng(1)
    ids_BxT = rng.integers(3, tiny["cfg"].vocab, size=(2, 12)).astype(np.int32)
    mask_BxT = np.ones_like(ids_BxT, bool)
    ids_BxT[1, :3], mask_BxT[1, :3] = 2, False
    return ids_BxT, mask_BxT


def assert_close(ours, theirs, mask_BxT, what):
    real = mask_BxT  # padded queries are garbage on both sides by design
    diff = np.abs(ours - theirs)[real].max()
    scale = np.abs(theirs[real]).max()
    print(f"{what}: max |logits diff| = {diff:.3g} (max |logit| {scale:.3g})")
    assert diff <= RTOL * scale, f"{what}: max abs diff {diff} > {RTOL} * {scale}"


def test_hf_directory_logits_match_transformers(tiny, batch):
    ids, mask = batch
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny["hf_dir"], dtype=torch.float32).eval()
    assert_close(sim_logits(tiny["hf_dir"], ids, mask), hf_logits(hf, ids, mask), mask, "HF directory")


def test_gguf_logits_match_transformers(tiny, batch):
    """The F32 GGUF (Q/K rows in llama.cpp's permuted layout): transformers undoes the permutation
    with its own code, sim with sim.lm.weights's."""
    ids, mask = batch
    path = tiny["gguf"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    assert_close(sim_logits(path, ids, mask), hf_logits(hf, ids, mask), mask, "GGUF")


@pytest.mark.parametrize("source", ["hf_dir", "gguf"])
def test_qwen2_logits_match_transformers(tiny_qwen2, batch, source):
    """Qwen2 (q/k/v biases, rope theta 1e6, untied head): from its HF directory and from its GGUF,
    whose Q/K rows llama.cpp does not permute for this architecture."""
    ids, mask = batch
    path = tiny_qwen2[source]
    if source == "hf_dir":
        hf = transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert_close(sim_logits(path, ids, mask), hf_logits(hf, ids, mask), mask, f"Qwen2 {source}")
