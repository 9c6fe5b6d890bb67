"""sim/hparams.py: the numeric knobs of a composed config: scalars, sweep axes in HPARAM_KEYS order,
derived settings, and target kappas checked over every swept combination (through config.parse)."""
import pytest

from sim.config import ConfigError, parse
from tests.conftest import compose_plain


def test_lists_become_sweep_axes_in_a_fixed_order_with_the_first_value_as_hparam():
    exp = parse(compose_plain(["optim.lr=[0.01,0.05]", "task.phi.weight=[2,4,8]", "optim.max_grad_norm=[1,null]"]))
    # axes follow HPARAM_KEYS order, not the order of the overrides
    assert list(exp.axes) == ["task.phi.weight", "optim.lr", "optim.max_grad_norm"]
    assert exp.axes["optim.lr"] == (0.01, 0.05) and exp.axes["task.phi.weight"] == (2.0, 4.0, 8.0)
    assert exp.axes["optim.max_grad_norm"] == (1.0, float("inf"))  # null: no clipping, as for a scalar
    assert exp.hparams["lr"] == 0.01 and exp.hparams["w_phi"] == 2.0
    assert exp.n_runs == 3 * 2 * 2 * len(exp.seeds)


def test_relative_weight_is_a_derived_setting_not_an_hparam():
    exp = parse(compose_plain(["task.phi_prime.relative_weight=0.5"]))
    assert exp.derived == {"relative_weight": 0.5} and not exp.axes and "relative_weight" not in exp.hparams
    swept = parse(compose_plain(["task.phi_prime.relative_weight=[0,0.25]"]))
    assert swept.axes == {"task.phi_prime.relative_weight": (0.0, 0.25)} and swept.derived == {}
    assert parse(compose_plain()).derived == {}  # null by default: the weights as given


def test_an_unreachable_kappa_in_a_sweep_axis_is_refused_at_parse():
    with pytest.raises(ConfigError, match=r"task.phi_prime.kappa=3: unreachable"):
        parse(compose_plain(["task.phi_prime.kappa=[0.5,3]"]))
