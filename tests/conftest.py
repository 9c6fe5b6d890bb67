"""Shared helpers: compose the real config files with overrides, as a user would."""
from __future__ import annotations

import os
import signal
import shutil
import tempfile

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sim import runtime
from sim.config import parse
from sim.run import CONF_DIR

runtime.set_xla_flags()  # as a run has them (the JAX backend starts after this, at first use)


def pytest_configure(config):
    """One fresh XLA compilation cache for the whole session, shared by this process, its xdist
    workers and every `python -m sim.run` they start (conf/config.yaml reads $SIM_COMPILATION_CACHE):
    a program compiled by one test is loaded, not compiled again, by the next test or subprocess that
    needs it. The runtime is a run's (flags, unrolled threefry, one CPU device per core), so the
    programs are the same. A hook, not module code: scripts that import this module (tests'
    subprocesses) set their own. xdist workers inherit the controller's cache (its environment is
    theirs); only the process that made it removes it."""
    inherited = os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("SIM_COMPILATION_CACHE")
    config.sim_jax_cache = inherited or tempfile.mkdtemp(prefix="sim-tests-jax-")
    config.sim_jax_cache_owned = not inherited
    os.environ["SIM_COMPILATION_CACHE"] = config.sim_jax_cache
    runtime.configure(config.sim_jax_cache, "auto")


def pytest_unconfigure(config):
    if getattr(config, "sim_jax_cache_owned", False):
        shutil.rmtree(config.sim_jax_cache, ignore_errors=True)


# Small enough to compile and run in a couple of seconds on 2 cores.
SMALL = ["seeds=4", "steps=20", "log_every=5", "task.prompts=4", "plots=false"]
# A neural policy small enough for tests: V^L = 6^4 responses are enumerated exactly.
NEURAL = ["task.length=4", "task.vocab=6", "task.phi.positions=[0,1]", "task.phi.good_tokens=[0,1]",
          "task.phi_prime.positions=[2,3]", "task.phi_prime.good_tokens=[2,3]", "policy.d_model=16",
          "policy.hidden=32", "policy.sft.steps=150", "policy.sft.batch=128"]


@pytest.fixture(autouse=True, scope="session")
def sft_cache_dir(tmp_path_factory):
    """Tests never read or write the user's SFT cache (subprocesses inherit the variable)."""
    old = os.environ.get("SIM_CACHE_DIR")
    os.environ["SIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("sim-cache"))
    yield os.environ["SIM_CACHE_DIR"]
    if old is None:
        del os.environ["SIM_CACHE_DIR"]
    else:
        os.environ["SIM_CACHE_DIR"] = old


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


def crash_at_chunk(monkeypatch, plain: dict, out, chunk: int = 4) -> None:
    """run_experiment(plain) into `out`, crashing (RuntimeError) where the `chunk`-th checkpoint would
    be saved: after that chunk's rows are written, before its checkpoint. Checkpointing is restored
    afterwards, so the caller can resume."""
    from sim.output.snapshots import Checkpoints
    from sim.experiment import run_experiment

    save, calls = Checkpoints.maybe_save, []

    def crash(self, snap):
        calls.append(1)
        if len(calls) == chunk:
            raise RuntimeError("crash")
        return save(self, snap)

    monkeypatch.setattr(Checkpoints, "maybe_save", crash)
    with pytest.raises(RuntimeError, match="crash"):
        run_experiment(parse(plain), plain, out)
    monkeypatch.setattr(Checkpoints, "maybe_save", save)


@pytest.fixture(autouse=True)
def _default_sigint_handler():
    """Every test starts and ends with Python's own SIGINT handler: a test (or a library it loads)
    that leaves SIGINT ignored in a pytest-xdist worker silently breaks the Ctrl-C tests that run
    after it there, and the child processes they start inherit the ignored signal."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)

