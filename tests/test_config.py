import pytest

from sim.config import ConfigError, parse
from tests.conftest import compose_plain


def test_defaults_parse_to_the_blog_setup():
    exp = parse(compose_plain())
    assert exp.static.advantage == "grpo" and exp.static.policy == "lowrank"
    assert exp.hparams["w_phi"] == 4.0 and exp.hparams["w_phi_prime"] == 1.0
    assert exp.hparams["competence_phi_prime"] > 0.5 > exp.hparams["competence_phi"]
    assert len(exp.seeds) >= 32


BAD = [
    (["algo.group_size=1"], "algo.group_size=1: must be an integer >= 2"),
    (["algo=rloo", "algo.group_size=1"], "algo.group_size=1"),
    (["task.phi.weight=-1"], "task.phi.weight=-1: must be a finite number >= 0"),
    (["task.phi_prime.weight=nan"], "task.phi_prime.weight=nan"),
    (["task.phi.weight=inf"], "task.phi.weight=inf: must be a finite number >= 0"),
    (["optim.lr=0"], "optim.lr=0: must be a finite number > 0"),
    (["optim.lr=-0.1"], "optim.lr=-0.1"),
    (["task.phi.competence=1.0"], "task.phi.competence=1.0: must be a number strictly between 0 and 1"),
    (["task.phi_prime.competence=0"], "task.phi_prime.competence=0"),
    (["task.vocab=7"], "task.phi_prime.good_tokens=[4, 5, 6, 7]: must be a non-empty list of integers in [0, 7)"),
    (["task.vocab=4", "task.phi_prime.good_tokens=[0]"], "task.phi.good_tokens has 4 tokens"),
    (["task.vocab=3"], "task.vocab=3: must be an integer >= 4"),
    (["steps=0"], "steps=0: must be an integer >= 1"),
    (["log_every=7"], "log_every=7: must divide steps=200"),
    (["optim.name=rmsprop"], "optim.name='rmsprop': allowed values are adam, sgd"),
    (["algo.kl.estimator=k4"], "algo.kl.estimator='k4': allowed values are k1, k2, k3"),
    (["task.phi.shape=max"], "task.phi.shape='max': allowed values are mean, all"),
    (["+algo.foo=1"], "algo.foo: unknown key"),
    (["task.phi_prime.positions=[3,4]"], "must be disjoint from task.phi.positions"),
    (["task.phi_prime.good_tokens=[3,4]"], "must be disjoint from task.phi.good_tokens"),
    (["policy.overlap=1.5"], "policy.overlap=1.5: must be a number in [0, 1]"),
    (["policy.width=0"], "policy.width=0: must be an integer >= 1"),
    (["runtime.cpu_devices=0"], "runtime.cpu_devices=0: must be auto or an integer >= 1"),
    (["runtime.cpu_devices=many"], "runtime.cpu_devices='many'"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_values_fail_with_one_line_naming_key_value_and_allowed(overrides, message):
    with pytest.raises(ConfigError) as info:
        parse(compose_plain(overrides))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_reinforce_accepts_groups_of_one():
    assert parse(compose_plain(["algo=reinforce", "algo.group_size=1"])).static.group_size == 1


def test_null_grad_clip_means_no_clipping():
    assert parse(compose_plain(["optim.max_grad_norm=null"])).hparams["max_grad_norm"] == float("inf")
