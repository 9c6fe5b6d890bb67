"""How a batch of runs is laid out on the devices, and what is reduced there.

Each device trains its share of the runs in blocks (`lax.map` over vmapped blocks inside
`shard_map`). With `batch_invariant=true` the blocks are fixed, so every run goes through the same
compiled code whatever the batch size or the device count. XLA's CPU code for a vmapped op can round differently at different batch sizes,
and one flipped bit can flip a sampled token and send a run elsewhere: measured on the default
task, 200-step runs alone vs inside a 96-run batch differed (by more than 1e-5) in all 32 seeds
with one whole-device vmap, and in none with blocks. Blocks of 32 also ran no slower here
(working sets stay in cache); the price is padding small batches to a whole block per device:
one transformer run cost as much as 16. So by default (`batch_invariant=false`, `batch_layout`)
the blocks are sized to the batch instead: a run costs what it computes, and its numbers are still
a function of the config and seed (the same batch compiles to the same program), but no longer
bit-identical to the same run trained alone or in another batch.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from sim.config import Static

RUN_BLOCK = 32
# A neural policy's run is already a large batch (every sampled sequence through the network), so
# blocks of 32 gain nothing and pad small batches heavily: 16 seeds on 2 devices ran as 64.
NEURAL_RUN_BLOCK = 8


def run_block(static: Static) -> int:
    """Runs per block. Exact mode enumerates every response, so one run is already a large batch
    and padding a single run to a block would multiply its cost: blocks of one there. A
    pretrained checkpoint's runs go one after another too (see batch_layout)."""
    if static.mode == "exact" or static.lm is not None:
        return 1
    return RUN_BLOCK if static.arch is None else NEURAL_RUN_BLOCK


def batch_layout(static: Static, n_runs: int, n_devices: int) -> tuple[int, int]:
    """(devices used, runs per block) for a batch of n_runs. Batch-invariant: every device, fixed
    blocks (run_block). Otherwise the fewest blocks of at most run_block(static) runs that hold
    each device's share, on no more devices than runs: padding is under one run per block."""
    if static.lm is not None and not static.lm.lora:
        # a fully fine-tuned checkpoint's runs go one after another on the first device, in blocks of
        # one: a real model's run is a large batch of its own, R copies of its parameters and optimizer
        # state need not fit at once, and padding 1 seed to the device count would double the work;
        # the other devices are for sharding the model itself (sim/lm/sharding.py), not the runs
        return 1, 1
    if static.lm is not None:
        # LoRA runs are a few MB each: vmapped in blocks of policy.lora.runs_per_block against the one
        # base (its matmuls take every run's batch at once), on the first device; blocks divide the
        # runs, so no run is padding. Not over several CPU devices: two CPU devices executing at once
        # corrupt a real-sized decoder's sampling under sim's XLA flags (an XLA fault, reproduced
        # without sim's layout by experiments/xla_cpu_race.py; docs/real-models.md, "Known problem")
        share = n_runs
        return 1, max(d for d in range(1, min(share, static.lm.runs_per_block) + 1) if share % d == 0)
    cap = run_block(static)
    if static.batch_invariant:
        return n_devices, cap
    devices = max(1, min(n_devices, n_runs))
    share = -(-n_runs // devices)
    blocks = -(-share // cap)
    return devices, -(-share // blocks)


def over_runs(fn: Callable, mesh: Mesh, block: int, shared: bool = False) -> Callable:
    """fn of one run -> fn of [R, ...] arrays: R sharded over the mesh, each device's share in
    blocks of `block` runs (its share must be a multiple of `block`: the caller pads).
    `shared`: the first argument is the same for every run (replicated, not mapped), e.g. a frozen
    reference that all runs read: fn(shared, *one_run's_args)."""
    def local(*args):
        if shared:
            return jax.lax.map(lambda a: fn(args[0], *a), args[1:], batch_size=block)
        return jax.lax.map(lambda a: fn(*a), args, batch_size=block)

    def specs(n_args: int) -> tuple:
        return (PartitionSpec(),) * shared + (PartitionSpec("runs"),) * (n_args - shared)

    # check_vma=False: the per-run code uses no collectives, and its inner scans start from
    # constants that the varying-axis type check would otherwise reject
    return lambda *args: jax.shard_map(local, mesh=mesh, in_specs=specs(len(args)),
                                       out_specs=PartitionSpec("runs"), check_vma=False)(*args)


@partial(jax.jit, static_argnums=2)
def point_moments(rows_CxR: dict, points_R: jax.Array, n_points: int) -> dict:
    """Per sweep point and row: (mean, M2) over the point's runs, M2 = sum of squared deviations
    (two passes, so float32 keeps its precision). Runs with point index >= n_points (padding)
    are dropped by segment_sum. Jitted, so it runs where the rows are: on the devices."""
    count_N = jax.ops.segment_sum(jnp.ones(points_R.shape, jnp.float32), points_R, n_points)
    safe_R = jnp.minimum(points_R, n_points - 1)

    def moments(x_CxR):
        mean_CxN = jax.ops.segment_sum(x_CxR.T, points_R, n_points).T / count_N
        m2_CxN = jax.ops.segment_sum(((x_CxR - mean_CxN[:, safe_R]) ** 2).T, points_R, n_points).T
        return mean_CxN, m2_CxN

    return {k: moments(v) for k, v in rows_CxR.items()}


class PointStats(NamedTuple):
    """What record='points' keeps of every logged row: per-point moments over seeds."""
    steps_T: np.ndarray
    count_N: np.ndarray  # runs per point
    mean: dict  # name -> [T, N]
    m2: dict  # name -> [T, N], sum of squared deviations from the point's mean
