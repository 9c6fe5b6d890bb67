import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.dispatch import BACKEND_COMPILE_EVENT  # the event JAX records for each XLA compile

from sim.policies.base import prompt_major
from sim.policies.pretrained import Settings
from sim.rl.sweep import expand
from sim.rl.train import auto_rows_per_chunk, build_policy, make_train, run_keys, snapshot_template


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
    prompts = prompt_major(exp.static.task.prompts, n // exp.static.task.prompts)
    tok = pol.sample(state.params, jax.random.key(9), n // exp.static.task.prompts)
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


def test_make_train_is_shared_and_compiles_once_per_batch_size(small):
    exp = small()
    train = make_train(exp.static)
    assert make_train(exp.static) is train
    batch = expand(exp)
    first = train(batch.hparams_R, run_keys(batch.seeds_R))
    hp = dict(batch.hparams_R, lr=batch.hparams_R["lr"] * 2)  # new values, same shapes
    second = train(hp, run_keys(batch.seeds_R))
    assert second.compile_seconds < 0.2 * first.compile_seconds or first.compile_seconds < 0.05


def test_resuming_from_any_snapshot_gives_the_uninterrupted_metrics(small):
    exp = small()
    batch = expand(exp)
    train = make_train(exp.static, 1)
    snaps = []
    full = train(batch.hparams_R, run_keys(batch.seeds_R), on_snapshot=snaps.append)
    assert [s.rows_done for s in snaps] == [1, 2, 3, 4]
    assert snaps[-1].rows["phi"].shape == (5, 4) and snaps[-1].state.key.dtype == np.uint32  # host form
    for snap in snaps[:2]:
        resumed = train(batch.hparams_R, run_keys(batch.seeds_R), start=snap)
        for k in full.metrics:
            np.testing.assert_array_equal(resumed.metrics[k], full.metrics[k], err_msg=k)
        np.testing.assert_array_equal(resumed.state.params, full.state.params)


def test_snapshot_template_matches_a_real_snapshot(small):
    exp = small()
    batch = expand(exp)
    snaps = []
    make_train(exp.static, 1)(batch.hparams_R, run_keys(batch.seeds_R), on_snapshot=snaps.append)
    like = snapshot_template(exp.static, batch.hparams_R, run_keys(batch.seeds_R), 2)
    real = snaps[1]
    assert like.rows_done == real.rows_done and jax.tree.structure(like) == jax.tree.structure(real)
    for a, b in zip(jax.tree.leaves((like.state, like.rows)), jax.tree.leaves((real.state, real.rows))):
        assert a.shape == np.shape(b) and a.dtype == np.asarray(b).dtype


def _bernoulli_kl(a, p):
    return a * np.log(a / p) + (1 - a) * np.log((1 - a) / (1 - p))


def test_diagnostic_metrics_are_logged(small):
    """kappa at step 0 is the reference's: for shape 'mean' over positions of equal competence c
    it is the single Bernoulli's KL(c+d||c) / KL(c-d||c). Quadrant fractions partition each batch."""
    exp = small()
    res = _run(exp)
    d = exp.hparams["kappa_delta"]
    for name in ("phi", "phi_prime"):
        c = exp.hparams[f"competence_{name}"]
        closed = _bernoulli_kl(c + d, c) / _bernoulli_kl(c - d, c)
        np.testing.assert_allclose(res.metrics[f"kappa_{name}"][0], closed, rtol=1e-3)
    total = sum(res.metrics[f"quad_frac_{c}"][1:] for c in ("uu", "ud", "du", "dd", "ut", "dt", "tu", "td", "tt"))
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    shares = res.metrics["adv_share_phi"][1:] + res.metrics["adv_share_phi_prime"][1:]
    assert np.all(shares <= 1.0 + 1e-4) and np.all(res.metrics["adv_share_phi"][1:] > 0)  # an R^2, split


_compiles = []
_counting = [False]
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: _compiles.append(event) if _counting[0] and event == BACKEND_COMPILE_EVENT else None)


def test_new_axis_values_reuse_the_compiled_program(small):
    """Values of a sweep axis are data: the same Static, the same batch size, no XLA compile.
    Counted with JAX's own compile events, not with the cache's bookkeeping."""
    first, second = small("seeds=2", "optim.lr=[0.02,0.05]"), small("seeds=2", "optim.lr=[0.2,0.01]")
    assert first.static == second.static and make_train(first.static) is make_train(second.static)
    _run(first)  # may compile (4 runs, like the small fixture's)
    _compiles.clear()
    _counting[0] = True
    try:
        res = _run(second)
    finally:
        _counting[0] = False
    assert _compiles == []
    assert not np.allclose(res.metrics["kl"][-1, :2], res.metrics["kl"][-1, 2:])  # the values did change


def test_a_run_has_the_same_metrics_alone_and_inside_a_sweep_batch(small):
    """Seed 6 at lr=0.05 inside a 2-point x 20-seed batch (40 runs: two blocks of train.RUN_BLOCK)
    vs. the same run as a batch of one. With batch_invariant=true runs are computed in fixed
    blocks, so the numbers are bit-identical (the issue asks for 1e-5; without blocks, 200-step runs diverged after a
    last-bit difference flipped a sampled token)."""
    in_batch = _run(small("seeds=20", "seed=5", "optim.lr=[0.02,0.05]", "batch_invariant=true"))
    alone = _run(small("seeds=1", "seed=6", "optim.lr=0.05", "batch_invariant=true"))
    for k in alone.metrics:
        np.testing.assert_array_equal(in_batch.metrics[k][:, 21], alone.metrics[k][:, 0], err_msg=k)


def test_point_stats_reduce_on_device_what_the_runs_record(small):
    """record=points: per-point moments of every logged row equal numpy's on the same runs, and the
    runs keep their rows at steps 0, log_every and the last step."""
    exp = small("seeds=2", "algo.kl.beta=[0,1]")
    batch = expand(exp)
    train = make_train(exp.static)
    full = train(batch.hparams_R, run_keys(batch.seeds_R))
    reduced = train(batch.hparams_R, run_keys(batch.seeds_R), points_R=batch.points_R)
    stats = reduced.point_stats
    assert list(reduced.steps_T) == [0, 5, 20] and list(stats.steps_T) == list(full.steps_T)
    assert list(stats.count_N) == [2, 2]
    for k in full.metrics:
        np.testing.assert_array_equal(reduced.metrics[k], full.metrics[k][[0, 1, -1]])
        for p in range(2):
            x = full.metrics[k][:, batch.points_R == p].astype(np.float64)
            np.testing.assert_allclose(stats.mean[k][:, p], x.mean(1), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(stats.m2[k][:, p], ((x - x.mean(1, keepdims=True)) ** 2).sum(1),
                                       rtol=1e-4, atol=1e-6)


def test_a_record_points_batch_resumes_from_any_snapshot_to_the_uninterrupted_statistics(small):
    """record=points snapshots carry each run's key rows and the moments so far (Snapshot.moments);
    resuming from one gives the same moments, key rows and final state as the uninterrupted batch."""
    exp = small("seeds=2", "algo.kl.beta=[0,1]")
    batch = expand(exp)
    train, keys_R = make_train(exp.static, 1), run_keys(batch.seeds_R)
    snaps = []
    full = train(batch.hparams_R, keys_R, points_R=batch.points_R, on_snapshot=snaps.append)
    assert [s.rows_done for s in snaps] == [1, 2, 3, 4]
    assert snaps[0].rows["phi"].shape == (2, 4) and snaps[-1].rows["phi"].shape == (3, 4)  # key rows 0, 1, 4
    assert snaps[1].moments["mean"]["phi"].shape == (3, 2)
    for snap in snaps[:3]:
        like = snapshot_template(exp.static, batch.hparams_R, keys_R, snap.rows_done, n_points=2)
        assert jax.tree.structure(like) == jax.tree.structure(snap)
        for a, b in zip(jax.tree.leaves(like[1:]), jax.tree.leaves(snap[1:])):  # state, rows, moments
            assert a.shape == np.shape(b) and a.dtype == np.asarray(b).dtype
        resumed = train(batch.hparams_R, keys_R, points_R=batch.points_R, start=snap)
        for k in full.metrics:
            np.testing.assert_array_equal(resumed.metrics[k], full.metrics[k], err_msg=k)
            np.testing.assert_array_equal(resumed.point_stats.mean[k], full.point_stats.mean[k], err_msg=k)
            np.testing.assert_array_equal(resumed.point_stats.m2[k], full.point_stats.m2[k], err_msg=k)
        np.testing.assert_array_equal(resumed.state.params, full.state.params)


def test_a_transformer_trains_with_seeds_vmapped_and_monte_carlo_metrics(small):
    """The transformer through the one training loop: Monte Carlo expectations (6^4 > enumerate_max)
    come with standard errors; runs start at the reference; same seeds give the same numbers.
    The reference is a random network here (the loop does not care where it comes from; SFT is
    tested in test_sft.py and end to end in test_experiment.py)."""
    from sim import policies
    from tests.conftest import NEURAL

    exp = small("policy=transformer", *NEURAL, "policy.layers=1", "policy.eval.samples=8",
                "policy.eval.enumerate_max=0", "seeds=3", "steps=10", "optim.lr=0.01")
    batch = expand(exp)
    ref = policies.net(exp.static.arch, exp.static.task).init(jax.random.key(0))
    ref_R = jax.tree.map(lambda x: jnp.stack([x] * 3), ref)
    train = make_train(exp.static)
    a = train(batch.hparams_R, run_keys(batch.seeds_R), ref_R=ref_R)
    b = train(batch.hparams_R, run_keys(batch.seeds_R), ref_R=ref_R)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])
    assert {"phi_se", "phi_prime_se", "reward_se", "kl_se", "entropy_se"} <= set(a.metrics)
    np.testing.assert_array_equal(a.metrics["kl"][0], 0.0)
    # every run starts at the one shared reference (each run draws its own Monte Carlo responses, so
    # the starts agree within sqrt(2) * 4 standard errors), and the seeds then differ
    gap = np.abs(a.metrics["phi"][0] - a.metrics["phi"][0, 0])
    assert np.all(gap <= 4 * np.sqrt(2) * a.metrics["phi_se"][0]) and a.metrics["phi_se"][0, 0] > 0
    assert np.all(a.metrics["kl"][-1] > 0) and len(set(a.metrics["phi"][-1])) == 3
    assert np.all(np.isfinite(a.metrics["grad_norm"][1:]))


def test_make_train_refuses_a_static_the_edge_has_not_completed(small):
    static = small().static
    with pytest.raises(ValueError, match="make_train needs a complete Static"):
        make_train(dataclasses.replace(static, task=None))
    with pytest.raises(ValueError, match="make_train needs a complete Static"):  # the checkpoint not yet read
        make_train(dataclasses.replace(static, policy="pretrained", lm=Settings("tiny")))
