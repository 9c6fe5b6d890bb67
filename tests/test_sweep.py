import numpy as np

from sim.sweep import expand


def test_one_point_per_experiment_without_sweep_axes(small):
    exp = small("seeds=3", "seed=5")
    b = expand(exp)
    assert b.size == 3 and list(b.seeds_R) == [5, 6, 7] and b.point_values == [{}]
    assert np.all(b.points_R == 0)
    assert b.hparams_R["lr"].shape == (3,) and np.all(b.hparams_R["lr"] == exp.hparams["lr"])
