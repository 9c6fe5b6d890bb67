"""sim/lm_setup.py: the edge that reads a checkpoint for a run, and checks runtime.mesh against it."""
from __future__ import annotations

import jax
import pytest

from sim import lm_setup
from sim.config import ConfigError, parse
from tests.conftest import compose_plain


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.lm.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny-setup"))["hf_dir"]


def _text(tiny_dir, *extra):
    return compose_plain(["task=text", "policy=pretrained", f"policy.checkpoint={tiny_dir}", "task.prompts=3",
                          "task.prompts_per_step=null", "task.eval_prompts=null",
                          "task.new_tokens=6", "task.phi.positions={start:0,stop:3}",
                          "task.phi_prime.positions={start:3,stop:6}", "algo.group_size=4", *extra])


@pytest.mark.skipif(jax.device_count() != 2, reason="needs the suite's two CPU devices (one per core)")
def test_runtime_mesh_reaches_the_policy_and_is_checked_against_the_checkpoint_and_batch(tiny_dir):
    loaded = lm_setup.load(parse(_text(tiny_dir, "runtime.mesh.fsdp=2")))
    assert loaded.exp.static.lm.mesh == (1, 2, 1) and loaded.exp.static.lm.sharded
    assert not parse(_text(tiny_dir)).static.lm.sharded  # the default: 1 x 1 x 1
    with pytest.raises(ConfigError, match=r"^runtime.mesh data=2 x fsdp=2 x tp=1 = 4: must equal the number "
                                          r"of devices, 2$"):
        lm_setup.load(parse(_text(tiny_dir, "runtime.mesh.data=2", "runtime.mesh.fsdp=2")))
    with pytest.raises(ConfigError, match=r"^runtime.mesh data x fsdp = 2: must divide the batch "
                                          r"task.prompts x algo.group_size = 9$"):
        lm_setup.load(parse(_text(tiny_dir, "runtime.mesh.data=2", "algo.group_size=3")))


def test_runtime_mesh_is_refused_in_one_line_where_it_means_nothing():
    with pytest.raises(ConfigError, match=r"^runtime.mesh=\{'data': 1, 'fsdp': 2, 'tp': 1\}: shards a real model "
                                          r"\(policy=pretrained\); policy=lowrank shards its runs"):
        parse(compose_plain(["runtime.mesh.fsdp=2"]))
    with pytest.raises(ConfigError, match=r"^runtime.mesh.tp=0: must be an integer >= 1$"):
        parse(compose_plain(["runtime.mesh.tp=0"]))
    with pytest.raises(ConfigError, match=r"^runtime.mesh.pp: unknown key; allowed keys here are data, fsdp, tp$"):
        parse(compose_plain(["+runtime.mesh.pp=2"]))


def test_parse_leaves_a_text_task_s_static_incomplete_and_the_edge_completes_it_once(tiny_dir):
    """config.parse cannot read files: the Static it gives a text task is incomplete, make_train
    refuses it; lm_setup.load completes it (the preflight through the same lm_setup.complete)."""
    from sim import preflight
    from sim.lm import weights
    from sim.rl.train import make_train

    plain = _text(tiny_dir)
    exp = parse(plain)
    assert not exp.static.complete and exp.static.task is None and exp.static.lm.model is None
    with pytest.raises(ValueError, match="make_train needs a complete Static"):
        make_train(exp.static)
    loaded = lm_setup.load(exp)
    static = loaded.exp.static
    model, _ = weights.read_header(tiny_dir)
    assert static.complete and static.lm.model == model and static.task.prompts == 3
    assert static.lm.eos_id == loaded.text.tokenizer.eos_id is not None  # the tokenizer's EOS
    assert preflight.check(exp, plain).exp.static == static  # what is checked is what trains
