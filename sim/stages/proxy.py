"""The reward-model stage: one frozen proxy per distinct variant of a batch, fit and cached on disk.

An edge module (file I/O and a progress bar) like references.py; both go through the shared cache
stage (cache.py). The model and its fit are sim/reward_models/model.py. A variant is what determines a proxy: the pairs, the label noise,
the gold's weights (w1, w2: the labeller's reward) and the reference's competence point (where the
pairs are drawn). Sweep points that differ in anything else (beta, the learning rate, seeds) share
one proxy. Each variant is fit alone, in a program compiled per number of pairs, so its numbers do
not depend on what else the batch holds.

A proxy is stored as `<cache dir>/<key>.npz` (cache_dir); the key hashes the task, the family and
its shapes, the fit settings, the variant, the jax version and the source of the modules that
compute it (editing them invalidates old entries). Files are written atomically.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from sim.stages import cache, references as reference
from sim.reward_models import model as rm_lib
from sim.tasks import toy as task_lib
from sim.config import Experiment

# What determines a proxy, and the sweepable settings among it (hparams.DERIVED_KEYS)
VARIANT = ("pairs", "noise", "seed", "w_phi", "w_phi_prime", "competence_phi", "competence_phi_prime",
           "competence_spread")
SWEPT = {"pairs": ("reward_model.pairs", "rm_pairs"), "noise": ("reward_model.noise", "rm_noise"),
         "seed": ("reward_model.seed", "rm_seed")}
_MEASURED = ("agreement_train", "agreement_held_out", "final_loss")
_SOURCES = (rm_lib,) + rm_lib.SOURCES
CHUNKS = 10  # progress updates per fit


def cache_dir(exp: Experiment) -> Path:
    """Beside the SFT references: $SIM_CACHE_DIR/reward_model (or ~/.cache/sim/reward_model); with
    runtime.sft_cache set, a reward_model folder inside it."""
    if exp.runtime.sft_cache:
        return Path(exp.runtime.sft_cache).expanduser() / "reward_model"
    return reference.default_cache_dir().parent / "reward_model"


def cache_key(exp: Experiment, variant_8: np.ndarray) -> str:
    """The ensemble size of a single model is left out (its key is that of the single model it was
    before ensembles); the objective is no part of the model (every objective shares its members)."""
    rm = exp.static.reward_model
    model = {k: v for k, v in asdict(rm).items() if k != "ensemble"}
    fields = {"task": asdict(exp.static.task), "model": model, "fit": asdict(exp.reward_fit),
              "variant": [float(np.float32(v)) for v in variant_8]}
    return cache.key(fields | ({"ensemble": rm.ensemble} if rm.ensemble > 1 else {}), _SOURCES)


def variants_R(exp: Experiment, batch) -> np.ndarray:
    """[R, 8]: each run's variant (VARIANT order), from its sweep point's values and hparams."""
    rows = []
    for values, hp in zip(batch.point_values, batch.point_hparams):
        rows.append([values.get(key, exp.derived.get(name)) for key, name in SWEPT.values()] + [hp[k] for k in VARIANT[3:]])
    return np.asarray(rows, np.float64)[batch.points_R]


@functools.lru_cache(maxsize=16)
def _programs(model: rm_lib.RewardModel, task: task_lib.Task, fit: rm_lib.Fit, n: int, chunk: int):
    """Jitted (start, chunk, finish) of one variant's fit on n pairs."""
    def data(v_8, n, stream):
        ref_logits = task_lib.reference_logits_PxLxV(task, (v_8[5], v_8[6]), v_8[7])
        return rm_lib.preference_data(task, n, v_8[2], v_8[1], v_8[3:5], ref_logits, stream)

    def start(v_8, member):
        rows_N = rm_lib.member_rows_N(v_8[2], member, n)  # all pairs in order for member 0 (the single model)
        net = rm_lib.init(model, task, rm_lib.member_init_key(v_8[2], member))
        return (net, optax.adam(fit.lr).init(net)), tuple(x[rows_N] for x in data(v_8, n, 0))

    def finish(net, v_8):
        data_n = data(v_8, n, 0)  # every member is calibrated and scored on the pairs themselves
        prompts_N, a_NxL, b_NxL, _, gold_a_N, gold_b_N = data_n
        proxy = rm_lib.calibrate(model, task, net, prompts_N, a_NxL, b_NxL, gold_a_N, gold_b_N)
        held = data(v_8, rm_lib.HELD_OUT_PAIRS, 1)
        return proxy, {"agreement_train": rm_lib.agreement(model, task, proxy, *data_n[:3], *data_n[4:]),
                       "agreement_held_out": rm_lib.agreement(model, task, proxy, *held[:3], *held[4:])}

    step = jax.jit(lambda carry, data: rm_lib.fit_chunk(model, task, fit, chunk, carry, data[:4]))
    return jax.jit(start), step, jax.jit(finish)


def fit_variant(exp: Experiment, variant_8: np.ndarray, on_steps=None, member: int = 0) -> tuple[dict, np.ndarray, dict]:
    """(proxy, loss per step, measured) of one variant's member (0: the single model); `on_steps(k)`
    after every k steps."""
    fit = exp.reward_fit
    chunk = next(c for c in range(max(1, fit.steps // CHUNKS), 0, -1) if fit.steps % c == 0)
    start, step, finish = _programs(rm_lib.member(exp.static.reward_model), exp.static.task, fit, int(variant_8[0]), chunk)
    v = jnp.asarray(variant_8, jnp.float32)
    carry, data = start(v, jnp.int32(member))
    losses = []
    for _ in range(fit.steps // chunk):
        carry, loss_C = step(carry, data)
        losses.append(np.asarray(loss_C))
        if on_steps is not None:
            on_steps(chunk)
    proxy, measured = finish(carry[0], v)
    loss_S = np.concatenate(losses)
    measured = {k: float(x) for k, x in measured.items()} | {"final_loss": float(np.mean(loss_S[-max(1, fit.steps // 10):]))}
    return jax.tree.map(np.asarray, proxy), loss_S, measured


class Proxies(NamedTuple):
    params_R: object  # each run's frozen proxy (leading [R] axis), for train(..., proxy_R=...)
    loss_KxS: np.ndarray  # Bradley-Terry loss curve of each distinct variant
    variants: list[dict]  # per distinct variant: its values, agreement with gold (an ensemble: members' mean), cache file
    seconds: float  # fitting time of this call (0 when every proxy was cached)


def template(exp: Experiment) -> dict:
    """The proxy's shapes: with an ensemble, a leading member axis on every leaf."""
    model, task = exp.static.reward_model, exp.static.task
    one = jax.eval_shape(lambda: {"net": rm_lib.init(model, task, jax.random.key(0)),
                                  "scale": jnp.float32(0), "shift": jnp.float32(0)})
    if model.ensemble == 1:
        return one
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((model.ensemble, *x.shape), x.dtype), one)


def fit_ensemble(exp: Experiment, variant_8: np.ndarray, on_steps=None) -> tuple[dict, np.ndarray, dict]:
    """A single model, or an ensemble's members stacked (loss and measures: means over members)."""
    k = exp.static.reward_model.ensemble
    if k == 1:
        return fit_variant(exp, variant_8, on_steps)
    fits = [fit_variant(exp, variant_8, on_steps, member) for member in range(k)]
    proxy = jax.tree.map(lambda *xs: np.stack(xs), *[f[0] for f in fits])
    return proxy, np.mean([f[1] for f in fits], 0), {m: float(np.mean([f[2][m] for f in fits])) for m in _MEASURED}


def prepare(exp: Experiment, batch) -> Proxies:
    """Load or fit the proxy of every run's variant (the reward-model stage)."""
    variant_Rx8 = variants_R(exp, batch)
    variant_Kx8, index_R = np.unique(variant_Rx8, axis=0, return_inverse=True)
    index_R = index_R.reshape(-1)
    paths = [cache_dir(exp) / f"{cache_key(exp, v)}.npz" for v in variant_Kx8]

    def fit(missing: list[int]):
        family = exp.static.reward_model.family
        print(f"sim: fitting {len(missing)} {family} reward model(s), compiling ...", file=sys.stderr, flush=True)
        with tqdm(total=len(missing) * exp.static.reward_model.ensemble * exp.reward_fit.steps, unit="step", file=sys.stderr, dynamic_ncols=True,
                  desc="reward model", mininterval=0.2) as bar:
            for k in missing:
                proxy, loss_S, measured = fit_ensemble(exp, variant_Kx8[k], bar.update)
                bar.set_postfix(loss=f"{measured['final_loss']:.4f}", held_out=f"{measured['agreement_held_out']:.3f}")
                yield proxy, loss_S, measured

    stage = cache.run(paths, index_R, template(exp), _MEASURED, fit)
    if any(item.cached for item in stage.items):
        print(f"sim: {sum(item.cached for item in stage.items)} reward model(s) loaded from {cache_dir(exp)}", file=sys.stderr)
    variants = [{**{name: float(x) for name, x in zip(VARIANT, variant_Kx8[k])}, **item.measured, "cached": item.cached,
                 "file": str(item.path)} for k, item in enumerate(stage.items)]
    variants = [v | {"pairs": int(v["pairs"]), "seed": int(v["seed"])} for v in variants]
    return Proxies(stage.params_R, stage.loss_KxS, variants, stage.seconds)

def frozen_equal(before, after) -> bool:
    """Whether two proxies are bit-identical (the RL run must not have changed its reward model)."""
    return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))

