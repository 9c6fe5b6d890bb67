import csv
import json
import os
import re

import numpy as np
import pytest

from sim.output import rundir
from sim.config import ConfigError


def test_config_hash_ignores_execution_options_only():
    cfg = {"steps": 10, "seeds": 2}
    assert rundir.config_hash(cfg) == rundir.config_hash(dict(cfg, overwrite=True, resume=False, checkpoint_seconds=0))
    assert rundir.config_hash(cfg) != rundir.config_hash(dict(cfg, steps=11))
    assert rundir.config_hash(cfg) != rundir.config_hash(dict(cfg, chunk_steps=5))


def test_git_commit_names_a_full_commit_when_sim_is_in_a_checkout():
    git = rundir.git_commit()
    assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool))


def _fake_run(out, cfg_hash, complete=False):
    out.mkdir(parents=True, exist_ok=True)
    (out / "provenance.json").write_text(json.dumps({"config_hash": cfg_hash}))
    (out / "metrics.csv").write_text("run,step\n")
    if complete:
        (out / "summary.json").write_text("{}")


def test_plan_for_each_kind_of_run_directory(tmp_path):
    assert rundir.plan(tmp_path / "new", "h", resume=True, overwrite=False) == "fresh"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")  # not a run: nothing of ours there
    assert rundir.plan(tmp_path / "notes", "h", resume=True, overwrite=False) == "fresh"
    _fake_run(tmp_path / "done", "h", complete=True)
    assert rundir.plan(tmp_path / "done", "h", resume=False, overwrite=False) == "done"
    assert rundir.plan(tmp_path / "done", "h", resume=True, overwrite=True) == "fresh"
    _fake_run(tmp_path / "cut", "h")
    assert rundir.plan(tmp_path / "cut", "h", resume=True, overwrite=False) == "resume"
    with pytest.raises(ConfigError, match="holds an interrupted run of this configuration; pass resume=true"):
        rundir.plan(tmp_path / "cut", "h", resume=False, overwrite=False)
    for other in ("done", "cut"):
        with pytest.raises(ConfigError, match="holds a run of another configuration .*config_hash h;.*overwrite=true"):
            rundir.plan(tmp_path / other, "g", resume=True, overwrite=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.yaml").write_text("a: 1")  # someone else's config.yaml
    with pytest.raises(ConfigError, match="no provenance.json"):
        rundir.plan(tmp_path / "foreign", "h", resume=True, overwrite=False)


def test_clear_removes_run_outputs_and_nothing_else(tmp_path):
    _fake_run(tmp_path, "h", complete=True)
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    (tmp_path / "mine.txt").write_text("keep me")
    rundir.clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_streamed_metrics_csv_does_not_depend_on_chunks_and_reset_drops_later_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = {"phi": rng.random((5, 3)).astype(np.float32), "diverged_at_step": np.full((5, 3), -1, np.int32)}
    steps, cols = np.arange(5) * 10, {"run": np.arange(3)}

    def table(name, pieces, reset_at=None):
        out = rundir.MetricsCsv(tmp_path / name, ("phi", "diverged_at_step"), steps, cols)
        for upto in pieces:
            if upto == reset_at:
                out.reset({k: v[:upto] for k, v in rows.items()})
            else:
                out.extend({k: v[:upto] for k, v in rows.items()})
        return (tmp_path / name).read_text()

    whole = table("a.csv", [5])
    assert whole == table("b.csv", [1, 2, 4, 5])
    # a file with rows past a checkpoint (written before the kill) is cut back, then continued
    assert whole == table("c.csv", [1, 3, 2, 5], reset_at=2)
    parsed = list(csv.reader(whole.splitlines()))
    assert parsed[0] == ["run", "step", "phi", "diverged_at_step"] and len(parsed) == 1 + 5 * 3
    assert [r[:2] for r in parsed[1:4]] == [["0", "0"], ["1", "0"], ["2", "0"]]  # step order
    assert float(parsed[5][2]) == float(rows["phi"][1, 1])  # exact float32 value survives the text


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    rundir.write_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_metrics_csv_lines_end_in_lf_not_crlf(tmp_path):
    """Every tool expects LF; the csv module writes CRLF unless told otherwise."""
    rows = {"phi": np.zeros((3, 2), np.float32), "diverged_at_step": np.full((3, 2), -1, np.int32)}
    table = rundir.MetricsCsv(tmp_path / "m.csv", ("phi", "diverged_at_step"), np.arange(3) * 5, {"run": np.arange(2)})
    table.extend({k: v[:2] for k, v in rows.items()})  # the first write (reset), then an append
    table.extend(rows)
    data = (tmp_path / "m.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 1 + 3 * 2 and data.endswith(b"\n")


def test_claim_locks_the_directory_names_its_holder_and_a_closed_lock_is_free(tmp_path):
    out = tmp_path / "a" / "run"
    assert rundir.running(out) is None and not out.exists()  # probing creates nothing
    fd = rundir.claim(out, "abc")  # flock: a second open file, even in this process, is refused
    try:
        assert re.fullmatch(r"pid \d+ on .*, started .* UTC, config_hash abc", rundir.running(out))
        with pytest.raises(ConfigError, match=r"run: in use by a running sim \(pid \d+ .*config_hash abc\)"):
            rundir.claim(out, "def")
    finally:
        os.close(fd)
    assert rundir.running(out) is None
    os.close(rundir.claim(out, "def"))
    rundir.clear(out)  # the lock file is not a run output: it stays, and does not make a run
    assert [p.name for p in out.iterdir()] == [rundir.LOCK_FILE]
    assert rundir.plan(out, "h", resume=True, overwrite=False) == "fresh"
