"""Fixtures of tests/policies/: the tiny checkpoint's frozen reference (tests/policies/tiny_pretrained.py)."""
import jax
import pytest

from sim.lm import model
from tests.policies.tiny_pretrained import CFG, _frozen


@pytest.fixture(scope="module")
def frozen():
    return _frozen(model.init_params(CFG, jax.random.key(0)))
