import os

import jax
import numpy as np
import pytest

from sim.output.snapshots import CheckpointError, Checkpoints
from sim.rl.sweep import expand
from sim.rl.train import make_train, run_keys, snapshot_template


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
    # the latest two are kept (the one before is the fallback), named by their training step
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [str(s * exp.static.log_every) for s in (2, 3)]


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


def _same(a, b):
    for x, y in zip(jax.tree.leaves((a.state, a.rows)), jax.tree.leaves((b.state, b.rows))):
        np.testing.assert_array_equal(x, y)


def _truncate_data(step_dir):
    """Halve the largest file of the state's data (the one orbax reads: found by trying)."""
    data = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: (p.parent.parent.name == "state", p.stat().st_size))
    os.truncate(data, data.stat().st_size // 2)


@pytest.mark.parametrize("damage", ["truncated state file", "emptied metadata"])
def test_a_damaged_latest_checkpoint_is_set_aside_for_the_one_before(small, tmp_path, damage):
    exp = small()
    batch, snaps = _snapshots(exp)
    template = lambda rows: snapshot_template(exp.static, batch.hparams_R, run_keys(batch.seeds_R), rows)  # noqa: E731
    ckpt = Checkpoints(tmp_path / "ck", "abc", exp.static.log_every)
    for snap in snaps[:3]:
        ckpt.save(snap)
    ckpt.close()
    latest = tmp_path / "ck" / str(3 * exp.static.log_every)
    if damage == "emptied metadata":
        (latest / "meta" / "metadata").write_bytes(b"")
    else:
        _truncate_data(latest)
    ckpt = Checkpoints(tmp_path / "ck", "abc", exp.static.log_every)
    got = ckpt.latest(template)
    assert got.rows_done == 2 and [step for step, _ in ckpt.damaged] == [15]
    _same(got, snaps[1])
    assert not latest.exists()  # deleted, so that the resumed run can write step 15 again
    ckpt.save(snaps[2])  # ... which it can
    ckpt.close()
    _same(Checkpoints(tmp_path / "ck", "abc", exp.static.log_every).latest(template), snaps[2])


def test_no_readable_checkpoint_is_an_error_that_leaves_them_in_place(small, tmp_path):
    exp = small()
    batch, snaps = _snapshots(exp)
    ckpt = Checkpoints(tmp_path / "ck", "abc", exp.static.log_every)
    for snap in snaps[:2]:
        ckpt.save(snap)
    ckpt.close()
    for step_dir in (tmp_path / "ck").iterdir():
        (step_dir / "meta" / "metadata").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no checkpoint can be read \(2 damaged; the latest, at step 10: "):
        Checkpoints(tmp_path / "ck", "abc", exp.static.log_every).latest(
            lambda rows: snapshot_template(exp.static, batch.hparams_R, run_keys(batch.seeds_R), rows))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["10", "5"]
