"""The SFT stage reaches its teacher: the trained network's competences match the teacher's."""
import jax
import numpy as np
import pytest

from sim.policies import sft
from sim.policies.autoregressive import Arch
from sim.tasks.toy import RewardSpec, Task

TASK = Task(prompts=4, length=4, vocab=6, phi=RewardSpec((0, 1), (0, 1)), phi_prime=RewardSpec((2, 3), (2, 3)))
# (competence_phi, competence_phi_prime, competence_spread): kappa > 1 and kappa < 1 for phi_prime,
# the second with prompts of unequal difficulty
POINTS_Kx3 = np.array([[0.2, 0.9, 0.0], [0.7, 0.3, 0.5]])


@pytest.mark.parametrize("arch", [
    Arch("transformer", d_model=16, hidden=32, layers=1, heads=2, positions="learned"),
    Arch("gru", d_model=16, hidden=32),
])
def test_sft_reaches_the_teachers_competences(arch):
    """150 steps x 128 teacher responses, both points in one vmapped program (SFT seed 0).
    Each competence is a frequency over ~150*128*2/4 = 9.6k tokens per prompt (binomial se <= 0.005);
    measured errors over seeds 0, 1 and three families were <= 0.007, so 0.02 is > 4 se."""
    params_K, loss_KxS = sft.train(TASK, arch, sft.SFT(steps=150, batch=128, lr=0.01, seed=0), POINTS_Kx3,
                                   chunk_steps=50)
    m = sft.measure(TASK, arch, params_K, POINTS_Kx3)
    np.testing.assert_allclose(m["teacher_competence_phi"][0], 0.2, rtol=1e-6)  # no spread: the nominal value
    for name in ("phi", "phi_prime"):
        np.testing.assert_allclose(m[f"competence_{name}"], m[f"teacher_competence_{name}"], atol=0.02, err_msg=name)
    assert loss_KxS.shape == (2, 150)
    # the loss falls to its floor, the teacher's entropy (batch noise: se ~ 1/sqrt(128*4) ~ 0.05)
    assert np.all(loss_KxS[:, :5].mean(1) > m["loss_floor"] + 0.05)
    np.testing.assert_allclose(loss_KxS[:, -20:].mean(1), m["loss_floor"], atol=0.03)
    assert jax.tree.leaves(params_K)[0].shape[0] == 2
