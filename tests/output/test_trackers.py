"""sim/output/trackers.py: `logger` streams what metrics.csv holds, under TRL's names, to TensorBoard, W&B
(offline) and MLflow (a file store), each read back with its own reader: TensorBoard's
EventAccumulator, the W&B run's .wandb file through W&B's own Record protobuf, MlflowClient."""
import contextlib
import csv
import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sim.output import trackers
from sim.config import ConfigError, parse
from sim.experiment import run_experiment
from sim.run import preflight
from sim.output.trackers import flat_config, tracker_name
from tests.conftest import SMALL, compose_plain, crash_at_chunk

# One 2-point sweep of 2 seeds (4 runs) with chunks of 5 steps, for every test that trains: one
# compiled program (the logger is no part of it), so each further run costs only its trackers.
RUN = SMALL + ["seeds=2", "optim.lr=[0.05,0.1]", "analysis=none", "chunk_steps=5"]
NOT_METRICS = ("run", "seed", "point", "step", "optim.lr")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Nothing reaches the network or the user's home: W&B offline, its caches and settings here."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the test (sim sets it)


def _rows(path: Path) -> tuple[list[dict], list[str]]:
    rows = list(csv.DictReader(open(path / "metrics.csv")))
    return rows, [k for k in rows[0] if k not in NOT_METRICS]


def _same(got: float, want: str) -> bool:
    """A tracker's float32 value against metrics.csv's 9 significant digits; NaN where it is NaN."""
    w = float(want)
    return (math.isnan(got) and math.isnan(w)) or got == pytest.approx(w, rel=1e-7, abs=1e-12)


def test_flat_config_names_every_leaf_by_its_dotted_key():
    assert flat_config({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": None, "g": True}) == {
        "a.b": 1, "a.c.d": "x", "e": "[1, 2]", "f": "None", "g": True}


def test_trl_names_for_the_batch_statistics_and_policy_for_the_expectations():
    assert [tracker_name(n) for n in ("phi_sampled", "phi_std_sampled", "phi_prime_sampled", "reward_sampled",
                                      "reward_std_sampled", "frac_reward_zero_std", "kl_sampled", "entropy_sampled",
                                      "clip_frac", "loss", "grad_norm")] == [
        "rewards/phi/mean", "rewards/phi/std", "rewards/phi_prime/mean", "reward", "reward_std",
        "frac_reward_zero_std", "kl", "entropy", "clip_ratio/region_mean", "loss", "grad_norm"]
    # sim's expectations under the policy would clash with TRL's batch names: policy/...
    assert [tracker_name(n) for n in ("phi", "reward", "kl", "entropy", "kl_se", "spill")] == [
        "policy/phi", "policy/reward", "policy/kl", "policy/entropy", "policy/kl_se", "policy/spill"]
    assert tracker_name("quad_frac_ud") == "quad_frac_ud" and tracker_name("kappa_phi") == "kappa_phi"


def test_logger_takes_a_list_and_refuses_what_it_cannot_do(monkeypatch):
    assert parse(compose_plain(SMALL)).logger == {}
    assert list(parse(compose_plain(SMALL + ["logger=[mlflow,tensorboard]"])).logger) == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match=r"logger=\[tensorboard,wandb\]: .* record=points"):
        parse(compose_plain(SMALL + ["logger=[tensorboard,wandb]", "record=points"]))
    with pytest.raises(ConfigError, match=r"^logger.wandb.mode='cloud': allowed values are offline, online$"):
        parse(compose_plain(SMALL + ["logger=wandb", "logger.wandb.mode=cloud"]))
    with pytest.raises(ConfigError, match=r"^logger.mlflow.experiment='': must be a non-empty name$"):
        parse(compose_plain(SMALL + ["logger=mlflow", "logger.mlflow.experiment=''"]))
    with pytest.raises(ConfigError, match=r"logger.kind: unknown key; allowed keys here are mlflow, tensorboard, wan"):
        parse(compose_plain(SMALL + ["+logger.kind=tensorboard"]))
    # a tracker whose package is missing: the house's one line, naming logger and the extra
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r'^logger=wandb: needs the wandb package \(pip install -e "\.\[wandb\]"\)$'):
        parse(compose_plain(SMALL + ["logger=[tensorboard,wandb]"]))


def test_a_missing_tracker_package_stops_the_command_line_before_anything_is_written(tmp_path, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    err, out = io.StringIO(), tmp_path / "run"
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as refused:
        preflight(SMALL + ["logger=mlflow", f"hydra.run.dir={out}"], claim=True)
    assert refused.value.code == 2 and not out.exists()
    assert err.getvalue() == 'sim: error: logger=mlflow: needs the mlflow package (pip install -e ".[mlflow]")\n'


def wandb_records(path: Path):
    """The records of a .wandb file (W&B's transaction log), parsed with W&B's own Record protobuf.
    The framing is LevelDB's log format, as W&B documents it for its transaction log: a 7-byte file
    header (':W&B', magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) that together make one record."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def wandb_run(run_dir: Path) -> dict:
    """An offline W&B run's name, group, config, history (step -> {key: value}) and files."""
    out = {"history": {}, "files": []}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out |= {"name": record.run.display_name, "group": record.run.run_group, "job_type": record.run.job_type,
                    "config": {c.key: json.loads(c.value_json) for c in record.run.config.update}}
        elif kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            out["history"][items["_step"]] = items
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
    return out


def test_every_tracker_holds_the_numbers_of_metrics_csv_under_trls_names(tmp_path):
    """logger=[tensorboard,wandb,mlflow] on one 4-run sweep: every run's TensorBoard run, W&B run and
    MLflow run holds, for every metric column of metrics.csv (under tracker_name) and every logged
    step, the same float32 value, NaN where it is NaN; each has the config and the run's own
    values; the figures and summary.json reach W&B and MLflow at the end."""
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    pytest.importorskip("wandb")
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    out = tmp_path / "sweep"
    plain = compose_plain(RUN + ["logger=[tensorboard,wandb,mlflow]", "plots=true"])
    run_experiment(parse(plain), plain, out)
    rows, names = _rows(out)
    assert len(rows) == 4 * 5 and {"phi_sampled", "frac_reward_zero_std", "clip_frac"} <= set(names)
    tracked = {tracker_name(n) for n in names}
    assert len(tracked) == len(names) and {"reward", "reward_std", "rewards/phi/mean", "rewards/phi_prime/std",
                                           "frac_reward_zero_std", "kl", "entropy", "clip_ratio/region_mean",
                                           "policy/reward", "policy/kl"} <= tracked
    by_run = {r: [row for row in rows if int(row["run"]) == r] for r in range(4)}

    # TensorBoard
    for r, mine in by_run.items():
        acc = event_accumulator.EventAccumulator(str(out / "tensorboard" / f"run_{r:04d}"),
                                                 size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        assert sorted(acc.Tags()["scalars"]) == sorted(tracked)
        for name in names:
            events = acc.Scalars(tracker_name(name))
            assert [e.step for e in events] == [int(row["step"]) for row in mine], name
            assert all(_same(e.value, row[name]) for e, row in zip(events, mine)), (r, name)
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard" / "run_0003"))
    acc.Reload()
    content = b"".join(acc.PluginTagToContent("hparams").values())
    assert b"optim.lr" in content and b"algo.kl.beta" in content and b"seed" in content

    # W&B, offline: one run per training run and one summary run, in <run dir>/wandb/ for `wandb sync`
    dirs = sorted((out / "wandb").glob("offline-run-*"))
    runs = [wandb_run(d) for d in dirs]
    # what `wandb sync` would upload: all five (--dry-run reaches no server)
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *map(str, dirs)], capture_output=True,
                          text=True, timeout=120)
    assert "Would sync 5 run(s)" in sync.stdout + sync.stderr, sync.stdout + sync.stderr
    assert sorted(run["name"] for run in runs) == ["run_0000", "run_0001", "run_0002", "run_0003", "summary"]
    assert {run["group"] for run in runs} == {"sweep"}
    for run in runs:
        if run["name"] == "summary":
            assert run["job_type"] == "summary" and "summary.json" in run["files"]
            (images,) = run["history"].values()  # nested keys, as the reader joins them
            assert images["figures/rewards/_type"] == "image-file" and images["figures/rewards/path"] in run["files"]
            continue
        mine = by_run[int(run["name"][4:])]
        assert run["config"]["seed"] == int(mine[0]["seed"]) and run["config"]["optim.lr"] == float(mine[0]["optim.lr"])
        assert run["config"]["algo"]["kl"]["beta"] == plain["algo"]["kl"]["beta"]
        assert sorted(run["history"]) == [int(row["step"]) for row in mine]
        for row in mine:
            logged = run["history"][int(row["step"])]
            assert set(logged) - {"_step", "_runtime", "_timestamp"} == tracked
            assert all(_same(float(logged[tracker_name(n)]), row[n]) for n in names), row["step"]

    # MLflow: a parent run per run dir, a nested run per training run, on the file store mlruns/
    client = mlflow_tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("sim")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in found if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.params["optim.lr"] == "[0.05, 0.1]"
    assert {"summary.json", "config.yaml", "rewards.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = {run.info.run_name: run for run in found
                if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["run_0000", "run_0001", "run_0002", "run_0003"]
    for r, mine in by_run.items():
        child = children[f"run_{r:04d}"]
        assert child.info.status == "FINISHED" and child.data.params["seed"] == mine[0]["seed"]
        assert set(child.data.metrics) == tracked
        for name in names:
            history = sorted(client.get_metric_history(child.info.run_id, tracker_name(name)), key=lambda m: m.step)
            assert [m.step for m in history] == [int(row["step"]) for row in mine], name
            assert all(_same(m.value, row[name]) for m, row in zip(history, mine)), (r, name)


def test_a_tracker_that_fails_mid_run_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """TensorBoard's writer raises from its second chunk on (a full disk): one warning, the run
    completes, metrics.csv has every row, and MLflow, beside it, still gets every row."""
    pytest.importorskip("tensorboardX")
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    calls = []
    real_log = trackers.TensorBoard.log

    def failing(self, rows):
        calls.append(len(next(iter(rows.values()))))
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        real_log(self, rows)

    monkeypatch.setattr(trackers.TensorBoard, "log", failing)
    out = tmp_path / "run"
    plain = compose_plain(RUN + ["logger=[tensorboard,mlflow]"])
    run_experiment(parse(plain), plain, out)
    err = capsys.readouterr().err
    warned = [line[line.index("sim: warning:"):] for line in err.splitlines() if "warning: logger=" in line]
    assert warned == ["sim: warning: logger=tensorboard failed in log (OSError: [Errno 28] No space left on device); "
                      "it logs nothing more in this run, which goes on (metrics.csv has every row)"]
    assert len(calls) == 2  # dropped after its failure: not called for the later chunks
    rows, names = _rows(out)
    assert len(rows) == 4 * 5 and (out / "summary.json").exists()
    client = mlflow_tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    for run in client.search_runs([client.get_experiment_by_name("sim").experiment_id]):
        if "mlflow.parentRunId" in run.data.tags:
            assert len(client.get_metric_history(run.info.run_id, "reward")) == 5


def test_a_resumed_run_shows_each_row_once_in_tensorboard_and_whole_new_runs_in_mlflow(tmp_path, monkeypatch):
    """A run that crashed after its 4th chunk (step 20 logged, checkpoint at 15) resumes: TensorBoard
    purges the crashed process's events after the checkpoint, so each step appears once; MLflow's
    runs of the crashed process end FAILED, and the resumed process's runs hold every row."""
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    mlflow_tracking = pytest.importorskip("mlflow.tracking")

    plain = compose_plain(RUN + ["logger=[tensorboard,mlflow]", "checkpoint_seconds=0"])
    out = tmp_path / "run"
    crash_at_chunk(monkeypatch, plain, out)
    run_experiment(parse(plain), plain, out)
    rows, _ = _rows(out)
    mine = [row for row in rows if row["run"] == "1"]
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard" / "run_0001"),
                                             size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    events = acc.Scalars("policy/phi")
    assert [e.step for e in events] == [0, 5, 10, 15, 20]
    assert all(_same(e.value, row["phi"]) for e, row in zip(events, mine))
    client = mlflow_tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    found = client.search_runs([client.get_experiment_by_name("sim").experiment_id])
    assert sorted(run.info.status for run in found) == ["FAILED"] * 5 + ["FINISHED"] * 5
    for run in found:
        if run.info.status == "FINISHED" and run.info.run_name == "run_0001":
            history = sorted(client.get_metric_history(run.info.run_id, "policy/phi"), key=lambda m: m.step)
            assert [m.step for m in history] == [0, 5, 10, 15, 20]
            assert all(_same(m.value, row["phi"]) for m, row in zip(history, mine))
