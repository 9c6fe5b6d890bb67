"""`python -m sim.bench [section ...] [--json PATH]`: performance figures, medians over repeats.

Sections (default: all of these):
  wall        `python -m sim.run` end to end in a fresh process: cold (empty compilation cache)
              and warm (cache hit); compile and run seconds from its summary.json
  throughput  steady-state sampled tokens/s and run-steps/s of the default task at 1, 16, 64, 256 runs
  vmap        one vmapped batch of 64 runs vs the same 64 runs one after another in this process
  roofline    a scan that only samples the same tokens from fixed logits; training's ratio to it
Timings are medians over `--repeats`; the header names the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def header() -> dict:
    import jax

    return {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "devices": [str(d) for d in jax.local_devices()],
            "load_average_at_start": list(os.getloadavg())}


def _sim_run(args: list[str], cache: str, out: Path) -> dict:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sim.run", *args, f"hydra.run.dir={out}",
                    f"runtime.compilation_cache={cache}"], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    s = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "compile": s["compile_seconds"], "run": s["run_seconds"]}


def bench_wall(repeats: int) -> dict:
    """Default experiment in fresh processes: cold = empty cache dir, warm = the same dir again."""
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            cache = f"{tmp}/cache{i}"
            cold.append(_sim_run([], cache, Path(tmp) / f"cold{i}"))
            warm.append(_sim_run([], cache, Path(tmp) / f"warm{i}"))
    med = lambda rows, k: float(np.median([r[k] for r in rows]))  # noqa: E731
    return {kind: {k: med(rows, k) for k in ("wall", "compile", "run")} for kind, rows in
            (("cold", cold), ("warm", warm))} | {"repeats": repeats}


def _default_experiment(seeds: int):
    from sim.config import parse
    from sim.run import CONF_DIR
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=[f"seeds={seeds}", "plots=false"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    return parse(plain)


def _tokens_per_run(exp) -> int:
    s = exp.static
    return s.steps * s.task.prompts * s.group_size * s.task.length


def _timed_train(exp, repeats: int):
    from sim.sweep import expand
    from sim.train import make_train, run_keys

    batch = expand(exp)
    train = make_train(exp.static)
    first = train(batch.hparams_R, run_keys(batch.seeds_R))
    runs = [train(batch.hparams_R, run_keys(batch.seeds_R)).run_seconds for _ in range(repeats)]
    return first.compile_seconds, float(np.median(runs))


def bench_throughput(repeats: int, sizes=(1, 16, 64, 256)) -> dict:
    out = {}
    for n in sizes:
        exp = _default_experiment(n)
        compile_s, run_s = _timed_train(exp, repeats)
        out[str(n)] = {"run_seconds": run_s, "compile_seconds": compile_s,
                       "tokens_per_second": n * _tokens_per_run(exp) / run_s,
                       "run_steps_per_second": n * exp.static.steps / run_s}
    return out


def bench_vmap(repeats: int, n: int = 64) -> dict:
    """n runs as one vmapped batch vs n single-run calls of the (already compiled) program."""
    from sim.sweep import expand
    from sim.train import make_train, run_keys

    _, batched = _timed_train(_default_experiment(n), repeats)
    one = _default_experiment(1)
    b = expand(one)
    train = make_train(one.static)
    train(b.hparams_R, run_keys(b.seeds_R))  # compile
    sequential = []
    for _ in range(max(1, repeats // 2)):
        t = time.perf_counter()
        for seed in range(n):
            train(b.hparams_R, run_keys([seed]))
        sequential.append(time.perf_counter() - t)
    seq = float(np.median(sequential))
    return {"runs": n, "batched_seconds": batched, "sequential_seconds": seq, "speedup": seq / batched}


def bench_roofline(repeats: int, n: int = 64) -> dict:
    """Sample the default task's tokens (n runs x steps x P x G x L) from fixed logits, nothing else."""
    import jax
    import jax.numpy as jnp

    from sim.policies.base import sample_inverse_cdf
    from sim.train import run_keys

    exp = _default_experiment(n)
    s = exp.static
    P, G, L, V = s.task.prompts, s.group_size, s.task.length, s.task.vocab
    logits = jax.random.normal(jax.random.key(0), (n, P, L, V))
    prompts_B = jnp.repeat(jnp.arange(P), G)

    @jax.jit
    def sample_only(keys, logits_RxPxLxV):
        def one(key, logits_PxLxV):
            cdf = jnp.cumsum(jax.nn.softmax(logits_PxLxV), -1)

            def step(carry, _):
                key, acc = carry
                key, k = jax.random.split(key)
                return (key, acc + jnp.sum(sample_inverse_cdf(k, cdf[prompts_B]))), None

            return jax.lax.scan(step, (key, 0), None, length=s.steps)[0][1]

        return jax.vmap(one)(keys, logits_RxPxLxV)

    keys = run_keys(range(n))
    jax.block_until_ready(sample_only(keys, logits))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(sample_only(keys, logits))
        times.append(time.perf_counter() - t)
    roof = n * _tokens_per_run(exp) / float(np.median(times))
    _, run_s = _timed_train(exp, repeats)
    train_tps = n * _tokens_per_run(exp) / run_s
    return {"runs": n, "roofline_tokens_per_second": roof, "train_tokens_per_second": train_tps,
            "ratio": train_tps / roof}


SECTIONS = {"wall": bench_wall, "throughput": bench_throughput, "vmap": bench_vmap, "roofline": bench_roofline}


def report(results: dict) -> str:
    h = results["header"]
    lines = [f"sim.bench on {h['machine']} with {h['cpu_count']} cores, {len(h['devices'])} JAX device(s), "
             f"jax {h['jax']}, load average at start {h['load_average_at_start'][0]:.2f}"]
    if "wall" in results:
        w = results["wall"]
        for kind in ("cold", "warm"):
            lines.append(f"python -m sim.run ({kind}): wall {w[kind]['wall']:.1f} s, compile {w[kind]['compile']:.2f} s, "
                         f"run {w[kind]['run']:.2f} s (median of {w['repeats']})")
    for n, t in results.get("throughput", {}).items():
        lines.append(f"throughput {n:>4} runs: {t['tokens_per_second'] / 1e6:8.2f} M tokens/s, "
                     f"{t['run_steps_per_second']:9.0f} run-steps/s (run {t['run_seconds']:.3f} s)")
    if "vmap" in results:
        v = results["vmap"]
        lines.append(f"vmap: {v['runs']} runs batched {v['batched_seconds']:.3f} s vs sequential "
                     f"{v['sequential_seconds']:.2f} s: {v['speedup']:.1f}x")
    if "roofline" in results:
        r = results["roofline"]
        lines.append(f"roofline ({r['runs']} runs): sampling only {r['roofline_tokens_per_second'] / 1e6:.2f} M tokens/s, "
                     f"training {r['train_tokens_per_second'] / 1e6:.2f} M tokens/s: ratio {r['ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"sections to run: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median reported)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH ('-' for stdout)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: must be >= 1")
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
    from sim import runtime

    runtime.configure(None, "auto")  # in-process sections: all cores, no persistent cache (cold numbers)
    results = {"header": header()}
    for name in args.sections or list(SECTIONS):
        repeats = max(1, args.repeats // 2) if name == "wall" else args.repeats
        results[name] = SECTIONS[name](repeats)
    print(report(results))
    if args.json:
        text = json.dumps(results, indent=2)
        sys.stdout.write(text + "\n") if args.json == "-" else Path(args.json).write_text(text)
    return results


if __name__ == "__main__":
    main()
