"""Shared helpers: compose the real config files with overrides, as a user would."""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "")

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sim.config import parse
from sim.run import CONF_DIR

# Small enough to compile and run in a couple of seconds on 2 cores.
SMALL = ["seeds=4", "steps=20", "log_every=5", "task.prompts=4", "plots=false"]


def compose_plain(overrides: list[str] = ()) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=list(overrides))
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return plain


def experiment(overrides: list[str] = ()):
    return parse(compose_plain(list(overrides)))


@pytest.fixture
def small():
    return lambda *extra: experiment(SMALL + list(extra))
