"""The on-disk cache of SFT references: reused when the configuration is the same, retrained when not."""
import jax
import numpy as np
import pytest

from sim.stages import references as reference
from sim.policies import sft
from sim.rl.sweep import expand
from tests.conftest import SMALL, experiment

TINY = SMALL + ["policy=mlp", "policy.d_model=4", "policy.hidden=8", "policy.layers=1", "policy.sft.steps=4",
                "policy.sft.batch=8", "task.length=4", "task.phi.positions=[0,1]", "task.phi_prime.positions=[2,3]"]


def _prepare(tmp_path, *overrides):
    """Four runs at two competence points (phi_prime 0.9, 0.3, 0.9, 0.3), as a sweep would give."""
    exp = experiment(TINY + [f"runtime.sft_cache={tmp_path}", *overrides])
    hp_R = expand(exp).hparams_R
    hp_R["competence_phi_prime"] = np.array([0.9, 0.3, 0.9, 0.3], np.float32)
    return reference.prepare(exp, hp_R)


def _no_training(*args, **kwargs):
    raise AssertionError("SFT ran although its reference was cached")


def test_one_reference_per_point_reused_from_the_cache_and_retrained_when_the_point_changes(tmp_path, monkeypatch):
    first = _prepare(tmp_path)
    assert [p["competence_phi_prime"] for p in first.points] == pytest.approx([0.3, 0.9])
    assert [p["cached"] for p in first.points] == [False, False] and len(list(tmp_path.glob("*.npz"))) == 2
    leaf_R = jax.tree.leaves(first.params_R)[0]  # runs of a point share its reference
    np.testing.assert_array_equal(leaf_R[0], leaf_R[2])
    assert not np.array_equal(leaf_R[0], leaf_R[1])

    with monkeypatch.context() as m:
        m.setattr(sft, "train", _no_training)
        again = _prepare(tmp_path, "optim.lr=0.1", "algo.kl.beta=1")  # numbers SFT does not read
    assert [p["cached"] for p in again.points] == [True, True]
    for a, b in zip(jax.tree.leaves(first.params_R), jax.tree.leaves(again.params_R)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.loss_KxS, again.loss_KxS)
    assert [p["measured"] for p in again.points] == [p["measured"] for p in first.points]

    # other competences: trained (same shapes, so the compiled SFT program is reused)
    assert [p["cached"] for p in _prepare(tmp_path, "task.phi.competence=0.3").points] == [False, False]
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_the_cache_key_changes_with_everything_that_determines_the_reference():
    def key(*overrides, competence_3=(0.2, 0.9, 0.0)):
        return reference.cache_key(experiment(TINY + list(overrides)), np.array(competence_3, np.float32))

    base = key()
    assert key("optim.lr=0.1", "seeds=2", "algo.kl.beta=1", "policy.eval.samples=4", "runtime.sft_cache=/x") == base
    changed = [key(c) for c in ("policy.sft.steps=5", "policy.sft.lr=0.1", "policy.sft.seed=1", "policy.sft.batch=9",
                                "policy.hidden=6", "policy.window=1", "task.seed=1", "task.vocab=17",
                                "task.phi.shape=all")]
    changed.append(key(competence_3=(0.2, 0.9, 0.1)))
    assert len({base, *changed}) == 1 + len(changed)


def test_an_unreadable_or_misshapen_cache_file_is_retrained(tmp_path):
    garbage, misshapen = (tmp_path / p["file"].rsplit("/", 1)[-1] for p in _prepare(tmp_path).points)
    garbage.write_bytes(b"not a zip file")
    np.savez(misshapen, leaf_0=np.zeros(3))
    assert [p["cached"] for p in _prepare(tmp_path).points] == [False, False]
    assert [p["cached"] for p in _prepare(tmp_path).points] == [True, True]
