import numpy as np

from sim.rl.sweep import expand


def test_one_point_per_experiment_without_sweep_axes(small):
    exp = small("seeds=3", "seed=5")
    b = expand(exp)
    assert b.size == 3 and list(b.seeds_R) == [5, 6, 7] and b.point_values == [{}]
    assert np.all(b.points_R == 0)
    assert b.hparams_R["lr"].shape == (3,) and np.all(b.hparams_R["lr"] == exp.hparams["lr"])


def test_axes_expand_to_the_cartesian_product_times_seeds_last_axis_fastest(small):
    b = expand(small("seeds=2", "seed=7", "optim.lr=[0.1,0.2,0.3]", "algo.kl.beta=[0,0.5]"))
    assert b.n_points == 6 and b.size == 12
    assert b.point_values[:3] == [{"algo.kl.beta": 0.0, "optim.lr": 0.1}, {"algo.kl.beta": 0.0, "optim.lr": 0.2},
                                  {"algo.kl.beta": 0.0, "optim.lr": 0.3}]
    assert b.point_values[5] == {"algo.kl.beta": 0.5, "optim.lr": 0.3}
    assert list(b.points_R) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert list(b.seeds_R) == [7, 8] * 6  # the same seeds at every point (common random numbers)
    # each run trains with its point's values, float32 as the compiled program sees them
    for r in range(b.size):
        values = b.point_values[b.points_R[r]]
        assert b.hparams_R["lr"][r] == np.float32(values["optim.lr"])
        assert b.hparams_R["beta"][r] == np.float32(values["algo.kl.beta"])
        assert b.point_hparams[b.points_R[r]]["lr"] == values["optim.lr"]


def test_relative_weight_sets_w2_from_w1_at_every_point(small):
    b = expand(small("seeds=1", "task.phi.weight=[2,4]", "task.phi_prime.relative_weight=[0,0.25,1]"))
    got = [(hp["w_phi"], hp["w_phi_prime"]) for hp in b.point_hparams]
    assert got == [(2.0, 0.0), (2.0, 0.5), (2.0, 2.0), (4.0, 0.0), (4.0, 1.0), (4.0, 4.0)]
    np.testing.assert_array_equal(b.hparams_R["w_phi_prime"], [0.0, 0.5, 2.0, 0.0, 1.0, 4.0])
    fixed = expand(small("task.phi.weight=[2,4]", "task.phi_prime.relative_weight=0.5"))
    assert [hp["w_phi_prime"] for hp in fixed.point_hparams] == [1.0, 2.0]
    assert fixed.point_values == [{"task.phi.weight": 2.0}, {"task.phi.weight": 4.0}]


def test_a_kappa_axis_solves_each_points_competence(small):
    """task.phi_prime.kappa is resolved per sweep point (hparams.resolve_kappa_targets): a larger
    target asymmetry needs a reference that is better at phi_prime (kappa > 1 iff p > 1/2 for a
    binary behaviour; here the 'mean' shape over 4 positions)."""
    b = expand(small("seeds=1", "task.phi_prime.kappa=[0.5,1.5,2.2]"))
    c = [hp["competence_phi_prime"] for hp in b.point_hparams]
    assert c[0] < 0.5 < c[1] < c[2] and [v["task.phi_prime.kappa"] for v in b.point_values] == [0.5, 1.5, 2.2]
    np.testing.assert_array_equal(b.hparams_R["competence_phi_prime"], np.float32(c))
