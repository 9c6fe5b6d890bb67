"""Session fixtures shared by every tests/lm test: one tiny checkpoint written per session."""
from __future__ import annotations

import pytest

from tests.lm.tiny import write_tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """write_tiny's dict (hf_dir, gguf, gguf_quant, cfg, params): untied head, no biases."""
    return write_tiny(tmp_path_factory.mktemp("tiny-lm"))
