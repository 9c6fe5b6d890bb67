"""The one training loop: make_train(static) -> train(hparams_R, keys_R).

Each run (one seed at one sweep point) is a pure function of its hparams and key. Runs are
vmapped and sharded over local devices; steps (one update each: sim/rl/step.py) are a lax.scan, with
a divergence guard and exact metrics at logged steps. The loop runs in chunks of
`rows_per_chunk` logged rows, each chunk one call of the same compiled program, so the host can
show progress, stream metrics and checkpoint between chunks without changing any number.
"""
from __future__ import annotations

import functools
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sim import policies
from sim.policies import estimates
from sim.analysis import geometry
from sim.reward_models import model as reward_model
from sim.tasks import toy as task_lib
from sim.config import Static
from sim.rl.layout import PointStats, batch_layout, over_runs, point_moments
from sim.policies.base import Policy, reference_params
from sim.rl import decomposition
from sim.rl.step import BATCH_METRICS, batch_statistics, make_optimizer, no_batch_statistics, train_step

# What every logged row holds (step.BATCH_METRICS: the last update's batch statistics).
# Exact expectations under the current policy, logged at every logged step (step 0 included).
# Networks too large to enumerate estimate them by Monte Carlo (estimates.py) and also log the
# standard errors (metric_names). spill: probability of one of phi's good tokens at phi_prime's
# positions (task.spill_spec; exact, or Rao-Blackwellised Monte Carlo without a standard error).
EXACT_METRICS = estimates.NAMES + ("spill",)
# Also exact, at the same rows: the KL-cost asymmetry C(+delta) / C(-delta) with the current
# policy as the reference (geometry.py); inf once a gain of delta is out of reach, 0 a loss.
KAPPA_METRICS = ("kappa_phi", "kappa_phi_prime")
METRICS = EXACT_METRICS + KAPPA_METRICS + BATCH_METRICS


def metric_names(static: Static) -> tuple[str, ...]:
    """What a run of `static` logs: METRICS, plus `<name>_se` when its expectations are Monte Carlo,
    plus the gradient decomposition's when it is on."""
    extra = decomposition.METRICS if static.decomposition else ()
    if static.lm is not None:  # a real model: Monte Carlo expectations, and no factorised kappa (analysis.py)
        return EXACT_METRICS + BATCH_METRICS + tuple(f"{name}_se" for name in estimates.NAMES) + extra
    names = METRICS
    if static.arch is not None and not estimates.enumerates(static.task, static.enumerate_max):
        names = METRICS + tuple(f"{name}_se" for name in estimates.NAMES)
    if static.reward_model is not None:  # gold, proxy, sqrt_kl (reward_model.logged)
        names += reward_model.metric_names(static.reward_model, static.task, names)
    return names + extra


def no_step_metrics(static: Static) -> dict:
    """A logged row's update statistics where no update describes them: NaN."""
    return no_batch_statistics() | (decomposition.no_metrics() if static.decomposition else {})


class RunState(NamedTuple):
    params: Any
    opt_state: Any
    key: jax.Array  # advanced every step
    policy_key: jax.Array  # draws the family's fixed parts (e.g. features); constant
    step: jax.Array  # int32: updates attempted so far
    diverged_at: jax.Array  # int32: the step whose update went non-finite (run frozen since); -1: healthy
    ref: Any = None  # neural policies: the SFT-trained reference params (constant; None otherwise)
    proxy: Any = None  # a learned reward model's frozen proxy (constant; None: the gold reward)
    # A pretrained checkpoint's reference is not here: it is one frozen copy that every run reads
    # (make_train's `shared` argument, replicated, never vmapped), not one per run.


def build_policy(static: Static, hp: dict, policy_key: jax.Array, ref=None) -> Policy:
    """The run's policy; `ref`: a neural policy's SFT-trained reference params (RunState.ref), or
    a pretrained checkpoint's `pretrained.Frozen` (shared by every run)."""
    ref_logits = None
    if static.policy in policies.FACTORISED:
        ref_logits = task_lib.reference_logits_PxLxV(
            static.task, (hp["competence_phi"], hp["competence_phi_prime"]), hp["competence_spread"])
    return policies.build(static.policy, static.task, ref_logits, hp, policy_key, width=static.width,
                          arch=static.arch, ref_params=ref, lm=static.lm)


def exact_metrics(static: Static, policy: Policy, params, ref_params, hp: dict, key: jax.Array) -> dict:
    """`key` draws the Monte Carlo responses of networks; a run passes the same key at every logged
    step (common random numbers: the curve's step-to-step changes are not sampling noise)."""
    if policy.marginals is None:
        out, good_prob_PxK = estimates.sequence_metrics(
            static.task, policy, params, ref_params, (hp["w_phi"], hp["w_phi_prime"]), key, static.eval_samples,
            static.enumerate_max, keep_samples=static.lm is not None, prompts_P=eval_prompts_P(static))
        if static.lm is not None:  # kappa of a real model: from its sampled rewards, after training
            return out
        return out | geometry.marginal_kappas(static.task, good_prob_PxK, hp["kappa_delta"])
    logp_PxLxV = jax.nn.log_softmax(policy.marginals(params))
    logq_PxLxV = jax.nn.log_softmax(policy.marginals(ref_params))
    phi_P, phi_prime_P = task_lib.expected_rewards_P(static.task, logp_PxLxV)
    p_PxLxV = jnp.exp(logp_PxLxV)
    return {
        "phi": jnp.mean(phi_P),
        "phi_prime": jnp.mean(phi_prime_P),
        "reward": jnp.mean(hp["w_phi"] * phi_P + hp["w_phi_prime"] * phi_prime_P),
        # >= 0 as a KL is: the two log-softmaxes may be laid out differently by XLA (the reference's is
        # folded to a constant), and a policy at its reference read -9e-7 rather than 0
        "kl": jnp.maximum(geometry.factorised_kl(logp_PxLxV, logq_PxLxV), 0.0),
        "entropy": jnp.mean(-jnp.sum(p_PxLxV * logp_PxLxV, (-1, -2))),
        "spill": jnp.mean(task_lib.spill_P(static.task, logp_PxLxV)),
    } | geometry.policy_kappas(static.task, logp_PxLxV, hp["kappa_delta"])


def eval_prompts_P(static: Static) -> jax.Array | None:
    """The held-out prompts a real model is evaluated on (they follow the training prompts in its
    prompt table); None: the training prompts."""
    if not static.eval_prompts:
        return None
    return jnp.arange(static.task.prompts, static.task.prompts + static.eval_prompts)


def eval_key(state: RunState) -> jax.Array:
    """The run's fixed key for Monte Carlo expectations (independent of its training keys)."""
    return jax.random.fold_in(state.policy_key, 1)


def with_proxy(static: Static, policy: Policy, state: RunState, row: dict, hp: dict) -> dict:
    """A logged row, plus gold, proxy and sqrt_kl when the run optimises a learned proxy."""
    if static.reward_model is None:
        return row
    return row | reward_model.logged(static.reward_model, static.task, policy, state.params, state.proxy,
                                     eval_key(state), row, hp)


def init_run(static: Static, hp: dict, key: jax.Array, ref=None, proxy=None, shared=None) -> tuple[RunState, dict]:
    """`shared`: the reference every run reads (pretrained.Frozen), passed un-vmapped."""
    key, policy_key = jax.random.split(key)
    policy = build_policy(static, hp, policy_key, ref if shared is None else shared)
    params = policy.init()
    state = RunState(params, make_optimizer(static, hp).init(params), key, policy_key,
                     step=jnp.int32(0), diverged_at=jnp.int32(-1), ref=ref, proxy=proxy)
    row = with_proxy(static, policy, state, exact_metrics(static, policy, params, reference_params(policy), hp,
                                                          eval_key(state)), hp)
    row.update(no_step_metrics(static))
    row["diverged_at_step"] = state.diverged_at
    return state, row


def _all_finite(*trees) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def guarded_step(static: Static, policy: Policy, ref_params, hp: dict, state: RunState,
                 with_metrics: jax.Array) -> tuple[RunState, dict]:
    """train_step, but a run whose loss, sampled rewards or new parameters are non-finite keeps
    its previous parameters and optimizer state from then on (frozen) and records the step.
    Runs are vmapped, so one run's NaN never reaches another run's numbers; the select is exact,
    so healthy runs get bit-identical results with or without the guard.

    The batch statistics are computed only where `with_metrics` (a scalar shared by every run,
    so under vmap this stays a branch rather than both sides and a select); elsewhere NaN."""
    key, step_key = jax.random.split(state.key)
    params, opt_state, described = train_step(static, policy, ref_params, hp, state.params, state.opt_state, step_key,
                                              state.proxy)
    batch, loss_E = described[0], described[1]
    step = state.step + 1
    ok = (state.diverged_at < 0) & _all_finite(params, loss_E[0], jnp.sum(batch.weight_B * (
        hp["w_phi"] * batch.phi_B + hp["w_phi_prime"] * batch.phi_prime_B)))
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    diverged_at = jnp.where((state.diverged_at < 0) & ~ok, step, state.diverged_at)
    def describe():
        m = batch_statistics(static, policy, ref_params, hp, state.params, *described)
        if static.decomposition:  # its gradient batch: a key of its own, so the training keys stay as they were
            m |= decomposition.metrics(static, policy, ref_params, hp, state.params, batch,
                                       jax.random.fold_in(step_key, 1))
        return m

    m = jax.lax.cond(with_metrics, describe, lambda: no_step_metrics(static))
    m = jax.tree.map(lambda x: jnp.where(ok, x, jnp.nan), m)  # no update happened: no batch statistics
    return state._replace(params=params, opt_state=opt_state, key=key, step=step, diverged_at=diverged_at), m


def run_chunk(static: Static, rows: int, state: RunState, hp: dict, shared=None) -> tuple[RunState, dict]:
    """`rows` logged intervals of `log_every` steps each; returns the rows (exact + last batch)."""
    policy = build_policy(static, hp, state.policy_key, state.ref if shared is None else shared)
    ref_params = reference_params(policy)

    def one_step(carry, i):
        state, _ = carry
        return guarded_step(static, policy, ref_params, hp, state, i == static.log_every - 1), None

    def one_interval(state, _):
        (state, last), _ = jax.lax.scan(one_step, (state, no_step_metrics(static)), jnp.arange(static.log_every))
        row = with_proxy(static, policy, state, exact_metrics(static, policy, state.params, ref_params, hp,
                                                              eval_key(state)), hp) | last
        row["diverged_at_step"] = state.diverged_at
        return state, row

    return jax.lax.scan(one_interval, state, None, length=rows)


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


def run_shardings(n_devices: int | None = None) -> tuple[NamedSharding, NamedSharding]:
    """Shardings of per-run arrays [R, ...] and of logged rows [C, R]: runs split over the first
    n_devices local devices (None: all)."""
    mesh = Mesh(np.array(jax.local_devices()[:n_devices]), ("runs",))
    return NamedSharding(mesh, PartitionSpec("runs")), NamedSharding(mesh, PartitionSpec(None, "runs"))


def _shard_runs(tree, n_runs: int, sharding: NamedSharding, block: int, fill=None):
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
    """Inverse of host_state: pad the run axis as _shard_runs does and place each leaf like `like`."""
    def leaf(h, ref):
        h = np.concatenate([h, np.repeat(h[-1:], ref.shape[0] - n_runs, 0)]) if ref.shape[0] > n_runs else h
        x = jax.random.wrap_key_data(h, impl=jax.random.key_impl(ref)) if _is_key(ref) else jnp.asarray(h, ref.dtype)
        if x.shape != ref.shape:
            raise ValueError(f"checkpoint leaf of shape {x.shape} where the state has {ref.shape}")
        return jax.device_put(x, ref.sharding)

    if jax.tree.structure(host) != jax.tree.structure(like):
        raise ValueError("checkpoint does not have the structure of this configuration's state")
    return jax.tree.map(leaf, host, like)


@functools.lru_cache(maxsize=32)
def make_train(static: Static, rows_per_chunk: int | None = None):
    """Compile once per (Static, batch size); train() accepts any hparams values and seeds.

    Cached, so every caller in a process with the same Static shares the compiled programs."""
    total_rows = static.steps // static.log_every
    chunk_rows = rows_per_chunk or auto_rows_per_chunk(total_rows)
    if total_rows % chunk_rows:
        raise ValueError(f"rows_per_chunk={chunk_rows} must divide steps/log_every={total_rows}")
    steps_T = np.arange(total_rows + 1) * static.log_every
    kept_rows = key_rows(static)  # what each run keeps when point stats are recorded
    # A pretrained checkpoint's frozen reference is one argument shared by every run, replicated
    # (`pre`: () or (shared,)), rather than a per-run RunState.ref with a leading [R] axis.
    shares_ref = static.lm is not None
    if shares_ref:
        init_one = lambda s, hp, key, ref, proxy: init_run(static, hp, key, ref, proxy, shared=s)  # noqa: E731
        chunk_one = lambda s, state, hp: run_chunk(static, chunk_rows, state, hp, shared=s)  # noqa: E731
    else:
        init_one, chunk_one = partial(init_run, static), partial(run_chunk, static, chunk_rows)
    programs = {}  # (devices, block) -> (run sharding, replicated sharding, jitted init, jitted chunk)

    model_sharded = shares_ref and static.lm.sharded  # runtime.mesh: the model split over the devices

    def program(devices: int, block: int):
        if model_sharded:
            return model_sharded_program()
        if (devices, block) not in programs:
            runs, rows = run_shardings(devices)
            replicated = NamedSharding(runs.mesh, PartitionSpec())
            pre_sh = (replicated,) * shares_ref
            init_R = jax.jit(over_runs(init_one, runs.mesh, block, shares_ref), in_shardings=pre_sh + (runs,) * 4,
                             out_shardings=runs)
            chunk_runs = over_runs(chunk_one, runs.mesh, block, shares_ref)

            def chunk_RxC(*args):  # rows come back per run, [R, C]; the host wants [C, R]
                state, rows_RxC = chunk_runs(*args)
                return state, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rows_RxC)

            chunk_R = jax.jit(chunk_RxC, in_shardings=pre_sh + (runs, runs), out_shardings=(runs, rows))
            programs[devices, block] = runs, replicated, init_R, chunk_R
        return programs[devices, block]

    def model_sharded_program():
        """runtime.mesh: the runs one after another (lax.map), each sharded over the whole mesh:
        the frozen reference placed by the model's rules, the weights and the batch constrained
        inside the policy (pretrained.make); every per-run array replicated."""
        if "model" not in programs:
            from sim.lm import sharding

            mesh = sharding.make_mesh(*static.lm.mesh)
            replicated = NamedSharding(mesh, PartitionSpec())

            def over(fn):
                return lambda s, *args: jax.lax.map(lambda a: fn(s, *a), args)

            def chunk_RxC(*args):
                state, rows_RxC = over(chunk_one)(*args)
                return state, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rows_RxC)

            # the chunk is jitted once the state exists: its state comes out where init put it
            programs["model"] = replicated, replicated, jax.jit(over(init_one)), chunk_RxC
        return programs["model"]

    compiled = {}  # (devices, block, padded batch size) -> (init, chunk) executables

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
        runs, replicated, init_R, chunk_R = program(devices, block)
        hp_R, keys_R, ref_R, proxy_R = _shard_runs((hp_R, keys_R, ref_R, proxy_R), n_runs, runs, block)
        if shares_ref != (shared is not None):
            raise ValueError("a pretrained policy's train() needs `shared` (pretrained.Frozen); others take none")
        pre = (jax.device_put(shared, replicated),) if shares_ref else ()
        if model_sharded:  # the reference by the model's rules, the prompts replicated
            from sim.lm import sharding

            rules = sharding.param_shardings(static.lm.model, shared.params, replicated.mesh)
            pre = (type(shared)(sharding.put(shared.params, rules), *jax.device_put(tuple(shared[1:]), replicated)),)
        reduce = None
        if points_R is not None:
            n_points = int(np.max(points_R)) + 1
            pts_R = _shard_runs(jnp.asarray(points_R, jnp.int32), n_runs, runs, block, fill=n_points)
            reduce = lambda rows: jax.tree.map(  # noqa: E731
                np.asarray, point_moments({k: rows[k] for k in names}, pts_R, n_points))
        t0 = time.perf_counter()
        size = (devices, block, keys_R.shape[0])
        if size not in compiled:
            compiled[size] = [init_R.lower(*pre, hp_R, keys_R, ref_R, proxy_R).compile(), None]
        state, row0 = compiled[size][0](*pre, hp_R, keys_R, ref_R, proxy_R)
        if compiled[size][1] is None:  # lowered on the real state, so its shardings match
            if model_sharded:
                chunk_R = jax.jit(chunk_R, out_shardings=(jax.tree.map(lambda x: x.sharding, state), replicated))
            compiled[size][1] = chunk_R.lower(*pre, state, hp_R).compile()
        chunk_c = compiled[size][1]
        # to the host whole, then cut: a device-side slice would be one more dispatch per metric
        unpad = partial(jax.tree.map, lambda x: np.asarray(x)[:, :n_runs])
        row0, samples0 = split_samples(jax.tree.map(lambda x: x[None], row0))
        if on_samples is not None and samples0 and start is None:
            on_samples(steps_T[:1], unpad(samples0))
        chunks, moments = [unpad(row0)], [reduce(row0)] if reduce else []
        rows_done = 0
        if start is not None:
            if start.rows_done % chunk_rows or start.rows_done > total_rows:
                raise ValueError(f"cannot resume at row {start.rows_done} with chunks of {chunk_rows} rows")
            state = _device_state(start.state, state, n_runs)
            chunks, rows_done = [dict(start.rows)], start.rows_done
            if reduce is not None:
                if start.moments is None:
                    raise ValueError("resuming point statistics (points_R) needs a snapshot with moments")
                moments = [{k: (start.moments["mean"][k], start.moments["m2"][k]) for k in names}]
        t1 = time.perf_counter()
        ends = range(rows_done + chunk_rows, total_rows + 1, chunk_rows)
        launched = chunk_c(*pre, state, hp_R) if len(ends) else None
        for i, done in enumerate(ends):
            state, rows = launched
            rows, samples = split_samples(rows)
            if on_samples is not None and samples:
                on_samples(steps_T[done - chunk_rows + 1:done + 1], unpad(samples))
            if i + 1 < len(ends):  # dispatch the next chunk first: the devices run it while the host reads this one
                launched = chunk_c(*pre, state, hp_R)
            if reduce is None:
                chunks.append(unpad(rows))
                shown = chunks[-1]
            else:  # keep the moments, and of each run only its key rows
                moments.append(reduce(rows))
                shown = {k: m[0] for k, m in moments[-1].items()}
                chunks += [unpad({k: v[i:i + 1] for k, v in rows.items()})
                           for i, row in enumerate(range(done - chunk_rows + 1, done + 1)) if row in kept_rows[1:]]
            if on_chunk is not None:
                on_chunk(done, total_rows, shown)
            if on_snapshot is not None:
                chunks = [{k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}]
                snap_moments = None
                if reduce is not None:
                    moments = [{k: tuple(np.concatenate([m[k][j] for m in moments]) for j in (0, 1)) for k in names}]
                    snap_moments = {"mean": {k: v[0] for k, v in moments[0].items()},
                                    "m2": {k: v[1] for k, v in moments[0].items()}}
                on_snapshot(Snapshot(done, host_state(jax.tree.map(lambda x: x[:n_runs], state)), chunks[0],
                                     snap_moments))
        metrics = {k: np.concatenate([c[k] for c in chunks]) for k in names}
        stats = None
        if reduce is not None:
            stats = PointStats(steps_T, np.bincount(points_R, minlength=n_points),
                               *({k: np.concatenate([m[k][j] for m in moments]) for k in names} for j in (0, 1)))
        state = jax.tree.map(lambda x: x[:n_runs], state)
        return TrainResult(state, metrics, steps_T if reduce is None else steps_T[kept_rows],
                           compile_seconds=t1 - t0, run_seconds=time.perf_counter() - t1,
                           diverged_at_step_R=np.asarray(state.diverged_at), point_stats=stats)

    train.chunk_rows = chunk_rows
    return train
