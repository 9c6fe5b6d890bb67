"""Experiment trackers: the logged rows of every run, streamed to TensorBoard as the run goes.

`logger=tensorboard` writes one TensorBoard run per training run under <run dir>/tensorboard/
(`run_0003` for run 3, as numbered in metrics.csv), each with the run's config as hyperparameters
(TensorBoard's HParams tab: the config's scalars, flattened, plus the run's seed and sweep values)
and one scalar per logged metric and step, written after every chunk and flushed, so
`tensorboard --logdir <run dir>/tensorboard` shows a run while it trains. metrics.csv stays the
source of truth: the tracker gets the same float32 rows, after they are written there.

The writer is tensorboardX (`pip install -e ".[tensorboard]"`): TensorBoard's event-file format
without TensorFlow or torch. It is imported only when a run asks for it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sim.config_values import ConfigError


def flat_config(plain: dict, prefix: str = "") -> dict:
    """The config's leaves as `a.b.c` -> value, with lists as text (HParams holds scalars and text)."""
    out = {}
    for key, value in plain.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_config(value, name + ".")
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class TensorBoard:
    """One tensorboardX SummaryWriter per run; `log` takes every row logged so far and writes the
    ones not yet written."""

    def __init__(self, directory: Path, plain_cfg: dict, columns: dict[str, np.ndarray], steps_T: np.ndarray,
                 rows_done: int = 0):
        try:
            from tensorboardX import SummaryWriter
            from tensorboardX.summary import hparams
        except ImportError:
            raise ConfigError("logger=tensorboard: needs the tensorboardX package "
                              "(pip install -e \".[tensorboard]\")") from None
        self.steps_T, self.written = steps_T, 0
        config = flat_config(plain_cfg)
        self.writers = []
        for r in range(len(columns["run"])):
            # purge_step: a resumed run rewrites its rows from the checkpoint on; TensorBoard drops
            # the earlier process's events at and after that step (it may have written past it)
            purge = int(steps_T[rows_done]) + 1 if rows_done else None
            writer = SummaryWriter(str(Path(directory) / f"run_{r:04d}"), purge_step=purge, flush_secs=3600)
            values = config | {k: _scalar(v[r]) for k, v in columns.items()}
            for summary in hparams(values, {}):
                writer.file_writer.add_summary(summary)
            self.writers.append(writer)
        self.written = rows_done + 1 if rows_done else 0  # rows up to the checkpoint are already there

    def log(self, rows: dict[str, np.ndarray]) -> None:
        """rows: name -> [rows so far, R], as metrics.csv receives them."""
        total = len(next(iter(rows.values())))
        for t in range(self.written, total):
            step = int(self.steps_T[t])
            for r, writer in enumerate(self.writers):
                for name, x in rows.items():  # NaN too (batch statistics at step 0), as in metrics.csv
                    writer.add_scalar(name, float(x[t, r]), step)
        for writer in self.writers:
            writer.flush()
        self.written = total

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def _scalar(x):
    x = np.asarray(x).item()
    return x if isinstance(x, (int, float, str, bool)) else str(x)


def open_tracker(kind: str, directory: Path, plain_cfg: dict, columns: dict, steps_T: np.ndarray,
                 rows_done: int = 0) -> TensorBoard | None:
    """The tracker `logger.kind` asks for (None for none)."""
    if kind == "none":
        return None
    return TensorBoard(directory, plain_cfg, columns, steps_T, rows_done)
