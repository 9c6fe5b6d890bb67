"""sim/lm/config.py: LMConfig's sizes and its dict form."""
from __future__ import annotations

import dataclasses

import pytest

from sim.config_values import ConfigError
from sim.lm.config import CheckpointError, LMConfig

SIZES = dict(family="llama", vocab=10, d_model=8, layers=1, head_dim=4, ffn=16)


def test_to_dict_gives_every_field_and_rebuilds_the_same_config():
    cfg = LMConfig(heads=6, kv_heads=3, rope_theta=5e5, tied_embeddings=True, eos_id=2, **SIZES)
    d = cfg.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(LMConfig)]
    assert (d["heads"], d["kv_heads"], d["rope_theta"], d["tied_embeddings"], d["eos_id"], d["pad_id"]) \
        == (6, 3, 5e5, True, 2, None)
    assert LMConfig(**d) == cfg


def test_query_heads_must_be_a_multiple_of_the_kv_heads():
    for heads, kv_heads in ((4, 4), (4, 2), (4, 1)):
        assert LMConfig(heads=heads, kv_heads=kv_heads, **SIZES).kv_heads == kv_heads
    with pytest.raises(ValueError, match="heads=6 is not a multiple of kv_heads=4"):
        LMConfig(heads=6, kv_heads=4, **SIZES)
    assert issubclass(CheckpointError, ConfigError)  # a checkpoint's problem is reported as a config's, in one line
