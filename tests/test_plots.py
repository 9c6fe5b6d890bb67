import matplotlib.image as mpimg
import numpy as np

from sim import plots


def test_rewards_figure_writes_a_png(tmp_path):
    T, R = 5, 6
    m = {k: np.random.default_rng(0).random((T, R)) for k in ("phi", "phi_prime", "reward", "kl")}
    path = tmp_path / "rewards.png"
    plots.rewards_figure(path, np.arange(T) * 10, m, np.array([0, 0, 0, 1, 1, 1]), ["a", "b"], "test")
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 600
