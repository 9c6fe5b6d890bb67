"""The GRU policy carries a state: an early token reaches every later output (unlike the MLP's window)."""
import jax
import jax.numpy as jnp
import numpy as np

from sim import policies
from sim.policies import autoregressive as ar
from sim.tasks.toy import RewardSpec, Task

TASK = Task(prompts=2, length=4, vocab=3, phi=RewardSpec((0,), (0,)), phi_prime=RewardSpec((1, 2), (1,)))


def test_an_early_token_changes_every_later_output_and_no_earlier_one():
    net = policies.net(ar.Arch("gru", d_model=8, hidden=16), TASK)
    params = net.init(jax.random.key(0))
    prompts_B, tokens_BxL = jnp.array([1]), jnp.array([[0, 1, 2, 0]])
    logits = lambda y: net.logits(params, ar.input_ids_BxL(TASK, prompts_B, y))[0]  # noqa: E731
    base, changed = logits(tokens_BxL), logits(tokens_BxL.at[0, 0].set(2))  # y_0 is read from output 1 on
    np.testing.assert_array_equal(changed[0], base[0])
    assert all(not np.allclose(changed[t], base[t]) for t in (1, 2, 3))
