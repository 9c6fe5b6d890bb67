"""The policy-family registry (sim/policies/__init__.py): a new family is one module, one
registry line and one YAML file. The module here is this test file itself."""
from __future__ import annotations

import shutil
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sim import policies
from sim.config import ConfigError, parse
from sim.config_values import POSITIVE, real
from sim.policies.base import BuildArgs, Policy, factorised
from sim.rl.sweep import expand
from sim.rl.train import make_train, run_keys
from sim.run import CONF_DIR
from tests.conftest import SMALL

# --- the family's module: a bias over the vocabulary, shared by every (prompt, position) slot ---
KEYS = {"kind", "scale"}


@dataclass(frozen=True)
class BiasSettings:
    scale: float  # logits = reference + scale * b_V


def parse_bias(cfg) -> dict:
    return {"settings": BiasSettings(real(cfg, "policy.scale", *POSITIVE))}


def build_bias(args: BuildArgs) -> Policy:
    ref_PxLxV, scale = args.ref, args.settings.scale
    return factorised(init=lambda: jnp.zeros(ref_PxLxV.shape[-1]), logits_fn=lambda b_V: ref_PxLxV + scale * b_V)


# --- its YAML file ---
YAML = "kind: bias\nscale: 2.0\n"


@pytest.fixture
def bias_family(monkeypatch, tmp_path):
    """The registry line (undone after the test) and a copy of conf/ holding conf/policy/bias.yaml."""
    monkeypatch.setattr(policies, "FAMILIES", dict(policies.FAMILIES))
    policies.register("bias", policies.Family(policies.FACTORISED, frozenset(KEYS), parse_bias, build_bias))
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "policy" / "bias.yaml").write_text(YAML)

    def compose_bias(*overrides: str) -> dict:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose("config", overrides=["policy=bias", *SMALL, "seeds=2", "steps=10", *overrides])
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain.pop("hydra", None)
        return plain

    return compose_bias


def test_a_family_registered_from_a_test_file_is_parsed_built_and_trained(bias_family):
    exp = parse(bias_family())
    assert exp.static.policy == "bias" and exp.static.settings == BiasSettings(2.0)
    assert exp.sft is None  # a factorised family: its reference is the task's logits, no SFT stage
    batch = expand(exp)
    res = make_train(exp.static)(batch.hparams_R, run_keys(batch.seeds_R))
    V = exp.static.task.vocab
    assert res.state.params.shape == (len(exp.seeds), V)  # build_bias's params: one bias per run
    # it starts at the reference (train.py hands a factorised family the task's logits) ...
    np.testing.assert_allclose(res.metrics["kl"][0], 0.0, atol=1e-6)
    np.testing.assert_allclose(res.metrics["phi"][0], exp.hparams["competence_phi"], rtol=1e-5)
    # ... and trains: phi (weight 4 in the default reward) rises in every run
    assert np.all(res.metrics["phi"][-1] > res.metrics["phi"][0])


def test_a_registered_family_s_keys_and_values_are_checked(bias_family):
    with pytest.raises(ConfigError, match=r"^policy.scale=0: must be a finite number > 0"):
        parse(bias_family("policy.scale=0"))
    with pytest.raises(ConfigError, match=r"^policy.width: unknown key; allowed keys here are kind, scale$"):
        parse(bias_family("+policy.width=3"))


def test_policy_kind_lists_the_registered_families(bias_family):
    with pytest.raises(ConfigError, match=r"policy.kind='nope': allowed values are tabular, lowrank, mlp, gru, "
                                          r"transformer, pretrained, bias$"):
        parse({**bias_family(), "policy": {"kind": "nope"}})


def test_a_name_is_registered_once(bias_family):
    with pytest.raises(ValueError, match="already registered"):
        policies.register("bias", policies.FAMILIES["bias"])
