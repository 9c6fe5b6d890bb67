from pathlib import Path

import pytest

from sim.rl import algos
from sim.config import ConfigError, parse
from sim.run import CONF_DIR
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
    (["algo=dr_grpo", "algo.group_size=1"], "algo.group_size=1: must be an integer >= 2"),
    (["algo=reinforce_pp", "algo.group_size=1", "task.prompts=1"], "reinforce_pp whitens over the batch"),
    (["algo.mode=fast"], "algo.mode='fast': allowed values are sampled, exact"),
    (["algo.mode=exact"], "algo.mode=exact: enumerates task.vocab**task.length = 16**8 = 4294967296 responses"),
    (["algo.loss.kind=ppo"], "algo.loss.kind='ppo': allowed values are pg, clip"),
    (["algo.loss.aggregation=sum"], "algo.loss.aggregation='sum': allowed values are token_mean, seq_mean_token_mean"),
    (["algo.loss.epochs=0"], "algo.loss.epochs=0: must be an integer >= 1"),
    (["algo.loss.epochs=4"], "algo.loss.epochs=4: several epochs on the same samples need algo.loss.kind=clip"),
    (["algo.loss.eps_low=1.5"], "algo.loss.eps_low=1.5: must be a number in [0, 1]"),
    (["algo.loss.eps_high=-0.1"], "algo.loss.eps_high=-0.1: must be a number >= 0, or null"),
    (["algo.loss.entropy_coef=-1"], "algo.loss.entropy_coef=-1: must be a finite number >= 0"),
    (["algo.kl.estimator=exact", "algo.kl.placement=reward"], "algo.kl.estimator=exact: needs algo.kl.placement=loss"),
    (["+algo.loss.foo=1"], "algo.loss.foo: unknown key"),
    # hparams are float32 on the device: values that overflow or round to 0 or 1 there are refused
    (["task.phi.weight=1e39"], "task.phi.weight=1e+39: must be a finite number >= 0 (float32"),
    (["task.phi.weight=1" + "0" * 400], "task.phi.weight=1000"),
    (["task.phi.competence=0.99999999"], "task.phi.competence=0.99999999: must be a number strictly between"),
    (["task.phi.competence=1e-40"], "task.phi.competence=1e-40"),
    (["chunk_steps=7"], "chunk_steps=7: must be a multiple of log_every=10 that divides steps=200"),
    (["chunk_steps=0"], "chunk_steps=0: must be an integer >= 1"),
    (["checkpoint_seconds=-1"], "checkpoint_seconds=-1: must be a finite number >= 0"),
    (["resume=yes"], "resume='yes': must be true or false"),
    (["plots=1"], "plots=1: must be true or false"),
    (["task.phi.kappa=-1"], "task.phi.kappa=-1: must be a finite number > 0, or null to use the competence"),
    (["task.phi_prime.kappa=5"], "task.phi_prime.kappa=5: unreachable at task.kappa_delta=0.05 for shape mean "
                                 "over 4 positions; reachable targets at this delta lie between"),
    (["task.kappa_delta=0"], "task.kappa_delta=0: must be a number strictly between 0 and 1"),
    # in-process sweep axes
    (["optim.lr=[]"], "optim.lr=[]: a sweep axis needs at least one value"),
    (["optim.lr=[0.1,fast]"],
     "optim.lr=[0.1, 'fast']: sweep values must each be a finite number > 0 (float32: at most 3.4e38); 'fast' is not"),
    (["optim.lr=[0.1,-1]"], "optim.lr=[0.1, -1]: sweep values must each be a finite number > 0"),
    (["task.phi.competence=[0.2,1.0]"],
     "task.phi.competence=[0.2, 1.0]: sweep values must each be a number strictly between 0 and 1"),
    (["algo.kl.beta=[0.1,0.1]"], "algo.kl.beta=[0.1, 0.1]: sweep values must not repeat; 0.1 appears twice"),
    (["optim.lr=[true]"], "optim.lr=[True]: sweep values must each be a finite number > 0"),
    (["task.prompts=[4,8]"], "task.prompts=[4, 8]: static keys cannot be swept in-process; use -m (Hydra multirun)"),
    (["policy.kind=[tabular,lowrank]"], "policy.kind=['tabular', 'lowrank']: static keys cannot be swept"),
    (["+optim.momentum=[0.9,0.99]"], "optim.momentum: unknown key"),
    (["task.phi_prime.relative_weight=-1"], "task.phi_prime.relative_weight=-1: must be a finite number >= 0"),
    (["task.phi_prime.relative_weight=[0,0.25]", "task.phi_prime.weight=[1,2]"],
     "task.phi_prime.weight=[1.0, 2.0]: cannot be swept while task.phi_prime.relative_weight is set"),
    (["record=all"], "record='all': allowed values are auto, runs, points"),
    (["policy=transformer", "policy.positions=alibi"], "policy.positions='alibi': allowed values are learned, rope"),
    (["policy=transformer", "policy.heads=3"], "policy.heads=3: must divide policy.d_model=32"),
    (["policy=transformer", "policy.heads=32", "policy.positions=rope"], "into heads of even width (rope)"),
    (["policy=transformer", "+policy.window=2"], "policy.window: unknown key; allowed keys here are"),
    (["policy=gru", "+policy.width=4"], "policy.width: unknown key"),
    (["+policy.d_model=4"], "policy.d_model: unknown key"),  # lowrank has no network
    (["policy=mlp", "policy.window=0"], "policy.window=0: must be an integer >= 1"),
    (["policy=mlp", "policy.sft.lr=0"], "policy.sft.lr=0: must be a finite number > 0"),
    (["policy=gru", "policy.sft.steps=0"], "policy.sft.steps=0: must be an integer >= 1"),
    (["policy=gru", "policy.eval.samples=1"], "policy.eval.samples=1: must be an integer >= 2"),
    (["runtime.sft_cache=''"], "runtime.sft_cache='': must be a directory path"),
    (["policy=gru", "+policy.sft.epochs=3"], "policy.sft.epochs: unknown key"),
    (["analysis=slow"], "analysis='slow': allowed values are none, basic, full"),
    (["verdict.margin=0"], "verdict.margin=0: must be a finite number > 0"),
    (["verdict=0.1"], "verdict=0.1: must be a section with keys margin"),
    (["policy=pretrained"], "policy.kind=pretrained: needs a text task (task=text)"),
    (["task=text", "policy=pretrained", "policy.checkpoint=/no/such.gguf"],
     "policy.checkpoint=/no/such.gguf: checkpoint '/no/such.gguf' does not exist"),
    (["task=text", "policy=pretrained", "policy.dtype=float16"], "policy.dtype='float16': allowed values are"),
    (["task=text", "policy=pretrained", "policy.temperature=0"], "policy.temperature=0: must be a finite number > 0"),
    (["task=text", "policy=pretrained", "policy.top_p=1.5"], "policy.top_p=1.5: must be a number in (0, 1]"),
    (["task=text", "policy=pretrained", "policy.remat=1"], "policy.remat=1: must be true or false"),
    (["task=text", "policy=pretrained", "reward_model=linear"],
     "reward_model=linear: learned reward models train on the toy task"),
    (["task=text", "policy=pretrained", "policy.adapter=qlora"], "policy.adapter='qlora': allowed values are none, lora"),
    (["task=text", "policy=pretrained", "policy.lora.targets=[wq,wx]"],
     "policy.lora.targets=['wq', 'wx']: must be a non-empty list of distinct matrices from wq, wk, wv, wo"),
    (["task=text", "policy=pretrained", "policy.lora.rank=0"], "policy.lora.rank=0: must be an integer >= 1"),
    (["task=text", "policy=pretrained", "policy.lora.split=phi"],
     "policy.lora.split='phi': allowed values are none, reward_positions"),
    (["task=text", "policy=pretrained", "+policy.lora.dropout=0.1"], "policy.lora.dropout: unknown key"),
    (["task=text", "policy=pretrained", "task.prompts_per_step=65"], "task.prompts_per_step=65: must be an integer in [1, 64]"),
    (["task=text", "policy=pretrained", "task.eval_prompts=-1"], "task.eval_prompts=-1: must be an integer >= 0"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_values_fail_with_one_line_naming_key_value_and_allowed(overrides, message):
    with pytest.raises(ConfigError) as info:
        parse(compose_plain(overrides))
    text = str(info.value)
    assert message in text and "\n" not in text


ALGOS = sorted(p.stem for p in (Path(CONF_DIR) / "algo").glob("*.yaml"))


@pytest.mark.parametrize("name", ALGOS)
def test_every_algorithm_is_selectable_by_name_and_documented_in_docs(name):
    exp = parse(compose_plain([f"algo={name}"]))
    assert exp.static.advantage == name
    table = (Path(CONF_DIR).parent / "docs" / "algorithms.md").read_text()
    assert f"| `{name}` |" in table, f"algo={name} is missing from docs/algorithms.md's algorithm table"


def test_algorithm_zoo_covers_the_estimators_and_dr_grpo_uses_a_constant_normaliser():
    assert set(ALGOS) == set(algos.ADVANTAGES)
    assert parse(compose_plain(["algo=dr_grpo"])).static.aggregation == "seq_mean_token_sum_norm"


def test_loss_knobs_are_hparams_and_loss_shape_is_static():
    exp = parse(compose_plain(["algo.loss.kind=clip", "algo.loss.epochs=3", "algo.loss.eps_high=0.28",
                               "algo.loss.entropy_coef=0.01", "algo.loss.eps_high=null"]))
    assert exp.static.loss == "clip" and exp.static.epochs == 3
    assert exp.hparams["eps_high"] == float("inf") and exp.hparams["entropy_coef"] == 0.01
    assert exp.hparams["eps_low"] == 0.2


def test_the_entropy_term_is_in_the_loss_only_when_some_run_has_an_entropy_bonus():
    assert not parse(compose_plain([])).static.entropy_bonus
    assert parse(compose_plain(["algo.loss.entropy_coef=0.01"])).static.entropy_bonus
    assert parse(compose_plain(["algo.loss.entropy_coef=[0,0.01]"])).static.entropy_bonus


def test_exact_mode_accepts_small_tasks_and_groups_of_one():
    tiny = ["task.length=4", "task.vocab=8", "task.phi.positions=[0,1]", "task.phi_prime.positions=[2,3]",
            "algo.mode=exact", "algo.group_size=1"]
    assert parse(compose_plain(tiny)).static.mode == "exact"


def test_reinforce_accepts_groups_of_one():
    assert parse(compose_plain(["algo=reinforce", "algo.group_size=1"])).static.group_size == 1


def test_execution_options_change_no_static_or_hparam():
    base = parse(compose_plain())
    other = parse(compose_plain(["chunk_steps=20", "checkpoint_seconds=0", "resume=false", "overwrite=true"]))
    assert other.static == base.static and other.hparams == base.hparams
    assert (other.chunk_steps, other.rows_per_chunk, other.checkpoint_seconds, other.resume, other.overwrite) == \
        (20, 2, 0.0, False, True)
    assert (base.chunk_steps, base.rows_per_chunk, base.checkpoint_seconds, base.resume, base.overwrite) == \
        (None, None, 60.0, True, False)
    assert parse(compose_plain(["checkpoint_seconds=null"])).checkpoint_seconds is None
    assert (parse(compose_plain(["verdict.margin=0.05"])).verdict_margin, base.verdict_margin) == (0.05, 0.02)


def test_null_grad_clip_means_no_clipping():
    assert parse(compose_plain(["optim.max_grad_norm=null"])).hparams["max_grad_norm"] == float("inf")


def test_record_auto_keeps_runs_for_small_batches_and_points_for_huge_ones():
    assert parse(compose_plain()).record == "runs"
    # 10,000 runs x 101 logged rows is over config.RUN_ROWS_LIMIT (1e6)
    assert parse(compose_plain(["seeds=10000", "steps=1000", "log_every=10"])).record == "points"
    assert parse(compose_plain(["seeds=10000", "steps=1000", "log_every=10", "record=runs"])).record == "runs"


def test_neural_policies_split_architecture_sft_and_evaluation_settings():
    exp = parse(compose_plain(["policy=transformer", "runtime.sft_cache=/tmp/c"]))
    arch = exp.static.arch
    assert (arch.kind, arch.d_model, arch.layers, arch.heads, arch.positions) == ("transformer", 32, 2, 2, "learned")
    assert exp.sft.steps >= 1 and exp.runtime.sft_cache == "/tmp/c" and exp.static.eval_samples >= 2
    assert parse(compose_plain()).sft is None and parse(compose_plain()).static.arch is None


@pytest.mark.parametrize("family", ["mlp", "gru", "transformer"])
def test_each_neural_family_has_its_own_default_learning_rate_and_the_command_line_still_wins(family):
    """The toy's optim.lr=0.05 diverged in 1 of 16 default mlp runs (docs/neural-policies.md,
    "Learning rates", for the sweep that measured it); each network family's config group sets 0.01."""
    assert parse(compose_plain([f"policy={family}"])).hparams["lr"] == pytest.approx(0.01)
    assert parse(compose_plain([f"policy={family}", "optim.lr=0.03"])).hparams["lr"] == pytest.approx(0.03)
    assert parse(compose_plain(["policy=tabular"])).hparams["lr"] == pytest.approx(0.05)  # factorised: the toy's
