"""The typed readers of sim/config_values.py, on plain mappings: each returns the value or raises
one ConfigError line naming the key, the value and what is allowed. tests/test_config.py checks
the same messages end to end, through Hydra and parse."""
import math

import numpy as np
import pytest

from sim.config_values import (CLIP, FINITE_NONNEG, PROBABILITY, ConfigError, choice, flag, int_list, integer,
                               lookup, number, real, sweep_axis)

CFG = {"a": {"b": 3, "t": True, "x": 2.5, "l": [0, 2], "s": "adam"}}


def test_readers_return_valid_values():
    assert lookup(CFG, "a.b") == 3 and integer(CFG, "a.b", 1, 3) == 3
    assert choice(CFG, "a.s", ("adam", "sgd")) == "adam"
    assert flag(CFG["a"], "t", False) is True and flag(CFG["a"], "absent", False) is False
    assert real(CFG, "a.x", *FINITE_NONNEG) == 2.5 and real(CFG, "a.b", *FINITE_NONNEG) == 3.0
    assert int_list(CFG, "a.l", 0, 4) == (0, 2)
    assert sweep_axis("a.x", [1, 0.5], *FINITE_NONNEG) == (1.0, 0.5)


@pytest.mark.parametrize("read, message", [
    (lambda: lookup(CFG, "a.c"), "a.c: missing; it is required"),
    (lambda: lookup(CFG, "a.b.c"), "a.b.c: missing"),  # b is a value, not a section
    (lambda: integer(CFG, "a.t", 0), "a.t=True: must be an integer >= 0"),  # a bool is not an integer
    (lambda: integer(CFG, "a.x", 0), "a.x=2.5: must be an integer >= 0"),
    (lambda: integer(CFG, "a.b", 0, 2), "a.b=3: must be an integer in [0, 2]"),
    (lambda: choice(CFG, "a.s", ("sgd",)), "a.s='adam': allowed values are sgd"),
    (lambda: flag(CFG["a"], "b", False), "b=3: must be true or false"),
    (lambda: real(CFG, "a.t", *FINITE_NONNEG), "a.t=True: must be a finite number >= 0"),
    (lambda: real(CFG, "a.s", *FINITE_NONNEG), "a.s='adam': must be a finite number >= 0"),
    (lambda: int_list(CFG, "a.l", 1, 4), "a.l=[0, 2]: must be a non-empty list of integers in [1, 4)"),
    (lambda: int_list({"l": [1, 1]}, "l", 0, 4), "l=[1, 1]: must not repeat an entry"),
    (lambda: int_list({"l": []}, "l", 0, 4), "l=[]: must be a non-empty list"),
    (lambda: sweep_axis("k", [], *FINITE_NONNEG), "k=[]: a sweep axis needs at least one value"),
    (lambda: sweep_axis("k", [1, 1.0], *FINITE_NONNEG), "k=[1, 1.0]: sweep values must not repeat; 1.0 appears"),
    (lambda: sweep_axis("k", [1, -1], *FINITE_NONNEG), "k=[1, -1]: sweep values must each be a finite number"),
])
def test_each_bad_value_gets_one_line_naming_the_key_and_what_is_allowed(read, message):
    with pytest.raises(ConfigError) as err:
        read()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_numbers_follow_float32_and_null_means_inf_only_where_allowed():
    assert number(None, *CLIP) == math.inf  # "null for no clipping (inf)"
    assert number(None, *FINITE_NONNEG) is None
    assert number(10**400, *FINITE_NONNEG) is None  # too large for a float: rejected, not an OverflowError
    assert number(1e39, *FINITE_NONNEG) is None  # a float64 but not a finite float32
    assert number(float("nan"), lambda v: True, "anything") is None
    # a probability must stay strictly inside (0, 1) once it is a float32, and not be subnormal
    assert number(0.99999994, *PROBABILITY) == 0.99999994 and np.float32(0.99999994) < 1
    assert number(0.99999999, *PROBABILITY) is None and np.float32(0.99999999) == 1
    assert number(1e-40, *PROBABILITY) is None
