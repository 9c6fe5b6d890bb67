"""sim/rl/layout.py: the per-point moments reduced on device, the block sizes, and the mapping of a
per-run function over blocks (the batch-invariance test of a whole run is in test_train.py)."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sim.rl.layout import NEURAL_RUN_BLOCK, RUN_BLOCK, batch_layout, over_runs, point_moments, run_block


def test_point_moments_match_numpy_and_drop_the_padding():
    rng = np.random.default_rng(0)
    x_CxR = rng.normal(size=(3, 7)).astype(np.float32)
    points_R = np.array([0, 1, 0, 2, 1, 0, 3])  # 3 points; index 3 marks a padding run
    got = point_moments({"x": jnp.asarray(x_CxR)}, jnp.asarray(points_R), 3)["x"]
    for p in range(3):
        runs = x_CxR[:, points_R == p].astype(np.float64)
        np.testing.assert_allclose(got[0][:, p], runs.mean(1), rtol=1e-6)
        np.testing.assert_allclose(got[1][:, p], ((runs - runs.mean(1, keepdims=True)) ** 2).sum(1), rtol=1e-5,
                                   atol=1e-6)


def test_block_sizes(small):
    assert run_block(small().static) == RUN_BLOCK
    assert run_block(small("algo.mode=exact", "task.length=2", "task.vocab=4", "task.phi.positions=[0]",
                           "task.phi.good_tokens=[0]", "task.phi_prime.positions=[1]",
                           "task.phi_prime.good_tokens=[1]").static) == 1
    assert run_block(small("policy=mlp").static) == NEURAL_RUN_BLOCK


def test_blocks_are_sized_to_the_batch_unless_batch_invariance_is_asked_for(small):
    sized, fixed = small().static, small("batch_invariant=true").static
    assert batch_layout(fixed, 1, 2) == (2, RUN_BLOCK)  # one run padded to a block on each device
    assert batch_layout(sized, 1, 2) == (1, 1)  # one run: one device, no padding
    assert batch_layout(sized, 3, 2) == (2, 2)  # 4 slots for 3 runs
    assert batch_layout(sized, 64, 2) == (2, RUN_BLOCK)
    assert batch_layout(sized, 66, 2) == (2, 17)  # 33 per device: two blocks of 17, not 64 slots
    assert batch_layout(small("policy=mlp").static, 16, 2) == (2, NEURAL_RUN_BLOCK)
    for n in range(1, 300):  # padding under one run per block, blocks never over the fixed size
        for n_devices in (1, 2, 3, 8):
            devices, block = batch_layout(sized, n, n_devices)
            share = -(-n // devices)
            blocks = -(-share // block)
            assert devices <= min(n, n_devices) and block <= RUN_BLOCK
            assert blocks * block - share < blocks and devices * share - n < devices, (n, n_devices)


def test_real_model_runs_stay_on_one_device(small):
    """Pretrained runs never spread over CPU devices: two devices executing at once corrupt a
    real-sized decoder's sampling (XLA's CPU fault, experiments/xla_cpu_race.py). LoRA runs go in
    blocks that divide them (no padding); fully fine-tuned runs one by one."""
    from dataclasses import replace

    from sim.policies.pretrained import Settings

    lora = replace(small().static, lm=Settings(checkpoint="tiny", adapter="lora", runs_per_block=4))
    full = replace(small().static, lm=Settings(checkpoint="tiny"))
    assert batch_layout(lora, 8, 2) == (1, 4)
    assert batch_layout(lora, 6, 8) == (1, 3)  # the largest block <= 4 that divides 6
    assert batch_layout(lora, 5, 2) == (1, 1)
    assert batch_layout(full, 8, 2) == (1, 1)


def test_over_runs_applies_the_per_run_function_to_each_run_in_order():
    """8 runs in blocks of 4 on one device: run r's output is fn of run r's inputs (float rounding
    may differ from an unbatched call, which is why blocks have one fixed size: see the module)."""
    mesh = Mesh(np.array(jax.local_devices()[:1]), ("runs",))

    def one(key, scale):
        return scale * jnp.sum(jax.random.normal(key, (5, 3)) ** 2, 0)

    keys, scale = jax.random.split(jax.random.key(0), 8), jnp.linspace(0.5, 2.0, 8)
    got = np.asarray(jax.jit(over_runs(one, mesh, 4))(keys, scale))
    expected = np.stack([np.asarray(one(k, s)) for k, s in zip(keys, scale)])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
