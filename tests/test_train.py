import jax
import jax.numpy as jnp
import numpy as np

from sim.sweep import expand
from sim.train import auto_rows_per_chunk, build_policy, make_train, run_keys, train_step


def _run(exp, **kw):
    batch = expand(exp)
    return make_train(exp.static, **kw)(batch.hparams_R, run_keys(batch.seeds_R))


def test_runs_start_at_the_reference(small):
    exp = small()
    res = _run(exp)
    np.testing.assert_allclose(res.metrics["kl"][0], 0.0, atol=1e-6)
    np.testing.assert_allclose(res.metrics["phi"][0], exp.hparams["competence_phi"], rtol=1e-5)
    np.testing.assert_allclose(res.metrics["phi_prime"][0], exp.hparams["competence_phi_prime"], rtol=1e-5)
    assert res.metrics["phi"].shape == (exp.static.steps // exp.static.log_every + 1, len(exp.seeds))
    assert np.all(np.isnan(res.metrics["grad_norm"][0])) and np.all(np.isfinite(res.metrics["grad_norm"][1:]))


def test_same_config_and_seed_give_identical_metrics_and_chunking_changes_nothing(small):
    exp = small()
    a, b = _run(exp), _run(exp, rows_per_chunk=1)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])


def test_sampled_batch_means_match_exact_expectations(small):
    """Over 64 seeds x one step from the reference, the batch mean of phi estimates the exact
    E[phi] at the reference; the mean over runs has std <= 0.5/sqrt(64*4*8) ~ 0.011."""
    exp = small("seeds=64", "steps=1", "log_every=1")
    res = _run(exp)
    for name in ("phi", "phi_prime"):
        sampled, exact = res.metrics[name + "_sampled"][1].mean(), res.metrics[name][0].mean()
        assert abs(sampled - exact) < 0.05, (name, sampled, exact)


def test_exact_kl_matches_the_sampled_k1_estimate_after_training(small):
    """After some steps pi != ref; the batch k1 mean (per sequence) estimates the exact KL."""
    exp = small("seeds=32", "steps=20", "log_every=20", "algo.kl.estimator=k1")
    batch = expand(exp)
    res = make_train(exp.static)(batch.hparams_R, run_keys(batch.seeds_R))
    hp = {k: jnp.float32(v[0]) for k, v in batch.hparams_R.items()}
    # draw a fresh large batch from run 0's final policy and compare with its exact KL
    state = jax.tree.map(lambda x: x[0], res.state)
    pol = build_policy(exp.static, hp, state.policy_key)
    n = 20_000
    prompts = jnp.arange(n) % exp.static.task.prompts
    tok = pol.sample(state.params, jax.random.key(9), prompts)
    k1 = np.asarray(jnp.sum(pol.log_probs(state.params, prompts, tok) - pol.log_probs(pol.init(), prompts, tok), -1))
    exact = res.metrics["kl"][-1, 0]
    assert exact > 0.05
    assert abs(k1.mean() - exact) < 5 * k1.std() / np.sqrt(n)  # 5 standard errors


def test_kl_in_loss_with_large_beta_keeps_policy_near_reference(small):
    free, tied = _run(small("algo.kl.beta=0.0")), _run(small("algo.kl.beta=5.0"))
    assert tied.metrics["kl"][-1].mean() < 0.5 * free.metrics["kl"][-1].mean()


def test_one_train_step_improves_expected_reward_under_sgd(small):
    """A small SGD step along the GRPO gradient raises E[r] (it is an ascent direction on average)."""
    exp = small("optim.name=sgd", "optim.lr=0.5", "seeds=16", "steps=1", "log_every=1")
    res = _run(exp)
    assert (res.metrics["reward"][1] - res.metrics["reward"][0]).mean() > 0


def test_auto_chunking_divides_the_rows():
    for total in (1, 7, 20, 100, 97):
        c = auto_rows_per_chunk(total)
        assert total % c == 0 and 1 <= c <= max(1, total // 10)


def test_train_step_is_a_pure_function(small):
    exp = small()
    hp = {k: jnp.float32(v) for k, v in exp.hparams.items()}
    pol = build_policy(exp.static, hp, jax.random.key(0))
    from sim.train import make_optimizer
    params = pol.init()
    opt_state = make_optimizer(exp.static, hp).init(params)
    a = train_step(exp.static, pol, params, hp, params, opt_state, jax.random.key(3))
    b = train_step(exp.static, pol, params, hp, params, opt_state, jax.random.key(3))
    np.testing.assert_array_equal(a[0], b[0])


def test_make_train_is_shared_and_compiles_once_per_batch_size(small):
    exp = small()
    train = make_train(exp.static)
    assert make_train(exp.static) is train
    batch = expand(exp)
    first = train(batch.hparams_R, run_keys(batch.seeds_R))
    hp = dict(batch.hparams_R, lr=batch.hparams_R["lr"] * 2)  # new values, same shapes
    second = train(hp, run_keys(batch.seeds_R))
    assert second.compile_seconds < 0.2 * first.compile_seconds or first.compile_seconds < 0.05


SHARDED = """
import json, sys
from sim import runtime
runtime.configure(None, int(sys.argv[1]))
from tests.conftest import experiment, SMALL
from sim.sweep import expand
from sim.train import make_train, run_keys
exp = experiment(SMALL + ["seeds=3"])
b = expand(exp)
res = make_train(exp.static)(b.hparams_R, run_keys(b.seeds_R))
print(json.dumps({k: v.tolist() for k, v in res.metrics.items() if k in ("phi", "phi_prime", "kl", "loss")}))
"""


def test_sharding_over_devices_does_not_change_the_numbers():
    """3 runs on 1 device vs on 2 devices (padded to 4): each run's metrics must agree."""
    import json, subprocess, sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parent.parent)
    outs = [json.loads(subprocess.run([sys.executable, "-c", SHARDED, str(n)], capture_output=True, text=True,
                                      check=True, cwd=root).stdout) for n in (1, 2)]
    for k in outs[0]:
        np.testing.assert_allclose(np.array(outs[0][k], float), np.array(outs[1][k], float), rtol=1e-5, atol=1e-6)
