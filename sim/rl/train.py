"""The one training loop: make_train(static) -> train(hparams_R, keys_R).

Each run (one seed at one sweep point) is a pure function of its hparams and key (runs.py). Runs
are vmapped and sharded over local devices (programs.py); steps (one update each: sim/rl/step.py) are a lax.scan, with
a divergence guard and exact metrics at logged steps. The loop runs in chunks of
`rows_per_chunk` logged rows, each chunk one call of the same compiled program, so the host can
show progress, stream metrics and checkpoint between chunks without changing any number.
"""
from __future__ import annotations

import functools
import time
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sim.config import Static
from sim.rl import programs
from sim.rl.layout import PointStats, batch_layout, point_moments
from sim.rl.runs import RunState, init_run, metric_names
# re-exported for the tests that read one run's metrics and policy through the loop's module
from sim.rl.runs import EXACT_METRICS, KAPPA_METRICS, build_policy  # noqa: F401


def auto_rows_per_chunk(total_rows: int, target_chunks: int = 10) -> int:
    """The largest divisor of total_rows that still gives about target_chunks progress updates."""
    limit = max(1, total_rows // target_chunks)
    return max(d for d in range(1, limit + 1) if total_rows % d == 0)


def run_keys(seeds) -> jax.Array:
    """One key per run from its seed alone, so a run's numbers do not depend on its batch."""
    seeds = np.asarray(seeds)
    if seeds.size and seeds.max() < 2**31:  # vmapped: the same keys, without a dispatch per seed
        return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.int32))
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


class TrainResult(NamedTuple):
    state: RunState  # final state of every run
    metrics: dict  # name -> [T, R] array, T = steps / log_every + 1 logged rows
    steps_T: np.ndarray  # the step each row was logged at
    compile_seconds: float
    run_seconds: float  # this call's share: a resumed run counts only what it ran itself
    diverged_at_step_R: np.ndarray  # the step whose update went non-finite, -1 for healthy runs
    # record=points: per-point moments of every logged row; `metrics` then holds only each run's
    # rows at steps 0, log_every and the last step (all that start/end summaries need)
    point_stats: PointStats | None = None


class Snapshot(NamedTuple):
    """Everything needed to continue a batch exactly where it was: written after each chunk."""
    rows_done: int  # logged intervals completed (step = rows_done * log_every)
    state: RunState  # host form (see host_state), R runs
    rows: dict  # name -> [rows_done + 1, R]: every logged row so far, step 0 included
    # (record=points: only each run's key rows so far, [len(kept_key_rows(...)), R])
    # record=points: the per-point moments of every row so far, {"mean"|"m2": name -> [rows_done + 1, N]}
    moments: dict | None = None


def key_rows(static: Static) -> list[int]:
    """The logged rows each run keeps under record=points: step 0, the first logged step and the
    last (all that start/end summaries need)."""
    return sorted({0, 1, static.steps // static.log_every})


def kept_key_rows(static: Static, rows_done: int) -> list[int]:
    return [r for r in key_rows(static) if r <= rows_done]


ChunkCallback = Callable[[int, int, dict], None]  # (rows done, rows total, rows of this chunk)
# (steps_C, name -> [C, R, ...]): the responses a pretrained policy's logged rows drew (estimates'
# `sample_*`), handed to the host as each chunk ends and kept out of the metrics and snapshots
SamplesCallback = Callable[[np.ndarray, dict], None]
SAMPLE_PREFIX = "sample_"


def split_samples(rows: dict) -> tuple[dict, dict]:
    """(metric rows, sample arrays) of a chunk's rows."""
    return ({k: v for k, v in rows.items() if not k.startswith(SAMPLE_PREFIX)},
            {k: v for k, v in rows.items() if k.startswith(SAMPLE_PREFIX)})


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def host_state(state: RunState) -> RunState:
    """A numpy copy of a state with its typed PRNG keys as raw key data, for checkpoint files."""
    return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if _is_key(x) else x), state)


def snapshot_template(static: Static, hp_R: dict, keys_R: jax.Array, rows_done: int, ref_R=None,
                      proxy_R=None, shared=None, n_points: int | None = None) -> Snapshot:
    """Shapes and dtypes of a Snapshot of this batch (host form), to restore a checkpoint into.
    `n_points`: the batch records per-point moments (record=points) over that many points."""
    hp_R = {k: jnp.asarray(v, jnp.float32) for k, v in hp_R.items()}
    state, row = jax.eval_shape(jax.vmap(partial(init_run, static, shared=shared)), hp_R, keys_R, ref_R, proxy_R)
    state = jax.tree.map(lambda x: jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x, state)
    row = split_samples(row)[0]
    kept = rows_done + 1 if n_points is None else len(kept_key_rows(static, rows_done))
    rows = {k: jax.ShapeDtypeStruct((kept,) + v.shape, v.dtype) for k, v in row.items()}
    moments = None
    if n_points is not None:
        per_point = {k: jax.ShapeDtypeStruct((rows_done + 1, n_points), jnp.float32) for k in metric_names(static)}
        moments = {"mean": per_point, "m2": dict(per_point)}
    return Snapshot(rows_done, state, rows, moments)


def _device_state(host: RunState, like: RunState, n_runs: int) -> RunState:
    """Inverse of host_state: pad the run axis as programs.shard_runs does and place each leaf like `like`."""
    def leaf(h, ref):
        h = np.concatenate([h, np.repeat(h[-1:], ref.shape[0] - n_runs, 0)]) if ref.shape[0] > n_runs else h
        x = jax.random.wrap_key_data(h, impl=jax.random.key_impl(ref)) if _is_key(ref) else jnp.asarray(h, ref.dtype)
        if x.shape != ref.shape:
            raise ValueError(f"checkpoint leaf of shape {x.shape} where the state has {ref.shape}")
        return jax.device_put(x, ref.sharding)

    if jax.tree.structure(host) != jax.tree.structure(like):
        raise ValueError("checkpoint does not have the structure of this configuration's state")
    return jax.tree.map(leaf, host, like)


class _Rows:
    """What a batch keeps of its logged rows as the chunks come back: every run's rows, or (with
    `reduce`, record=points) the per-point moments of every row and each run's key rows only."""

    def __init__(self, names: tuple[str, ...], n_runs: int, reduce: Callable | None, kept_rows: list[int]):
        self.names, self.n_runs, self.reduce, self.kept_rows = names, n_runs, reduce, kept_rows
        self.chunks, self.moments = [], []

    def unpad(self, tree):
        # to the host whole, then cut: a device-side slice would be one more dispatch per metric
        return jax.tree.map(lambda x: np.asarray(x)[:, :self.n_runs], tree)

    def first(self, row0: dict) -> None:
        self.chunks, self.moments = [self.unpad(row0)], [self.reduce(row0)] if self.reduce else []

    def resume(self, start: Snapshot) -> None:
        self.chunks = [dict(start.rows)]
        if self.reduce is not None:
            if start.moments is None:
                raise ValueError("resuming point statistics (points_R) needs a snapshot with moments")
            self.moments = [{k: (start.moments["mean"][k], start.moments["m2"][k]) for k in self.names}]

    def add(self, rows: dict, done: int, chunk_rows: int) -> dict:
        """Keep a chunk's rows (device arrays [C, R]); returns what the progress callback shows."""
        if self.reduce is None:
            self.chunks.append(self.unpad(rows))
            return self.chunks[-1]
        self.moments.append(self.reduce(rows))  # keep the moments, and of each run only its key rows
        self.chunks += [self.unpad({k: v[i:i + 1] for k, v in rows.items()})
                        for i, row in enumerate(range(done - chunk_rows + 1, done + 1)) if row in self.kept_rows[1:]]
        return {k: m[0] for k, m in self.moments[-1].items()}

    def snapshot(self, done: int, state: RunState) -> Snapshot:
        self.chunks = [{k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}]
        moments = None
        if self.reduce is not None:
            self.moments = [{k: tuple(np.concatenate([m[k][j] for m in self.moments]) for j in (0, 1))
                             for k in self.names}]
            moments = {"mean": {k: v[0] for k, v in self.moments[0].items()},
                       "m2": {k: v[1] for k, v in self.moments[0].items()}}
        return Snapshot(done, host_state(jax.tree.map(lambda x: x[:self.n_runs], state)), self.chunks[0], moments)

    def metrics(self) -> dict:
        return {k: np.concatenate([c[k] for c in self.chunks]) for k in self.names}

    def point_stats(self, steps_T: np.ndarray, points_R: np.ndarray, n_points: int) -> PointStats:
        return PointStats(steps_T, np.bincount(points_R, minlength=n_points),
                          *({k: np.concatenate([m[k][j] for m in self.moments]) for k in self.names} for j in (0, 1)))


@functools.lru_cache(maxsize=32)
def make_train(static: Static, rows_per_chunk: int | None = None):
    """Compile once per (Static, batch size); train() accepts any hparams values and seeds.

    Cached, so every caller in a process with the same Static shares the compiled programs."""
    if not static.complete:
        raise ValueError("make_train needs a complete Static: a text task's is completed from its checkpoint "
                         "and tokenizer at the edge (sim/lm_setup.load) first")
    total_rows = static.steps // static.log_every
    chunk_rows = rows_per_chunk or auto_rows_per_chunk(total_rows)
    if total_rows % chunk_rows:
        raise ValueError(f"rows_per_chunk={chunk_rows} must divide steps/log_every={total_rows}")
    steps_T = np.arange(total_rows + 1) * static.log_every
    kept_rows = key_rows(static)  # what each run keeps when point stats are recorded
    shares_ref = static.lm is not None  # a pretrained checkpoint's reference: `shared` (programs.py)
    compiled = {}  # (devices, block, padded batch size) -> [init, chunk] executables

    def train(hp_R: dict, keys_R: jax.Array, on_chunk: ChunkCallback | None = None, *, ref_R=None, proxy_R=None,
              start: Snapshot | None = None, on_snapshot: Callable[[Snapshot], None] | None = None,
              points_R: np.ndarray | None = None, shared=None, on_samples: SamplesCallback | None = None
              ) -> TrainResult:
        """hp_R: name -> float array [R]; keys_R: [R] keys. Metrics come back as name -> [T, R].
        `ref_R`: a neural policy's reference params with a leading [R] axis (reference.prepare);
        `proxy_R`: with static.reward_model, each run's frozen proxy, likewise (proxy.prepare).
        `shared`: a pretrained checkpoint's pretrained.Frozen (required for that family, else None).
        `on_samples` receives the responses drawn at logged rows (a pretrained policy's), per chunk.

        `start` continues a batch from a Snapshot of the same hp_R and keys_R (the numbers are
        those of an uninterrupted call); `on_snapshot` receives one after every chunk.
        With points_R (the sweep point of each run), every logged row is reduced on device to
        per-point moments over seeds (TrainResult.point_stats) and each run keeps only its key
        rows; its snapshots carry those key rows and the moments so far (Snapshot.moments)."""
        n_runs = keys_R.shape[0]
        names = metric_names(static)
        hp_R = {k: jnp.asarray(v, jnp.float32) for k, v in hp_R.items()}
        devices, block = batch_layout(static, n_runs, len(jax.local_devices()))
        prog = programs.program(static, chunk_rows, devices, block)
        hp_R, keys_R, ref_R, proxy_R = programs.shard_runs((hp_R, keys_R, ref_R, proxy_R), n_runs, prog.runs, block)
        if shares_ref != (shared is not None):
            raise ValueError("a pretrained policy's train() needs `shared` (pretrained.Frozen); others take none")
        pre = programs.place_shared(static, prog, shared)
        reduce = n_points = None
        if points_R is not None:
            n_points = int(np.max(points_R)) + 1
            pts_R = programs.shard_runs(jnp.asarray(points_R, jnp.int32), n_runs, prog.runs, block, fill=n_points)
            reduce = lambda rows: jax.tree.map(  # noqa: E731
                np.asarray, point_moments({k: rows[k] for k in names}, pts_R, n_points))
        t0 = time.perf_counter()
        size = (devices, block, keys_R.shape[0])
        if size not in compiled:
            compiled[size] = [prog.init.lower(*pre, hp_R, keys_R, ref_R, proxy_R).compile(), None]
        state, row0 = compiled[size][0](*pre, hp_R, keys_R, ref_R, proxy_R)
        if compiled[size][1] is None:
            compiled[size][1] = programs.compile_chunk(prog, pre, state, hp_R)
        chunk_c = compiled[size][1]
        kept = _Rows(names, n_runs, reduce, kept_rows)
        row0, samples0 = split_samples(jax.tree.map(lambda x: x[None], row0))
        if on_samples is not None and samples0 and start is None:
            on_samples(steps_T[:1], kept.unpad(samples0))
        kept.first(row0)
        rows_done = 0
        if start is not None:
            if start.rows_done % chunk_rows or start.rows_done > total_rows:
                raise ValueError(f"cannot resume at row {start.rows_done} with chunks of {chunk_rows} rows")
            state = _device_state(start.state, state, n_runs)
            kept.resume(start)
            rows_done = start.rows_done
        t1 = time.perf_counter()
        ends = range(rows_done + chunk_rows, total_rows + 1, chunk_rows)
        launched = chunk_c(*pre, state, hp_R) if len(ends) else None
        for i, done in enumerate(ends):
            state, rows = launched
            rows, samples = split_samples(rows)
            if on_samples is not None and samples:
                on_samples(steps_T[done - chunk_rows + 1:done + 1], kept.unpad(samples))
            if i + 1 < len(ends):  # dispatch the next chunk first: the devices run it while the host reads this one
                launched = chunk_c(*pre, state, hp_R)
            shown = kept.add(rows, done, chunk_rows)
            if on_chunk is not None:
                on_chunk(done, total_rows, shown)
            if on_snapshot is not None:
                on_snapshot(kept.snapshot(done, state))
        stats = kept.point_stats(steps_T, points_R, n_points) if reduce is not None else None
        state = jax.tree.map(lambda x: x[:n_runs], state)
        return TrainResult(state, kept.metrics(), steps_T if reduce is None else steps_T[kept_rows],
                           compile_seconds=t1 - t0, run_seconds=time.perf_counter() - t1,
                           diverged_at_step_R=np.asarray(state.diverged_at), point_stats=stats)

    train.chunk_rows = chunk_rows
    return train
