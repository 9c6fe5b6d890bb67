"""sim/rl/step.py's GRPO step of policy=pretrained on the tiny checkpoint gives the same parameters
sharded as on one device: on a mesh
of 8 CPU devices (data 2 x fsdp 2 x tp 2), and across 2 processes joined by JAX's distributed
runtime on localhost (gloo collectives, fsdp 2). The one-device step runs here, once; each layout
runs in a fresh subprocess (the device count and the distributed runtime are fixed when JAX
starts) that runs this file as a script and writes its comparison with the one-device result."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.config_values import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _env(devices: int) -> dict:
    return os.environ | {"JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu",
                         "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _problem(tiny_dir: str, mesh: tuple[int, int, int] = (1, 1, 1)):
    """The tiny checkpoint, 4 prompts (2 left-padded) x group 2 x 4 new tokens: sim/rl/step.py's
    train_step of policy=pretrained (GRPO, k3 KL in the loss), the step `python -m sim.run` runs.
    Returns (cfg, params, optimizer, step, args); `step` takes the key as raw bits so that
    processes can share it, and the frozen reference and the prompts as arguments so that they can
    be placed."""
    import jax
    import jax.numpy as jnp

    from sim.rl import step as step_lib
    from sim.config import Static
    from sim.lm import weights as checkpoint
    from sim.policies import pretrained
    from sim.tasks.toy import RewardSpec, Task

    cfg, params = checkpoint.load(tiny_dir)
    prompts = np.array([[5, 9, 11, 20, 7], [2, 2, 30, 7, 8], [2, 40, 41, 42, 43], [2, 2, 2, 60, 61]], np.int32)
    pmask = prompts != 2  # tiny's pad id is 2 (= EOS); no real prompt token here is 2
    half = cfg.vocab // 2  # phi: lower-half tokens early, phi_prime: upper-half tokens late
    task = Task(prompts=4, length=4, vocab=cfg.vocab, phi=RewardSpec((0, 1), tuple(range(half))),
                phi_prime=RewardSpec((2, 3), tuple(range(half, cfg.vocab))))
    static = Static(task=task, policy="pretrained", width=0, advantage="grpo", group_size=2, std_eps=1e-4,
                    kl_estimator="k3", kl_placement="loss", optimizer="sgd", steps=1, log_every=1, eval_samples=1,
                    entropy_bonus=False, lm=pretrained.Settings("tiny", model=cfg, eos_id=2, mesh=mesh))
    # SGD: an update proportional to the gradient, so float reassociation in a layout moves a weight
    # by ~1e-7 x its step (Adam's first step, lr * g / |g|, would amplify it where g is near 0)
    hp = {"w_phi": 4.0, "w_phi_prime": 1.0, "beta": 0.04, "eps_low": 0.2, "eps_high": 0.2, "entropy_coef": 0.0,
          "lr": 1.0, "max_grad_norm": 1e6}
    hp = {k: jnp.float32(v) for k, v in hp.items()}
    opt = step_lib.make_optimizer(static, hp)

    def step(params, opt_state, ref_params, key_data, prompts, pmask):
        policy = pretrained.make(static.lm, pretrained.Frozen(ref_params, prompts, pmask), task.length)
        params, opt_state, (batch, loss_E, _, _) = step_lib.train_step(
            static, policy, ref_params, hp, params, opt_state, jax.random.wrap_key_data(key_data))
        return params, opt_state, {"loss": loss_E[0], "tokens": batch.tokens_BxL}

    key = jax.random.key_data(jax.random.key(3))
    return cfg, params, opt, step, (params, opt.init(params), params, key, prompts, pmask)


def _flat(tree) -> dict:
    import jax
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def one_device(tiny, tmp_path_factory) -> str:
    """The step on one device, computed once here: parameters before and after, tokens, loss (npz)."""
    import jax
    _, params, _, step, args = _problem(str(tiny["hf_dir"]))
    new_params, _, metrics = jax.jit(step)(*args)
    path = tmp_path_factory.mktemp("one-device") / "step.npz"
    np.savez(path, **{"new" + k: v for k, v in _flat(new_params).items()},
             **{"old" + k: v for k, v in _flat(params).items()},
             tokens=np.asarray(metrics["tokens"]), loss=np.asarray(metrics["loss"]))
    return str(path)


def _worker(tiny_dir: str, reference: str, out: str, mesh: tuple[int, int, int], process_id: int = -1,
            port: int = 0) -> None:
    from sim import runtime
    runtime.set_xla_flags()
    import jax

    from sim.lm import sharding
    if process_id >= 0:
        sharding.initialize_distributed(f"localhost:{port}", 2, process_id)
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    cfg, params, opt, step, args = _problem(tiny_dir, mesh)
    mesh = sharding.make_mesh(*mesh)
    ps = sharding.param_shardings(cfg, params, mesh)
    os_ = sharding.like_params(jax.eval_shape(opt.init, params), params, ps, mesh)
    rep, batch = NamedSharding(mesh, PartitionSpec()), sharding.batch_sharding(mesh, len(args[4]))
    placed = sharding.put(args, (ps, os_, ps, rep, batch, batch))
    sharded = jax.jit(step, in_shardings=(ps, os_, ps, rep, batch, batch), out_shardings=(ps, os_, rep))
    new_params, new_state, metrics = sharded(*placed)

    gather = (lambda x: np.asarray(x)) if jax.process_count() == 1 else (
        lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)))
    ref = np.load(reference)
    new = {jax.tree_util.keystr(path): gather(x) for path, x in jax.tree_util.tree_flatten_with_path(new_params)[0]}
    result = {"max_diff": max(float(np.abs(v - ref["new" + k]).max()) for k, v in new.items()),
              "min_moved": min(float(np.abs(ref["new" + k] - ref["old" + k]).max()) for k in new),
              "tokens_equal": bool((gather(metrics["tokens"]) == ref["tokens"]).all()),
              "loss": [float(gather(metrics["loss"])), float(ref["loss"])],
              "fraction": {k: sharding.sharded_fraction(v) for k, v in new_params["blocks"].items()}
              | {"embed": sharding.sharded_fraction(new_params["embed"])},
              "devices": len(jax.devices()), "processes": jax.process_count()}
    if jax.process_index() == 0:
        Path(out).write_text(json.dumps(result))


def _check(result: dict, devices: int) -> None:
    assert result["devices"] == devices
    assert result["max_diff"] <= 1e-5, result
    assert result["min_moved"] > 1e-4, result  # every parameter moved: the comparison has teeth
    assert result["tokens_equal"], result


def test_grpo_step_on_8_cpu_devices_equals_one_device(tiny, one_device, tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, __file__, str(tiny["hf_dir"]), one_device, str(out), "2,2,2"], env=_env(8), check=True,
                   cwd=ROOT, timeout=300)
    r = json.loads(out.read_text())
    print({k: r[k] for k in ("max_diff", "min_moved", "loss", "fraction")})
    _check(r, 8)
    # data 2 x fsdp 2 x tp 2: a matrix split over fsdp and tp holds 1/4 per device; norms are replicated
    assert r["fraction"]["wq"] == r["fraction"]["w_down"] == 0.25
    assert r["fraction"]["embed"] == 0.25 and r["fraction"]["attn_norm"] == 1.0


def test_grpo_step_on_two_processes_equals_one_process(tiny, one_device, tmp_path):
    out = tmp_path / "r.json"
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, str(tiny["hf_dir"]), one_device, str(out), "1,2,1", str(i), str(port)],
                              env=_env(1), cwd=ROOT, stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
    r = json.loads(out.read_text())
    print({k: r[k] for k in ("max_diff", "min_moved", "loss", "fraction")})
    _check(r, 2)
    assert r["processes"] == 2 and r["fraction"]["wq"] == 0.5


def test_a_degree_that_does_not_divide_is_refused_in_one_line():
    import jax

    from sim.lm import sharding
    from sim.lm.config import LMConfig
    cfg = LMConfig(family="llama", vocab=37, d_model=24, layers=1, heads=3, kv_heads=3, head_dim=8, ffn=40)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])  # the suite's process has one per core
    sharding.check_divides(cfg, mesh)
    fake = type("M", (), {"shape": {"data": 1, "fsdp": 1, "tp": 2}})()
    with pytest.raises(ConfigError, match=r"^runtime.mesh.tp=2: must divide the model's heads=3$"):
        sharding.check_divides(cfg, fake)
    with pytest.raises(ConfigError, match=r"runtime.mesh data=1 x fsdp=1 x tp=2 = 2: must equal the number of devices, 1"):
        sharding.make_mesh(1, 1, 2, devices=jax.devices()[:1])


if __name__ == "__main__":
    tiny_dir, reference, out, mesh, *proc = sys.argv[1:]
    _worker(tiny_dir, reference, out, tuple(int(x) for x in mesh.split(",")), *(int(x) for x in proc))
