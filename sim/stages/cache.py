"""The cache stage that SFT references (references.py) and reward models (proxy.py) share: each
distinct item of a batch is keyed by a hash of what determines it, loaded from disk when present,
fitted when missing, saved, and stacked back onto the runs.

An item is stored as `<dir>/<key>.npz`: the parameter leaves (leaf_0, leaf_1, ...), its loss curve
(loss_S) and named scalar measurements (measured_<name>). The key hashes the caller's fields plus
the jax version and the source code of the modules that compute the item, so editing them
invalidates old entries. Files are written atomically, so concurrent runs can share a directory.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, NamedTuple

import jax
import numpy as np


def source_hash(modules: Iterable[ModuleType]) -> str:
    return hashlib.sha256("".join(inspect.getsource(m) for m in modules).encode()).hexdigest()


def key(fields: dict, sources: Iterable[ModuleType]) -> str:
    """24 hex digits of the hash of `fields`, the jax version and the sources' code."""
    blob = json.dumps(fields | {"jax": jax.__version__, "source": source_hash(sources)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def save(path: Path, params, loss_S: np.ndarray, measured: dict, names: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))}
    arrays.update({"loss_S": loss_S}, **{f"measured_{k}": np.asarray(measured[k]) for k in names})
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load(path: Path, template, names: tuple[str, ...]) -> tuple[object, np.ndarray, dict] | None:
    """(params, loss_S, measured), or None when absent or not shaped like `template` (then refitted)."""
    leaves, treedef = jax.tree.flatten(template)
    try:
        with np.load(path) as f:
            stored = [f[f"leaf_{i}"] for i in range(len(leaves))]
            if f"leaf_{len(leaves)}" in f or any(s.shape != t.shape for s, t in zip(stored, leaves)):
                return None
            measured = {k: float(f[f"measured_{k}"]) for k in names}
            return jax.tree.unflatten(treedef, stored), np.asarray(f["loss_S"]), measured
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # absent, truncated, or another format
        return None


class Item(NamedTuple):
    params: object
    loss_S: np.ndarray
    measured: dict
    cached: bool  # loaded from disk (not fitted by this call)
    path: Path


class Stage(NamedTuple):
    items: list[Item]  # one per distinct key, in the caller's order
    params_R: object  # the items' params stacked and indexed by each run's item (leading [R] axis)
    loss_KxS: np.ndarray
    seconds: float  # fitting time of this call (0 when every item was cached)


# fit(missing indices) -> (params, loss_S, measured) of each, in that order
Fit = Callable[[list[int]], Iterable[tuple[object, np.ndarray, dict]]]


def run(paths: list[Path], index_R: np.ndarray, template, names: tuple[str, ...], fit: Fit) -> Stage:
    """Load what exists, fit what is missing (all in one call of `fit`), save it, stack onto the runs."""
    found = [load(p, template, names) for p in paths]
    missing = [k for k, f in enumerate(found) if f is None]
    t0 = time.perf_counter()
    if missing:
        for k, (params, loss_S, measured) in zip(missing, fit(missing), strict=True):
            save(paths[k], params, loss_S, measured, names)
            found[k] = (params, loss_S, measured)
    seconds = time.perf_counter() - t0
    items = [Item(p, l, m, k not in missing, paths[k]) for k, (p, l, m) in enumerate(found)]
    params_K = jax.tree.map(lambda *xs: np.stack(xs), *[i.params for i in items])
    return Stage(items, jax.tree.map(lambda x: x[index_R], params_K), np.stack([i.loss_S for i in items]), seconds)
