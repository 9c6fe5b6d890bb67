"""`python -m sim.bench lm`: the real-model figures of what `python -m sim.run task=text
policy=pretrained` runs: sim/rl/step.py's GRPO step (16 prompts x group 4 x 32 new tokens, k3 KL in
the loss, adam) on SmolLM2-135M-Instruct, fully fine-tuned and with LoRA adapters, and 1, 4 and 8
LoRA seeds vmapped in one program.

Each configuration runs in a fresh child process (`python -m sim.bench_lm CONFIG ...`, printing
one JSON line), so that its peak resident memory is its own (os.wait4's ru_maxrss). The machine's
matmul GFLOP/s is measured in the parent, in the same run. Achieved GFLOP/s counts the FLOPs the
step does from its shapes (`step_flops`): matmuls only, as a floor-setting measure of work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PROMPTS, GROUP, NEW_TOKENS = 16, 4, 32
LORA_RANK = 16
SEED_COUNTS = (1, 4, 8)


def step_flops(cfg, P: int, G: int, T: int, N: int, lora_rank: int = 0, lora_targets: int = 7,
               lora_sets: int = 1) -> dict[str, float]:
    """Matmul FLOPs of one GRPO step, from the shapes, by part. A dense token costs 2 x (the
    block matrices' sizes) per layer; attention 4 x (slots attended) x H x Dh per query and layer;
    the head 2 x D x V per predicted token. Each prompt is computed once (P x T tokens), its G
    responses (B = P x G) attend to its T slots and their own. The sampler's decode attends over
    all T + N cache slots (they are masked, not skipped). Full fine-tuning's backward pass costs 2x
    its forward (activation and weight gradients); LoRA's 1x (no base weight gradients). An adapter
    adds ~2 x r x 2D per token (A, then B) to every dense token of each pass; a position-split
    adapter (lora_sets=2) runs both of its sets on every token (model._dense), so twice that."""
    D, F, L, V = cfg.d_model, cfg.ffn, cfg.layers, cfg.vocab
    HD, KD = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    B = P * G
    dense = 2 * L * (D * HD + 2 * D * KD + HD * D + 3 * D * F) + 2 * L * lora_sets * lora_targets * lora_rank * 2 * D  # per token
    attn = lambda slots: 4 * L * slots * HD  # noqa: E731  (per query token)
    head = 2 * D * V
    sampling = P * T * (dense + attn(T)) + P * head + (N - 1) * B * (dense + attn(T + N) + head)
    forward = P * T * (dense + attn(T)) + B * N * (dense + attn(T + N) + head)  # teacher forcing
    return {"sampling": float(sampling), "reference": float(forward),
            "policy_forward_backward": float(forward * (2 if lora_rank else 3))}


def _overrides(config: str, seeds: int, checkpoint: str | None, dtype: str = "float32") -> list[str]:
    out = ["task=text", "policy=pretrained", f"task.prompts={PROMPTS}", "task.prompts_per_step=null",
           "task.eval_prompts=null", "policy.adapter=none", "policy.remat=false", f"algo.group_size={GROUP}",
           f"task.new_tokens={NEW_TOKENS}", "task.phi.positions={start:0,stop:16}",
           "task.phi_prime.positions={start:16,stop:32}", f"seeds={seeds}", "plots=false", f"policy.dtype={dtype}"]
    if checkpoint:
        out.append(f"policy.checkpoint={checkpoint}")
    if config == "lora":
        # remat: 8 seeds' activations would need ~38 GB (sim/lm/memory.py); recomputing each block's
        # costs about a third more forward work
        out += ["policy.adapter=lora", f"policy.lora.rank={LORA_RANK}", f"policy.lora.runs_per_block={seeds}",
                "policy.remat=true"]
    return out


def _median(fn, *args, repeats: int) -> tuple[float, float]:
    """(first call: compile + run, median of `repeats` later calls), in seconds."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def measure(config: str, seeds: int, repeats: int, checkpoint: str | None = None, breakdown: bool = True,
            dtype: str = "float32") -> dict:
    """In this process: the step of `config` ('full' or 'lora') for `seeds` runs vmapped against the
    one base (sim/rl/step.py's train_step, as train.py's run blocks vmap it); with `breakdown`, also
    its parts timed alone for one run: sampling, the reference pass, the policy's forward+backward."""
    import jax
    import jax.numpy as jnp
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sim import lm_setup
    from sim.rl import step
    from sim.config import parse
    from sim.lm import memory
    from sim.policies.base import group_log_probs, reference_params
    from sim.run import CONF_DIR
    from sim.rl.sweep import expand
    from sim.rl.runs import build_policy

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=_overrides(config, seeds, checkpoint, dtype))
    loaded = lm_setup.load(parse(OmegaConf.to_container(cfg, resolve=True)))
    static = loaded.exp.static
    hp = {k: jnp.float32(v[0]) for k, v in expand(loaded.exp).hparams_R.items()}
    keys = jax.random.split(jax.random.key(0), seeds)
    shared = loaded.shared  # an argument of every program, as in train.py: the base is not a constant
    policy_of = lambda shared: build_policy(static, hp, keys[0], shared)  # noqa: E731  (the base's functions)
    optimizer = step.make_optimizer(static, hp)
    params_R = jax.vmap(lambda k: build_policy(static, hp, k, shared).init())(keys)
    opt_R = jax.vmap(optimizer.init)(params_R)

    def one(shared, params, opt_state, key):
        policy = policy_of(shared)
        params, opt_state, (_, loss_E, _, _) = step.train_step(static, policy, reference_params(policy), hp, params,
                                                               opt_state, key)
        return params, opt_state, loss_E[0]

    train_R = jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)), donate_argnums=(1, 2))
    t = time.perf_counter()
    params_R, opt_R, _ = jax.block_until_ready(train_R(shared, params_R, opt_R, keys))
    compile_s = time.perf_counter() - t
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        keys_i = jax.random.split(jax.random.key(i + 1), seeds)
        params_R, opt_R, _ = jax.block_until_ready(train_R(shared, params_R, opt_R, keys_i))
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    T = int(loaded.shared.prompt_ids_PxT.shape[1])
    lm = static.lm
    flops = step_flops(lm.model, PROMPTS, GROUP, T, NEW_TOKENS, lm.lora_rank if lm.lora else 0, len(lm.lora_targets),
                       lm.lora_sets)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params_R, opt_R))) / seeds
    # this process's estimate (the step alone: the benchmark runs no evaluation), for its measured peak RSS
    est = memory.estimate(lm.model, static, seeds, T, concurrent_runs=seeds if lm.lora else 1)
    out = {"config": config, "seeds": seeds, "dtype": dtype, "prompt_slots": T, "step_seconds": step_s, "compile_seconds": compile_s,
           "samples_per_second": seeds * PROMPTS * GROUP / step_s, "flops": seeds * sum(flops.values()),
           "achieved_gflops": seeds * sum(flops.values()) / step_s / 1e9, "state_mb_per_run": state_bytes / 2**20,
           "estimated_peak_mib": (est["runtime"] + est["base"] + max(est["load"], est["state"] + est["step"])) / 2**20,
           "repeats": repeats}
    if breakdown and seeds == 1:
        params = jax.tree.map(lambda x: x[0], params_R)
        key = jax.random.key(7)
        sample = jax.jit(lambda s, p, k: policy_of(s).sample(p, k, GROUP))
        _, out["sampling_seconds"] = _median(sample, shared, params, key, repeats=repeats)
        tokens = sample(shared, params, key)
        prompts_P = jnp.arange(PROMPTS)

        def reference(s, x):
            policy = policy_of(s)
            return group_log_probs(policy, reference_params(policy), prompts_P, x)

        _, out["reference_seconds"] = _median(jax.jit(reference), shared, tokens, repeats=repeats)

        def batch_of(s, p, k):
            policy = policy_of(s)
            return step.make_step_batch(static, policy, reference_params(policy), hp, p, k)

        def loss_grad(s, b, p):
            policy = policy_of(s)
            return jax.value_and_grad(lambda q: step.loss_fn(static, policy, reference_params(policy), hp, b, q)[0])(p)

        batch = jax.jit(batch_of)(shared, params, key)
        _, out["policy_forward_backward_seconds"] = _median(jax.jit(loss_grad), shared, batch, params, repeats=repeats)
        out["rest_seconds"] = step_s - sum(out[k + "_seconds"] for k in ("sampling", "reference", "policy_forward_backward"))
        out["flops_by_part"] = flops
    return out


def matmul_gflops(repeats: int = 5) -> float:
    """This machine's float32 matmul speed now: the MLP-shaped product of DESIGN.md section 4."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((3072, 576)), jnp.ones((576, 1536))
    _, t = _median(jax.jit(jnp.matmul), a, b, repeats=repeats)
    return 2 * 3072 * 576 * 1536 / t / 1e9


def _child(config: str, seeds: int, repeats: int, checkpoint: str | None, breakdown: bool) -> dict:
    """One configuration in a fresh process: its figures and its own peak RSS."""
    args = [sys.executable, "-m", "sim.bench_lm", config, "--seeds", str(seeds), "--repeats", str(repeats)]
    args += ["--checkpoint", checkpoint] if checkpoint else []
    args += [] if breakdown else ["--no-breakdown"]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"sim.bench_lm {config} --seeds {seeds} failed: {err.read().decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1]) | {"peak_rss_mib": usage.ru_maxrss / 1024}


def bench_lm(repeats: int, checkpoint: str | None = None) -> dict:
    """Full fine-tuning and LoRA rank 16 (one run each, with the step's parts), then 1, 4 and 8 LoRA
    seeds in one program; every configuration in its own process."""
    results = {"matmul_gflops": matmul_gflops(), "prompts": PROMPTS, "group": GROUP, "new_tokens": NEW_TOKENS,
               "lora_rank": LORA_RANK, "repeats": repeats, "runs": []}
    results["runs"].append(_child("full", 1, repeats, checkpoint, True))
    results["runs"].append(_child("lora", 1, repeats, checkpoint, True))
    for n in SEED_COUNTS[1:]:
        results["runs"].append(_child("lora", n, repeats, checkpoint, False))
    return results


def report(r: dict) -> list[str]:
    lines = [f"lm: matmul now {r['matmul_gflops']:.0f} GFLOP/s (3072x576 @ 576x1536); GRPO step of sim/rl/step.py, "
             f"{r['prompts']} prompts x group {r['group']} x {r['new_tokens']} new tokens, k3 KL, adam; medians of "
             f"{r['repeats']}"]
    for run in r["runs"]:
        what = "full fine-tuning" if run["config"] == "full" else f"LoRA r{r['lora_rank']} (remat), {run['seeds']} seed(s)"
        line = (f"lm {what}: {run['step_seconds']:.2f} s/step, {run['samples_per_second']:.1f} samples/s, "
                f"{run['achieved_gflops']:.0f} GFLOP/s ({run['achieved_gflops'] / r['matmul_gflops']:.2f}x matmul), "
                f"state {run['state_mb_per_run']:.1f} MiB/run, peak RSS {run['peak_rss_mib']:.0f} MiB "
                f"(estimated {run['estimated_peak_mib']:.0f}), "
                f"compile {run['compile_seconds']:.0f} s")
        if "sampling_seconds" in run:
            line += (f"; sampling {run['sampling_seconds']:.2f} s, reference {run['reference_seconds']:.2f} s, "
                     f"policy fwd+bwd {run['policy_forward_backward_seconds']:.2f} s, rest {run['rest_seconds']:.2f} s")
        lines.append(line)
    return lines


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.bench_lm", description="one configuration of "
                                     "`python -m sim.bench lm`, in this process (one JSON line)")
    parser.add_argument("config", choices=("full", "lora"))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default=None, help="policy.checkpoint (default: the config's, SmolLM2)")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="policy.dtype")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from sim import runtime

    runtime.configure(None, "auto")
    result = measure(args.config, args.seeds, args.repeats, args.checkpoint, not args.no_breakdown, args.dtype)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
