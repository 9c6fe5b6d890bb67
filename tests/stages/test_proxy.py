"""sim/stages/proxy.py: an ensemble's members (member 0 is the single model), its objectives sharing
one cache entry, and the cache reused."""
import jax
import jax.numpy as jnp
import numpy as np

from conftest import experiment
from sim.reward_models import model as rm_lib
from sim.rl.sweep import expand
from sim.stages import proxy

TINY = ["task.prompts=2", "task.length=3", "task.vocab=4", "task.phi.positions=[0]", "task.phi.good_tokens=[0]",
        "task.phi_prime.positions=[1,2]", "task.phi_prime.good_tokens=[1]", "policy=tabular", "seeds=1",
        "reward_model=linear", "reward_model.pairs=16", "reward_model.steps=20"]


def _prepare(tmp_path, *overrides):
    exp = experiment(TINY + [f"runtime.sft_cache={tmp_path}", *overrides])
    return exp, proxy.prepare(exp, expand(exp))


def test_an_ensembles_member_zero_is_the_single_model_and_objectives_share_its_members(tmp_path):
    _, single = _prepare(tmp_path)
    exp, ens = _prepare(tmp_path, "reward_model.ensemble=3")
    for one, three in zip(jax.tree.leaves(single.params_R), jax.tree.leaves(ens.params_R)):
        assert three.shape == (one.shape[0], 3, *one.shape[1:])
        np.testing.assert_array_equal(three[:, 0], one)  # bit for bit: the same pairs, init and program
    w_3xLxV = ens.params_R["net"]["w_LxV"][0]
    assert not np.array_equal(w_3xLxV[1], w_3xLxV[0]) and not np.array_equal(w_3xLxV[1], w_3xLxV[2])

    _, worst = _prepare(tmp_path, "reward_model.ensemble=3", "reward_model.objective=worst")
    assert [v["cached"] for v in worst.variants] == [True]  # another objective, the same members
    assert len(list((tmp_path / "reward_model").glob("*.npz"))) == 2  # the single model and the ensemble

    # the objective scores the members: here the worst case of the 3 calibrated scores
    worst_exp = experiment(TINY + ["reward_model.ensemble=3", "reward_model.objective=worst"])
    rm, hp = worst_exp.static.reward_model, worst_exp.hparams
    tokens_BxL = jnp.array([[0, 1, 1], [2, 3, 0]])
    prompts_B = jnp.array([0, 1])
    ens_proxy = jax.tree.map(lambda x: x[0], ens.params_R)
    members_3xB = [rm_lib.score_B(rm_lib.RewardModel("linear"), exp.static.task, jax.tree.map(lambda x: x[m], ens_proxy),
                                  prompts_B, tokens_BxL) for m in range(3)]
    np.testing.assert_allclose(rm_lib.score_B(rm, exp.static.task, ens_proxy, prompts_B, tokens_BxL, hp),
                               np.min(members_3xB, 0), rtol=1e-6)
