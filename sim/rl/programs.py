"""The compiled programs behind make_train: a batch's init and chunk, laid out on devices.

Two layouts (layout.py chooses the devices and the block of runs):
- runs vmapped in blocks and sharded over the local devices (every family);
- a real model sharded over runtime.mesh: the runs one after another (lax.map), each over the
  whole mesh; the frozen reference placed by the model's rules, every per-run array replicated.
A pretrained checkpoint's frozen reference is one argument shared by every run, replicated
(`pre`: () or (shared,)), rather than a per-run RunState.ref with a leading [R] axis.
"""
from __future__ import annotations

import functools
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sim.config import Static
from sim.rl.layout import over_runs
from sim.rl.runs import init_run, run_chunk


class Program(NamedTuple):
    runs: NamedSharding  # per-run arrays [R, ...]
    replicated: NamedSharding  # what every run shares
    init: Callable  # jitted: (*pre, hp_R, keys_R, ref_R, proxy_R) -> (state_R, row0_R)
    chunk: Callable  # (*pre, state_R, hp_R) -> (state_R, rows [C, R]); compiled by `compile_chunk`
    model_sharded: bool = False


def run_shardings(n_devices: int | None = None) -> tuple[NamedSharding, NamedSharding]:
    """Shardings of per-run arrays [R, ...] and of logged rows [C, R]: runs split over the first
    n_devices local devices (None: all)."""
    mesh = Mesh(np.array(jax.local_devices()[:n_devices]), ("runs",))
    return NamedSharding(mesh, PartitionSpec("runs")), NamedSharding(mesh, PartitionSpec(None, "runs"))


def shard_runs(tree, n_runs: int, sharding: NamedSharding, block: int, fill=None):
    """Pad the run axis to a multiple of `block` runs per device (see layout) and shard it over
    all local devices (a replicated `sharding`: no padding). Padding repeats the last run, or is
    `fill` where given."""
    pad = -n_runs % ((sharding.mesh.size if sharding.spec else 1) * block)

    def padded(x):
        if not pad:
            return x
        tail = jnp.repeat(x[-1:], pad, 0) if fill is None else jnp.full((pad,) + x.shape[1:], fill, x.dtype)
        return jnp.concatenate([x, tail])

    return jax.device_put(jax.tree.map(padded, tree), sharding)


def _one_run(static: Static, chunk_rows: int) -> tuple[Callable, Callable]:
    """(init, chunk) of one run; a pretrained policy's take the shared reference first."""
    if static.lm is not None:
        init_one = lambda s, hp, key, ref, proxy: init_run(static, hp, key, ref, proxy, shared=s)  # noqa: E731
        chunk_one = lambda s, state, hp: run_chunk(static, chunk_rows, state, hp, shared=s)  # noqa: E731
        return init_one, chunk_one
    return partial(init_run, static), partial(run_chunk, static, chunk_rows)


def _rows_by_step(chunk: Callable) -> Callable:
    def chunk_CxR(*args):  # rows come back per run, [R, C]; the host wants [C, R]
        state, rows_RxC = chunk(*args)
        return state, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rows_RxC)

    return chunk_CxR


@functools.lru_cache(maxsize=64)
def program(static: Static, chunk_rows: int, devices: int, block: int) -> Program:
    """The batch's programs, built once per layout (jax.jit compiles them per batch size)."""
    init_one, chunk_one = _one_run(static, chunk_rows)
    shares_ref = static.lm is not None
    if shares_ref and static.lm.sharded:
        return _model_sharded(static, init_one, chunk_one)
    runs, rows = run_shardings(devices)
    replicated = NamedSharding(runs.mesh, PartitionSpec())
    pre_sh = (replicated,) * shares_ref
    init_R = jax.jit(over_runs(init_one, runs.mesh, block, shares_ref), in_shardings=pre_sh + (runs,) * 4,
                     out_shardings=runs)
    chunk_R = jax.jit(_rows_by_step(over_runs(chunk_one, runs.mesh, block, shares_ref)),
                      in_shardings=pre_sh + (runs, runs), out_shardings=(runs, rows))
    return Program(runs, replicated, init_R, chunk_R)


def _model_sharded(static: Static, init_one: Callable, chunk_one: Callable) -> Program:
    """runtime.mesh: the runs one after another (lax.map), each sharded over the whole mesh: the
    frozen reference placed by the model's rules, the weights and the batch constrained inside the
    policy (pretrained.make); every per-run array replicated."""
    from sim.lm import sharding

    mesh = sharding.make_mesh(*static.lm.mesh)
    replicated = NamedSharding(mesh, PartitionSpec())

    def over(fn):
        return lambda s, *args: jax.lax.map(lambda a: fn(s, *a), args)

    # the chunk is jitted once the state exists (compile_chunk): its state comes out where init put it
    return Program(replicated, replicated, jax.jit(over(init_one)), _rows_by_step(over(chunk_one)), model_sharded=True)


def place_shared(static: Static, prog: Program, shared) -> tuple:
    """`pre`: the shared reference placed for `prog` (() for families without one)."""
    if shared is None:
        return ()
    if not prog.model_sharded:
        return (jax.device_put(shared, prog.replicated),)
    from sim.lm import sharding  # the reference by the model's rules, the prompts replicated

    rules = sharding.param_shardings(static.lm.model, shared.params, prog.replicated.mesh)
    return (type(shared)(sharding.put(shared.params, rules), *jax.device_put(tuple(shared[1:]), prog.replicated)),)


def compile_chunk(prog: Program, pre: tuple, state, hp_R: dict):
    """The chunk compiled on the real state (from init), so its shardings match."""
    chunk = prog.chunk
    if prog.model_sharded:
        chunk = jax.jit(chunk, out_shardings=(jax.tree.map(lambda x: x.sharding, state), prog.replicated))
    return chunk.lower(*pre, state, hp_R).compile()
