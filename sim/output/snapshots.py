"""Checkpoints of a training batch, with orbax: <run dir>/checkpoints/<step>/{state,rows,meta}
(and `moments`, record=points' per-point statistics so far).

Orbax writes each checkpoint into a temporary folder and renames it once complete, so a process
killed at any moment leaves the last complete checkpoint readable. Saving is asynchronous: the
arrays are already on the host (train.host_state) and a background thread writes them while the
next chunk runs. The latest two checkpoints are kept (each holds every metrics row so far): a
checkpoint damaged after it was written (a truncated file, emptied metadata) is detected when it
is read, and the run resumes from the one before it.

An orbax save has a fixed cost of about 0.1 s on a loaded 2-core machine however small the
state (folders, metadata, tensorstore), which would double the default run's 1.3 s if taken
after each of its 10 chunks; `every_seconds` spaces checkpoints out in time instead. For the
same reason orbax (half a second to import) is loaded only once a checkpoint is read or written:
a run shorter than `every_seconds` never needs it.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from sim.rl.train import Snapshot


class CheckpointError(RuntimeError):
    """A checkpoint that exists but does not belong to this run, or none that can be read."""


KEEP = 2  # checkpoints kept: the one before the latest is the fallback when the latest is damaged


class Checkpoints:
    def __init__(self, directory: Path, config_hash: str, log_every: int, every_seconds: float | None = 0.0):
        """`every_seconds`: least time between two checkpoints (0: every chance; None: never save)."""
        self.config_hash, self.log_every, self.every_seconds = config_hash, log_every, every_seconds
        self.directory = Path(directory).absolute()
        self._last = time.monotonic()
        self._open = None  # the orbax CheckpointManager, made at first use
        self.damaged: list[tuple[int, str]] = []  # (step, why) of the damaged checkpoints latest() set aside

    @property
    def _manager(self):
        if self._open is None:
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(max_to_keep=KEEP, enable_async_checkpointing=True,
                                                   cleanup_tmp_directories=True)
            self._open = ocp.CheckpointManager(self.directory, options=options)
        return self._open

    def save(self, snap: Snapshot) -> None:
        import orbax.checkpoint as ocp

        meta = {"rows_done": snap.rows_done, "config_hash": self.config_hash}
        items = {"state": snap.state, "rows": snap.rows} | ({} if snap.moments is None else {"moments": snap.moments})
        self._manager.save(snap.rows_done * self.log_every, args=ocp.args.Composite(
            meta=ocp.args.JsonSave(meta), **{k: ocp.args.StandardSave(v) for k, v in items.items()}))

    def maybe_save(self, snap: Snapshot) -> bool:
        """Save `snap` if every_seconds have passed since the last save (or since the start)."""
        if self.every_seconds is None or time.monotonic() - self._last < self.every_seconds:
            return False
        self.save(snap)
        self._last = time.monotonic()
        return True

    def latest(self, template: Callable[[int], Snapshot]) -> Snapshot | None:
        """The newest checkpoint that can be read, restored into `template(rows_done)` (host form);
        None if there is none. Newer ones that cannot be read are deleted and listed in `damaged`;
        raises CheckpointError if there are checkpoints but none can be read, or one belongs to
        another configuration."""
        if not self.directory.exists():
            return None
        steps = sorted(self._manager.all_steps(), reverse=True)
        self.damaged = []
        for step in steps:
            try:
                snap = self._restore(step, template)
            except CheckpointError:
                raise
            except Exception as e:  # orbax, tensorstore or json on a truncated or emptied file
                self.damaged.append((step, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"))
                continue
            if self.damaged:  # out of the way: a later save writes those steps again
                self.close()
                for bad, _ in self.damaged:
                    shutil.rmtree(self.directory / str(bad), ignore_errors=True)
            return snap
        if self.damaged:
            step, why = self.damaged[0]
            raise CheckpointError(f"no checkpoint can be read ({len(self.damaged)} damaged; the latest, at step "
                                  f"{step}: {why})")
        return None

    def _restore(self, step: int, template: Callable[[int], Snapshot]) -> Snapshot:
        import orbax.checkpoint as ocp

        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("config_hash") != self.config_hash:
            raise CheckpointError(f"checkpoint at step {step} belongs to config_hash {meta.get('config_hash')}, "
                                  f"not {self.config_hash}")
        if int(meta["rows_done"]) * self.log_every != step:
            raise ValueError(f"metadata says {meta['rows_done']} rows, not step {step}")
        like = template(int(meta["rows_done"]))
        items = {"state": like.state, "rows": like.rows} | ({} if like.moments is None else {"moments": like.moments})
        got = self._manager.restore(step, args=ocp.args.Composite(
            **{k: ocp.args.StandardRestore(v) for k, v in items.items()}))
        moments = None if like.moments is None else {k: dict(v) for k, v in got["moments"].items()}
        return Snapshot(like.rows_done, got["state"], dict(got["rows"]), moments)

    def close(self) -> None:
        """Wait for the writes in flight, then release the manager's threads."""
        if self._open is not None:
            self._open.wait_until_finished()
            self._open.close()
            self._open = None
