import matplotlib.image as mpimg
import numpy as np
import pytest

from sim.output import plots, results


def _summary(delta):
    return {"start": 0.5, "end": 0.5 + delta, "delta_mean": delta, "delta_ci95": [delta - 0.1, delta + 0.1],
            "n_seeds": 4}


def _points(axes_values):
    return [{"values": v, "metrics": {"phi": _summary(0.1 * i), "phi_prime": _summary(-0.1 * i)}}
            for i, v in enumerate(axes_values)]


@pytest.mark.parametrize("n_points", [2, 6])  # banded with a legend, and shaded mean curves
def test_rewards_figure_writes_a_png(tmp_path, n_points):
    T, R = 5, 3 * n_points
    m = {k: np.random.default_rng(0).random((T, R)) for k in ("phi", "phi_prime", "reward", "kl")}
    bands = results.bands_from_runs(m, np.repeat(np.arange(n_points), 3), n_points)
    path = tmp_path / "rewards.png"
    plots.rewards_figure(path, np.arange(T) * 10, bands, [f"p{i}" for i in range(n_points)], "test", 3)
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 600


@pytest.mark.parametrize("axes, values", [
    (["optim.lr"], [{"optim.lr": v} for v in (0.2, 0.01, 0.05)]),  # numeric, log-spaced, unsorted
    (["optim.max_grad_norm"], [{"optim.max_grad_norm": v} for v in (1.0, float("inf"))]),  # categorical
    (["policy"], [{"policy": v} for v in ("tabular", "lowrank")]),  # a static axis from a multirun
    (["policy", "optim.lr"], [{"policy": p, "optim.lr": v} for p in ("tabular", "lowrank") for v in (0.1, 0.2)]),
])
def test_sweep_figure_writes_a_png_for_one_or_two_axes(tmp_path, axes, values):
    path = tmp_path / "sweep.png"
    plots.sweep_figure(path, _points(values), axes, "test")
    assert mpimg.imread(path).shape[0] > 200


def test_sweep_figure_refuses_three_axes(tmp_path):
    with pytest.raises(ValueError, match="1 or 2 axes"):
        plots.sweep_figure(tmp_path / "x.png", _points([{"a": 1, "b": 2, "c": 3}]), ["a", "b", "c"], "t")
