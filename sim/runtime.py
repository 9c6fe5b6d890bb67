"""Process-wide JAX settings, applied once at the edge (run.py) before anything is computed.

- A persistent compilation cache, so a second run of the same shapes skips XLA compilation
  (the cache is keyed by the program, so it is always safe to delete).
- The number of CPU devices the run axis is sharded over: by default one per core, since XLA
  runs each device's share of the vmapped runs on its own thread.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax


def cpu_device_count(setting: int | str) -> int:
    """'auto' -> $JAX_NUM_CPU_DEVICES if set, else the number of cores; an int is taken as is."""
    if setting == "auto":
        return int(os.environ.get("JAX_NUM_CPU_DEVICES") or os.cpu_count() or 1)
    return int(setting)


def configure(compilation_cache: str | None, cpu_devices: int | str = "auto") -> None:
    if compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(compilation_cache).expanduser()))
        # Our programs compile in seconds and are small: cache every one of them.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        jax.config.update("jax_num_cpu_devices", cpu_device_count(cpu_devices))
    except RuntimeError:  # backend already initialised (e.g. called twice in one process): keep it
        pass
