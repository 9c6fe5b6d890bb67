"""sim/tasks/text_rewards.py: registered text rewards called from jitted code (a host callback) on
the decoded responses of tests/lm/tiny.py's tokenizer."""
import jax
import jax.numpy as jnp
import numpy as np

from sim.tasks import text_rewards as TR
from sim.tasks import toy as T
from tests.lm.tiny import EOS


def test_text_reward_receives_the_prompts(tok):
    seen = []

    @TR.register("_test_prompt_echo")
    def echo(completions, prompts=None, **kw):
        seen.append(list(prompts))
        return [float(len(p)) for p in prompts]

    try:
        ids = jnp.zeros((3, 4), jnp.int32)
        out = jax.jit(lambda t: TR.reward_B("_test_prompt_echo", tok, t, jnp.ones((3, 4), bool),
                                            jnp.array([2, 0, 2]), ("a", "bb", "ccc")))(ids)
        np.testing.assert_array_equal(np.asarray(out), [3.0, 1.0, 3.0])
        assert seen[-1] == ["ccc", "a", "ccc"]
    finally:
        del TR.REGISTRY["_test_prompt_echo"]


def test_an_empty_text_reward_window_scores_0_as_the_token_class_version_does(tok):
    """EOS before a reward's window leaves it empty: the text reward (no_digits) scores 0 there, as
    the token-class rule for the same property (no token is good after EOS) does; not 1, which
    would pay a policy for stopping early (docs/text-task.md)."""
    window = T.RewardSpec(positions=(3, 4, 5), good_tokens=(), shape="all", text="no_digits")
    plain = [i for i in range(3, 300) if not any(c.isdigit() for c in tok.decode([i]))][:3]
    rule = T.RewardSpec(positions=(3, 4, 5), good_tokens=tuple(plain), shape="all")  # "no digit" as a token class
    tokens = jnp.array([[plain[0], EOS] + [plain[0]] * 4,  # EOS at position 1: the window is empty
                        [plain[0]] * 3 + [EOS] + [plain[0]] * 2,  # EOS first in the window: empty too
                        [plain[0]] * 6])  # a full window without digits
    mask = jnp.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1] * 6], bool)
    text = TR.reward_at_B("no_digits", tok, window.positions, tokens, mask)
    token_class = T.reward_B(rule, 300, tokens, mask)
    np.testing.assert_array_equal(np.asarray(text), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(token_class), [0.0, 0.0, 1.0])


# Runs in a fresh process with 2 CPU devices (the device count is fixed when JAX starts).
_ON_A_MESH = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from sim.tasks import text_rewards as TR
from sim.lm import sharding
from tests.lm.tiny import tiny_tokenizer

tok = tiny_tokenizer()
rng = np.random.default_rng(0)
tokens = rng.integers(3, 300, (2, 8, 6)).astype(np.int32)  # 2 runs x 8 responses x 6 tokens
tokens[:, ::3, 2] = 2  # EOS at position 2 in every third response: its window (3..5) is empty
mask = np.cumsum(tokens == 2, -1) - (tokens == 2) == 0  # up to and with the EOS
prompt = np.arange(8, dtype=np.int32) % 3
texts = ("a", "bb", "ccc")
mesh = sharding.make_mesh(data=2)
batch = NamedSharding(mesh, P(None, "data"))  # the responses split over the devices, as the step splits them
f = jax.jit(jax.vmap(lambda t, m: jnp.stack([TR.reward_at_B(name, tok, (3, 4, 5), t, m, jnp.asarray(prompt), texts)
                                             for name in ("no_digits", "at_most_20_words")])))
got = np.asarray(f(jax.device_put(tokens, batch), jax.device_put(mask, batch)))
want = np.stack([[TR.host_values(TR.REGISTRY[name], tok, tokens[r, :, 3:], mask[r, :, 3:], [texts[p] for p in prompt])
                  for name in ("no_digits", "at_most_20_words")] for r in range(2)])
json.dump({"devices": len(jax.devices()), "equal": bool((got == want).all()), "shape": list(got.shape),
           "empty_zero": bool((got[:, :, ::3] == 0).all()), "some_one": bool((got == 1).any())}, sys.stdout)
"""


def test_a_text_reward_under_a_2_device_mesh_equals_it_on_the_host():
    """A text reward is a host callback inside the jitted step; with runtime.mesh the step's batch
    is split over the devices. On 2 CPU devices, with the responses split over them and the runs
    vmapped, the callback sees every response and gives what the function gives on the host."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = os.environ | {"JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
                        "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", _ON_A_MESH], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == {"devices": 2, "equal": True, "shape": [2, 2, 8], "empty_zero": True, "some_one": True}, result
