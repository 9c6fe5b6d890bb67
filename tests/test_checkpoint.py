import jax
import numpy as np
import pytest

from sim.checkpoint import CheckpointError, Checkpoints
from sim.sweep import expand
from sim.train import make_train, run_keys, snapshot_template


def _snapshots(exp):
    batch = expand(exp)
    snaps = []
    make_train(exp.static, 1)(batch.hparams_R, run_keys(batch.seeds_R), on_snapshot=snaps.append)
    return batch, snaps


def test_latest_checkpoint_restores_the_snapshot_exactly(small, tmp_path):
    exp = small()
    batch, snaps = _snapshots(exp)
    template = lambda rows: snapshot_template(exp.static, batch.hparams_R, run_keys(batch.seeds_R), rows)  # noqa: E731
    ckpt = Checkpoints(tmp_path / "ck", "abc", exp.static.log_every)
    assert ckpt.latest(template) is None
    for snap in snaps[:3]:
        ckpt.save(snap)
    ckpt.close()
    got = Checkpoints(tmp_path / "ck", "abc", exp.static.log_every).latest(template)
    want = snaps[2]
    assert got.rows_done == 3 and jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves((got.state, got.rows)), jax.tree.leaves((want.state, want.rows))):
        np.testing.assert_array_equal(a, b)
    # only the latest is kept, named by its training step
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [str(3 * exp.static.log_every)]


def test_maybe_save_spaces_checkpoints_in_time(small, tmp_path):
    exp = small()
    _, snaps = _snapshots(exp)
    for seconds, saved in ((None, False), (3600.0, False), (0.0, True)):
        ckpt = Checkpoints(tmp_path / str(seconds), "abc", exp.static.log_every, every_seconds=seconds)
        assert ckpt.maybe_save(snaps[0]) == saved
        ckpt.close()
        folder = tmp_path / str(seconds)
        assert (folder.exists() and any(folder.iterdir())) == saved  # nothing saved: not even a folder


def test_a_checkpoint_of_another_configuration_is_refused(small, tmp_path):
    exp = small()
    batch, snaps = _snapshots(exp)
    ckpt = Checkpoints(tmp_path / "ck", "abc", exp.static.log_every)
    ckpt.save(snaps[0])
    ckpt.close()
    with pytest.raises(CheckpointError, match="config_hash abc"):
        Checkpoints(tmp_path / "ck", "other", exp.static.log_every).latest(
            lambda rows: snapshot_template(exp.static, batch.hparams_R, run_keys(batch.seeds_R), rows))
