"""sim/trackers.py: logger=tensorboard streams what metrics.csv holds, read back by TensorBoard's own
reader (its EventAccumulator), run by run and step by step."""
import csv
import math

import pytest

from sim.config import ConfigError, parse
from sim.experiment import run_experiment
from sim.trackers import flat_config
from tests.conftest import SMALL, compose_plain


def test_flat_config_names_every_leaf_by_its_dotted_key():
    assert flat_config({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": None, "g": True}) == {
        "a.b": 1, "a.c.d": "x", "e": "[1, 2]", "f": "None", "g": True}


def test_logger_needs_rows_it_can_stream():
    with pytest.raises(ConfigError, match="logger=tensorboard: .* record=points"):
        parse(compose_plain(SMALL + ["logger=tensorboard", "record=points"]))
    assert parse(compose_plain(SMALL)).logger == "none"


def test_tensorboard_event_files_hold_the_numbers_of_metrics_csv(tmp_path):
    """A 2-point sweep of 2 seeds (4 runs), chunks of 5 steps: every run's TensorBoard run holds, for
    every metric column of metrics.csv and every logged step, the same float32 value (metrics.csv
    prints 9 significant digits: rel 1e-7), NaN where it is NaN; and the config as hyperparameters."""
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    plain = compose_plain(SMALL + ["seeds=2", "optim.lr=[0.05,0.1]", "logger=tensorboard", "analysis=none",
                                   "chunk_steps=5"])
    run_experiment(parse(plain), plain, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    names = [k for k in rows[0] if k not in ("run", "seed", "point", "step", "optim.lr")]
    assert len(rows) == 4 * 5 and "phi" in names and "loss" in names
    for r in range(4):
        acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / f"run_{r:04d}"),
                                                 size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        assert sorted(acc.Tags()["scalars"]) == sorted(names)
        mine = [row for row in rows if int(row["run"]) == r]
        for name in names:
            events = acc.Scalars(name)
            assert [e.step for e in events] == [int(row["step"]) for row in mine], name
            for e, row in zip(events, mine):
                want = float(row[name])
                assert (math.isnan(e.value) and math.isnan(want)) or e.value == pytest.approx(want, rel=1e-7,
                                                                                              abs=1e-12), (r, name)
    # the config as hyperparameters: TensorBoard's HParams plugin data, in every run's file
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "run_0003"))
    acc.Reload()
    content = b"".join(acc.PluginTagToContent("hparams").values())
    assert b"optim.lr" in content and b"algo.kl.beta" in content and b"seed" in content
