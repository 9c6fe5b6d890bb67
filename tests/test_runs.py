"""experiments/runs.py: stored runs come back exactly as trained (values, dtypes, order), their
configuration rebuilt from the stored overrides."""
import json

import numpy as np

from experiments import runs as runs_lib


def test_store_then_restore_gives_the_same_numbers_and_configuration(tmp_path):
    overrides = ("seeds=2", "steps=4", "log_every=2")
    exp, batch = runs_lib._configure(list(overrides))
    metrics = {"phi": np.arange(6, dtype=np.float32).reshape(3, 2) / 7, "kl": np.full((3, 2), 1e-9, np.float64),
               "quad_uu": np.ones((3, 2), np.float32)}
    result = runs_lib.Stored(metrics, np.array([0, 2, 4]), np.array([-1, 3]), 1.5, 2.5)
    stored = {"κ′ < 1 (a label)": runs_lib.Run("κ′ < 1 (a label)", overrides, exp, batch, result),
              "other": runs_lib.Run("other", overrides, exp, batch, result._replace(run_seconds=9.0))}
    runs_lib.store("demo", stored, tmp_path)
    back = runs_lib.restore("demo", tmp_path)
    assert list(back) == list(stored)
    for label, run in stored.items():
        got = back[label]
        assert list(got.result.metrics) == list(metrics)  # the report iterates them in order
        for k, v in metrics.items():
            assert got.result.metrics[k].dtype == v.dtype
            np.testing.assert_array_equal(got.result.metrics[k], v)
        np.testing.assert_array_equal(got.steps_T, [0, 2, 4])
        np.testing.assert_array_equal(got.result.diverged_at_step_R, [-1, 3])
        assert got.overrides == overrides and got.exp == exp and got.command == run.command
        np.testing.assert_array_equal(got.batch.points_R, batch.points_R)
    assert back["other"].result.run_seconds == 9.0
    assert json.loads((tmp_path / "demo.json").read_text())["runs"][0]["label"] == "κ′ < 1 (a label)"
