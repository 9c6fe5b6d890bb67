"""Process-wide JAX settings, applied once at the edge (run.py) before anything is computed, and the
config's runtime section that chooses them (`parse` -> `Runtime`).

- A persistent compilation cache, so a second run of the same shapes skips XLA compilation
  (the cache is keyed by the program, so it is always safe to delete).
- The number of CPU devices the run axis is sharded over: by default one per core, since XLA
  runs each device's share of the vmapped runs on its own thread.
- XLA's CPU backend at LLVM optimisation level 1 instead of its default 2: our programs are many
  small fusions run for seconds, so compilation dominates a run; level 1 compiles the default
  experiment about a third faster and trains as fast (python -m sim.bench; README "Performance").
  It changes no training number (checked bit for bit on the default experiment).
- XLA's experimental YNNPACK fusions off: with them (jax 0.10.2's default on CPU) a compilation of
  an unchanged program sometimes computed wrong numbers; e.g. `policy.width=24 seeds=16` logged a
  KL of 3.98 nats where the policy's is 0.20, in about half of fresh compilations (identical
  optimised HLO, so the fault is in code generation or the fused kernels). Without them 16 of 16
  compilations were right, and training is as fast (tests/test_runtime.py checks the case).
A value of either flag already in $XLA_FLAGS wins.
- JAX's threefry random bits lowered as straight-line code on the CPU too (see
  `unroll_threefry_on_cpu`): the same bits, and training runs ~1.25x faster.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import jax

from sim.config_values import ConfigError, integer

KEYS = {"compilation_cache", "cpu_devices", "sft_cache", "mesh", "distributed"}  # the runtime section's
MESH_KEYS = {"data", "fsdp", "tp"}


@dataclass(frozen=True)
class Runtime:
    """The runtime section: how a run uses the machine; it changes no number."""
    compilation_cache: str | None = None
    cpu_devices: int | str = "auto"
    sft_cache: str | None = None  # where SFT references are cached (None: reference.default_cache_dir())
    # policy=pretrained: the device mesh its model is sharded over (sim/lm/sharding.py); (1, 1, 1): none
    mesh: tuple[int, int, int] = (1, 1, 1)  # data x fsdp x tp
    distributed: bool = False  # join JAX's multi-process runtime (jax.distributed.initialize) first


def parse(cfg: Mapping) -> Runtime:
    rt = cfg.get("runtime") or {}
    if not isinstance(rt, Mapping):
        raise ConfigError(f"runtime={rt!r}: must be a section with keys {', '.join(sorted(KEYS))}")
    cache, devices = rt.get("compilation_cache"), rt.get("cpu_devices", "auto")
    if cache is not None and not isinstance(cache, str):
        raise ConfigError(f"runtime.compilation_cache={cache!r}: must be a directory path, or null for no cache")
    if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise ConfigError(f"runtime.cpu_devices={devices!r}: must be auto or an integer >= 1")
    sft_cache = rt.get("sft_cache")
    if sft_cache is not None and (not isinstance(sft_cache, str) or not sft_cache):
        raise ConfigError(f"runtime.sft_cache={sft_cache!r}: must be a directory path, or null for the default")
    mesh = rt.get("mesh") or {}
    if not isinstance(mesh, Mapping):
        raise ConfigError(f"runtime.mesh={mesh!r}: must be a section with keys data, fsdp, tp")
    degrees = tuple(integer({"runtime": rt}, f"runtime.mesh.{axis}", 1) if axis in mesh else 1
                    for axis in ("data", "fsdp", "tp"))
    distributed = rt.get("distributed", False)
    if not isinstance(distributed, bool):
        raise ConfigError(f"runtime.distributed={distributed!r}: must be true or false")
    return Runtime(cache, devices, sft_cache, degrees, distributed)


def cpu_device_count(setting: int | str) -> int:
    """'auto' -> $JAX_NUM_CPU_DEVICES if set, else the number of cores; an int is taken as is."""
    if setting == "auto":
        return int(os.environ.get("JAX_NUM_CPU_DEVICES") or os.cpu_count() or 1)
    return int(setting)


# YNNPACK fusions off: with them about half of fresh compilations of a toy program logged a wrong KL
# (tests/test_runtime.py). Without them, two CPU devices executing a real-sized decoder at once give
# wrong numbers (experiments/xla_cpu_race.py), so real-model runs use one device (rl/layout.py).
XLA_FLAGS = {"--xla_backend_optimization_level": "1", "--xla_cpu_experimental_ynn_fusion_type": ""}


def set_xla_flags() -> None:
    """Add sim's XLA flags to $XLA_FLAGS unless already set there; acts before the backend starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    ours = [f"{name}={value}" for name, value in XLA_FLAGS.items() if name not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags] + ours).strip()


def unroll_threefry_on_cpu() -> bool:
    """Lower JAX's threefry hash on the CPU as on GPU and TPU: its 20 rounds as straight-line code.

    On the CPU JAX rolls them into a 5-step loop, which compiles faster; run, that loop is ~35
    small kernels per call (its carried state copied at every step), and the random bits for
    sampling were ~30% of a training step (an XLA profile of python -m sim.bench's default task).
    Unrolled, training runs ~1.25x faster and sim.run compiles 0.1-0.2 s longer. The hash is integer
    arithmetic, so the bits are the same (tests/test_runtime.py).

    The lowering lives in JAX's private modules: where a JAX version has moved it, nothing
    changes and this returns False."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry
        primitive, unrolled = threefry.threefry2x32_p, threefry._threefry2x32_lowering_rule
    except (ImportError, AttributeError):
        return False
    # out of line, as JAX registers it elsewhere: lowered once per program, not at every call site
    mlir.register_lowering(primitive, unrolled, platform="cpu", inline=False)
    return True


def configure(compilation_cache: str | None, cpu_devices: int | str = "auto") -> None:
    set_xla_flags()
    unroll_threefry_on_cpu()
    if compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(compilation_cache).expanduser()))
        # Our programs compile in seconds and are small: cache every one of them.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        jax.config.update("jax_num_cpu_devices", cpu_device_count(cpu_devices))
    except RuntimeError:  # backend already initialised (e.g. called twice in one process): keep it
        pass
