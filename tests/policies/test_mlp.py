"""The MLP policy reads the prompt, the position and only the last `window` inputs."""
import jax
import jax.numpy as jnp
import numpy as np

from sim import policies
from sim.policies import autoregressive as ar
from sim.tasks.toy import RewardSpec, Task

TASK = Task(prompts=2, length=4, vocab=3, phi=RewardSpec((0,), (0,)), phi_prime=RewardSpec((1, 2), (1,)))


def test_a_window_of_one_forgets_older_tokens_and_the_prompt_is_always_seen():
    net = policies.net(ar.Arch("mlp", d_model=8, hidden=16, layers=1, window=1), TASK)
    params = net.init(jax.random.key(0))
    prompts_B, tokens_BxL = jnp.array([0]), jnp.array([[0, 1, 2, 0]])
    logits = lambda p, y: np.asarray(net.logits(params, ar.input_ids_BxL(TASK, p, y))[0])  # noqa: E731
    base = logits(prompts_B, tokens_BxL)
    changed = logits(prompts_B, tokens_BxL.at[0, 0].set(2))  # y_0 is the input of output 1 only
    assert not np.allclose(changed[1], base[1])
    np.testing.assert_array_equal(changed[[0, 2, 3]], base[[0, 2, 3]])
    other_prompt = logits(jnp.array([1]), tokens_BxL)  # the prompt conditions every position
    assert all(not np.allclose(other_prompt[t], base[t]) for t in range(TASK.length))
