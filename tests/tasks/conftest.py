"""Fixtures shared by tests/tasks' text-task and text-reward tests."""
import pytest

from tests.lm.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    """tests/lm/tiny.py's tokenizer as sim.lm's Tokenizer (no BOS added)."""
    return tiny_tokenizer()
