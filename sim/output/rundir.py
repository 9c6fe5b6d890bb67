"""The run directory: what an earlier run left there, provenance, atomic writes, streamed metrics.

File I/O at the edge (no Hydra). A directory holds a run when it has any of RUN_OUTPUTS. Its
`provenance.json`, written before training starts, names the configuration (hash), package
versions, git commit and devices, so even a killed run says what it was. A run is complete
once `summary.json` exists: it is written last, atomically.

What happens to an existing run (`plan`):
- same configuration, complete: left alone and reported (overwrite=true runs it again);
- same configuration, interrupted: continued from its last checkpoint (resume=true, default);
- another configuration, or resume=false: refused with one line unless overwrite=true.
Nothing already written is removed unless the user passes overwrite=true.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np

from sim.output import results
from sim.config import ConfigError

PACKAGES = ("sim", "jax", "jaxlib", "optax", "numpy", "hydra-core", "matplotlib", "orbax-checkpoint")
# Options that choose where and how a run is executed, not what it computes: left out of the
# config hash, so that e.g. `overwrite=true` does not make a run a different configuration.
# (chunk_steps stays in: a checkpoint can only be resumed with the chunking that wrote it.)
EXECUTION_KEYS = ("runtime", "checkpoint_seconds", "resume", "overwrite", "logger")
# Files and folders a run writes (overwrite=true removes these and nothing else).
RUN_OUTPUTS = ("provenance.json", "config.yaml", "metrics.csv", "points.csv", "summary.json", "rewards.png",
               "kl_cost.png", "diagnostics.png", "orthogonality.png", "sweep.png", "sft_loss.png", "checkpoints",
               "tensorboard", "samples.jsonl")

Action = Literal["fresh", "resume", "done"]


def config_hash(plain_cfg: dict) -> str:
    """Hash of what determines the numbers: the config less EXECUTION_KEYS."""
    kept = {k: v for k, v in plain_cfg.items() if k not in EXECUTION_KEYS}
    blob = json.dumps(kept, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> dict | None:
    """The commit of the git checkout `sim` is imported from (None outside one), and whether
    tracked files differ from it (then the commit alone does not reproduce the numbers)."""
    where = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance(plain_cfg: dict, devices: list[str]) -> dict:
    return {"config_hash": config_hash(plain_cfg), "versions": versions(), "git": git_commit(), "devices": devices}


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_OUTPUTS)


def _recorded_hash(out: Path) -> str | None:
    try:
        return json.loads((out / "provenance.json").read_text())["config_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan(out: Path, cfg_hash: str, resume: bool, overwrite: bool) -> Action:
    """What to do with the output directory `out`; raises ConfigError (one line) to refuse."""
    if overwrite or not _holds_run(out):
        return "fresh"
    recorded = _recorded_hash(out)
    if recorded != cfg_hash:
        what = f"config_hash {recorded}" if recorded else "no provenance.json"
        raise ConfigError(f"hydra.run.dir={out}: holds a run of another configuration ({what}; this one is "
                          f"{cfg_hash}); choose another directory or pass overwrite=true to replace it")
    if (out / "summary.json").exists():
        return "done"
    if not resume:
        raise ConfigError(f"hydra.run.dir={out}: holds an interrupted run of this configuration; pass "
                          "resume=true to continue it or overwrite=true to start again")
    return "resume"


# In the run directory, never removed (not a run output): the command line holds an exclusive
# flock on it for the run's whole life (the OS releases it when the process ends, crashed or not),
# taken before Hydra writes anything there; it names the holder (pid, host, start, config hash).
LOCK_FILE = ".sim.lock"


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}, "
                f"config_hash {info['config_hash']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "not yet named"  # its holder is between taking the lock and writing its name


def in_use(out: Path, holder: str) -> ConfigError:
    return ConfigError(f"hydra.run.dir={out}: in use by a running sim ({holder}); wait for it to end or choose "
                       "another directory")


def running(out: Path) -> str | None:
    """Who holds `out`'s lock (its description), None if no process does. Creates nothing; the
    shared lock it tries for a moment is why claim() retries before it gives up."""
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def claim(out: Path, cfg_hash: str) -> int:
    """Create `out`, take its lock and write this process's name into it; the lock file's
    descriptor, to keep open for the run's life. Raises ConfigError (one line) where `out`
    cannot be written or another process holds the lock; then nothing in `out` has changed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"hydra.run.dir={out}: cannot write there ({e.strerror or e}); choose a directory "
                          "this user can write to") from None
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 4:
                holder = _holder(fd)
                os.close(fd)
                raise in_use(out, holder) from None
            time.sleep(0.02)
    name = {"pid": os.getpid(), "host": platform.node(), "config_hash": cfg_hash,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(name).encode(), 0)
    return fd


def clear(out: Path) -> None:
    """Remove what an earlier run wrote (RUN_OUTPUTS only, never other files)."""
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class MetricsCsv:
    """metrics.csv, one row per (logged step, run) in step order, appended as chunks finish, so a
    killed run keeps every row up to its last chunk. The file does not depend on the chunking."""

    def __init__(self, path: Path, names: tuple[str, ...], steps_T: np.ndarray, columns_R: dict[str, np.ndarray]):
        self.path, self.names, self.steps_T, self.columns_R = path, names, steps_T, columns_R
        self.written = 0  # logged rows (steps) already in the file

    def _lines(self, rows: dict, first: int, header: bool) -> list[list]:
        chunk = {k: rows[k][first:] for k in self.names}
        head, lines = results.table_rows(chunk, self.steps_T[first:len(rows[self.names[0]])], self.columns_R)
        return [head] + lines if header else lines

    def _text(self, rows: dict, first: int, header: bool) -> bytes:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(self._lines(rows, first, header))
        return text.getvalue().encode()

    def reset(self, rows: dict) -> None:
        """Rewrite the file atomically with exactly `rows` (name -> [T, R]), e.g. a checkpoint's."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(self._text(rows, 0, header=True))
        os.replace(tmp, self.path)
        self.written = len(rows[self.names[0]])

    def extend(self, rows: dict) -> None:
        """Append the rows of `rows` (every row so far) that the file does not have yet, in one
        write() (a regular file's write is not cut short by a signal), so the file ends at a chunk."""
        if self.written == 0:
            return self.reset(rows)
        data = self._text(rows, self.written, header=False)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            while data:  # one pass for a regular file; a short write (disk full) is continued
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.written = len(rows[self.names[0]])
