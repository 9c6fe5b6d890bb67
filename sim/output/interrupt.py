"""Ctrl-C (SIGINT) during a run: finish the write in progress, checkpoint, stop with one line.

Python raises KeyboardInterrupt wherever the main thread happens to be, which may be halfway
through appending a chunk's rows to metrics.csv or through starting a checkpoint. `deferred()`
holds a SIGINT that arrives inside a block until the block has ended, so that such writes are
whole; training itself (compiled code, waiting for the devices) stays interruptible at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """The run was interrupted; `step` is where a rerun of the same command resumes from (None:
    before training started). A KeyboardInterrupt, so that Hydra passes it through as it does those."""

    def __init__(self, step: int | None):
        super().__init__(step)
        self.step = step


def message(e: KeyboardInterrupt) -> str:
    step = getattr(e, "step", None)
    if step is None:
        return "sim: interrupted; rerun the same command to resume"
    return f"sim: interrupted at step {step}; rerun the same command to resume"


@contextlib.contextmanager
def deferred():
    """A SIGINT during the block is delivered when it ends. Only in the main thread (the only one
    Python runs signal handlers in); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda *_: pending.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)  # to the handler of before: KeyboardInterrupt by default
