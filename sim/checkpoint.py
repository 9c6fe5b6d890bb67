"""Checkpoints of a training batch, with orbax: <run dir>/checkpoints/<step>/{state,rows,meta}.

Orbax writes each checkpoint into a temporary folder and renames it once complete, so a process
killed at any moment leaves the last complete checkpoint readable. Saving is asynchronous: the
arrays are already on the host (train.host_state) and a background thread writes them while the
next chunk runs. Only the latest checkpoint is kept (each holds every metrics row so far).

An orbax save has a fixed cost of about 0.1 s on a loaded 2-core machine however small the
state (folders, metadata, tensorstore), which would double the default run's 1.3 s if taken
after each of its 10 chunks; `every_seconds` spaces checkpoints out in time instead. For the
same reason orbax (half a second to import) is loaded only once a checkpoint is read or written:
a run shorter than `every_seconds` never needs it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from sim.train import Snapshot


class CheckpointError(RuntimeError):
    """A checkpoint that exists but does not belong to this run."""


class Checkpoints:
    def __init__(self, directory: Path, config_hash: str, log_every: int, every_seconds: float | None = 0.0):
        """`every_seconds`: least time between two checkpoints (0: every chance; None: never save)."""
        self.config_hash, self.log_every, self.every_seconds = config_hash, log_every, every_seconds
        self.directory = Path(directory).absolute()
        self._last = time.monotonic()
        self._open = None  # the orbax CheckpointManager, made at first use

    @property
    def _manager(self):
        if self._open is None:
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True,
                                                   cleanup_tmp_directories=True)
            self._open = ocp.CheckpointManager(self.directory, options=options)
        return self._open

    def save(self, snap: Snapshot) -> None:
        import orbax.checkpoint as ocp

        meta = {"rows_done": snap.rows_done, "config_hash": self.config_hash}
        self._manager.save(snap.rows_done * self.log_every, args=ocp.args.Composite(
            state=ocp.args.StandardSave(snap.state), rows=ocp.args.StandardSave(snap.rows),
            meta=ocp.args.JsonSave(meta)))

    def maybe_save(self, snap: Snapshot) -> bool:
        """Save `snap` if every_seconds have passed since the last save (or since the start)."""
        if self.every_seconds is None or time.monotonic() - self._last < self.every_seconds:
            return False
        self.save(snap)
        self._last = time.monotonic()
        return True

    def latest(self, template: Callable[[int], Snapshot]) -> Snapshot | None:
        """The last complete checkpoint, restored into `template(rows_done)` (host form); None if none."""
        if not self.directory.exists():
            return None
        import orbax.checkpoint as ocp

        step = self._manager.latest_step()
        if step is None:
            return None
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("config_hash") != self.config_hash:
            raise CheckpointError(f"checkpoint at step {step} belongs to config_hash {meta.get('config_hash')}, "
                                  f"not {self.config_hash}")
        like = template(int(meta["rows_done"]))
        got = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(like.state), rows=ocp.args.StandardRestore(like.rows)))
        return Snapshot(like.rows_done, got["state"], dict(got["rows"]))

    def close(self) -> None:
        """Wait for the writes in flight, then release the manager's threads."""
        if self._open is not None:
            self._open.wait_until_finished()
            self._open.close()
            self._open = None
