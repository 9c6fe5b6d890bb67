"""Reading one typed value from a composed config mapping. Each reader returns the value or raises
`ConfigError` with one line naming the key, the bad value and what is allowed; sim/config.py
builds the schema from them. A numeric rule is a pair (check, allowed): a predicate on the value
as a float, and the words that say what passes it (they end the error message).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


class ConfigError(ValueError):
    """A user error in the configuration; its message is one line."""


def lookup(cfg: Mapping, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{key}: missing; it is required")
        node = node[part]
    return node


def integer(cfg, key: str, lo: int, hi: int | None = None) -> int:
    v = lookup(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise ConfigError(f"{key}={v!r}: must be {allowed}")
    return v


def choice(cfg, key: str, allowed) -> str:
    v = lookup(cfg, key)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r}: allowed values are {', '.join(allowed)}")
    return v


def flag(cfg, key: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r}: must be true or false")
    return v


def number(v: Any, check, allowed: str) -> float | None:
    """v as a float if it satisfies the rule, else None. null stands for inf where that is allowed."""
    if v is None and "inf" in allowed:
        return math.inf
    try:
        x = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    except OverflowError:  # an integer too large for a float
        x = math.nan
    return None if math.isnan(x) or not check(x) else x


def real(cfg, key: str, check, allowed: str) -> float:
    v = lookup(cfg, key)
    out = number(v, check, allowed)
    if out is None:
        raise ConfigError(f"{key}={v!r}: must be {allowed}")
    return out


def is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def sweep_axis(key: str, values: list, check, allowed: str) -> tuple[float, ...]:
    """An in-process sweep axis: every value obeys the scalar rule; no value twice."""
    if not values:
        raise ConfigError(f"{key}=[]: a sweep axis needs at least one value")
    out = []
    for v in values:
        x = number(v, check, allowed)
        if x is None:
            raise ConfigError(f"{key}={list(values)!r}: sweep values must each be {allowed}; {v!r} is not")
        if x in out:
            raise ConfigError(f"{key}={list(values)!r}: sweep values must not repeat; {v!r} appears twice")
        out.append(x)
    return tuple(out)


def int_list(cfg, key: str, lo: int, hi: int) -> tuple[int, ...]:
    v = lookup(cfg, key)
    items = list(v) if isinstance(v, (list, tuple)) or hasattr(v, "__iter__") and not isinstance(v, str) else None
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or not lo <= i < hi for i in items):
        raise ConfigError(f"{key}={v!r}: must be a non-empty list of integers in [{lo}, {hi})")
    if len(set(items)) != len(items):
        raise ConfigError(f"{key}={v!r}: must not repeat an entry")
    return tuple(items)


# Hparams are float32 on the device: "finite" means finite as a float32, and a probability must
# stay strictly inside (0, 1) after rounding to float32 (and not be subnormal, which XLA may flush).
F32_MAX, F32_TINY = float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)
FINITE_NONNEG = (lambda v: 0 <= v <= F32_MAX, "a finite number >= 0 (float32: at most 3.4e38)")
POSITIVE = (lambda v: 0 < v <= F32_MAX, "a finite number > 0 (float32: at most 3.4e38)")
PROBABILITY = (lambda v: F32_TINY <= v < 1 and np.float32(v) < 1,
               "a number strictly between 0 and 1 (float32: from 1.2e-38 to 0.99999994)")
UNIT = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
CLIP = (lambda v: v > 0, "a number > 0, or null for no clipping (inf)")
EPS_HIGH = (lambda v: v >= 0, "a number >= 0, or null for no upper clip (inf)")
KAPPA = (lambda v: 0 < v <= F32_MAX, "a finite number > 0, or null to use the competence")
