"""sim/rl/runs.py: guarded_step freezes a run whose update goes non-finite, records the step, and
leaves the other runs of the batch exactly as they are without it."""
import numpy as np

from sim.rl.sweep import expand
from sim.rl.train import make_train, run_keys


def _clean_and_poisoned(exp, key: str, run: int, value: float):
    """The batch trained as configured, and again with hparam `key` of one run set to `value`
    (past validation, which would refuse it: train() is driven directly)."""
    batch = expand(exp)
    train = make_train(exp.static)
    hp = {k: v.copy() for k, v in batch.hparams_R.items()}
    hp[key][run] = value
    return train(batch.hparams_R, run_keys(batch.seeds_R)), train(hp, run_keys(batch.seeds_R))


def test_a_non_finite_run_is_frozen_and_flagged_and_the_others_are_untouched(small):
    """Run 0 gets w_phi = nan (config validation forbids it; train() is driven directly), so its
    first sampled reward is NaN. It must be frozen at step 1, and runs 1-3 must give exactly the
    metrics they give in a batch without the bad run."""
    clean, bad = _clean_and_poisoned(small(), "w_phi", 0, np.nan)
    assert list(bad.diverged_at_step_R) == [1, -1, -1, -1] and list(clean.diverged_at_step_R) == [-1] * 4
    for k in clean.metrics:
        np.testing.assert_array_equal(bad.metrics[k][:, 1:], clean.metrics[k][:, 1:], err_msg=k)
    # frozen: run 0 keeps the reference parameters and logs no batch statistics after step 0
    np.testing.assert_array_equal(bad.metrics["phi"][:, 0], clean.metrics["phi"][0, 0])
    np.testing.assert_array_equal(bad.metrics["kl"][:, 0], 0.0)
    assert np.all(np.isnan(bad.metrics["loss"][:, 0]))
    np.testing.assert_array_equal(bad.state.params[0], 0.0)  # lowrank W starts at 0 (the reference)


def test_non_finite_parameters_freeze_a_run_at_the_step_they_appear(small):
    """lr = inf for run 1 (injected past validation): its loss and rewards at step 1 are finite
    (computed at the reference) but the updated parameters are not, so the parameter check alone
    must freeze it at step 1, keeping finite parameters; the other runs are untouched."""
    clean, res = _clean_and_poisoned(small(), "lr", 1, np.inf)
    assert list(res.diverged_at_step_R) == [-1, 1, -1, -1]
    assert np.all(np.isfinite(np.asarray(res.state.params)))
    np.testing.assert_array_equal(res.metrics["phi"][:, [0, 2, 3]], clean.metrics["phi"][:, [0, 2, 3]])
