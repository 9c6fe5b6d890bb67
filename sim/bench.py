"""`python -m sim.bench [section ...] [--json PATH]`: performance figures, medians over repeats.

Sections (default: wall, throughput, vmap and roofline, a few minutes; families and sweep take
ten more each and run only when named):
  wall        `python -m sim.run` end to end in a fresh process: cold (empty compilation cache)
              and warm (cache hit); compile and run seconds from its summary.json
  throughput  steady-state sampled tokens/s and run-steps/s of the default task at 1, 16, 64, 256 runs
  vmap        one vmapped batch of 64 runs vs the same 64 runs one after another in this process
  roofline    a scan that only samples the same tokens from fixed logits; training's ratio to it
  families    samples/s of every policy family at 1, 16 and 64 runs on the toy task (V=8, L=8,
              32 samples per step; the transformer 2 layers of width 64, 4 heads, FFN 256), with
              blocks sized to the batch (the default) next to fixed blocks (batch_invariant=true:
              the layout every run had before blocks could be sized, i.e. the previous design)
  sweep       `python -m sim.run` with a 2-axis in-process sweep (--sweep-runs runs, --sweep-steps
              steps; cold compilation cache) in a fresh process: wall, compile, run, peak RSS; and
              the same runs as separate processes (--sweep-processes of them timed, warm cache,
              extrapolated to all runs): the ratio of the two
  lm          SmolLM2-135M (runs only when named; sim/bench_lm.py): sim/rl/step.py's GRPO step of 16
              prompts x 4 x 32 new tokens, full fine-tuning and LoRA rank 16, with where its time
              goes and its achieved GFLOP/s beside the machine's matmul GFLOP/s; 1, 4 and 8 LoRA
              seeds in one program: samples/s and peak RSS (each configuration its own process)
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
    """`python -m sim.run` in a fresh process: wall seconds, its summary's compile and run seconds,
    and the process's peak resident memory."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sim.run", *args, f"hydra.run.dir={out}",
                             f"runtime.compilation_cache={cache}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"sim.run {' '.join(args)} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "compile": s["compile_seconds"], "run": s["run_seconds"],
            "peak_rss_mib": usage.ru_maxrss / 1024}


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


def _default_experiment(seeds: int, overrides: tuple[str, ...] = ()):
    from sim.config import parse
    from sim.run import CONF_DIR
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=[f"seeds={seeds}", "plots=false", *overrides])
    plain = OmegaConf.to_container(cfg, resolve=True)
    return parse(plain)


def _tokens_per_run(exp) -> int:
    s = exp.static
    return s.steps * s.task.prompts * s.group_size * s.task.length


def _timed_train(exp, repeats: int):
    from sim.stages import references as reference
    from sim.rl.sweep import expand
    from sim.rl.train import make_train, run_keys

    batch = expand(exp)
    ref_R = reference.prepare(exp, batch.hparams_R).params_R if exp.sft is not None else None  # untimed
    train = make_train(exp.static)
    first = train(batch.hparams_R, run_keys(batch.seeds_R), ref_R=ref_R)
    runs = [train(batch.hparams_R, run_keys(batch.seeds_R), ref_R=ref_R).run_seconds for _ in range(repeats)]
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
    """n runs as one vmapped batch vs n single-run calls of the (already compiled) program. The
    sequential time is n times the median single run (n timed calls: the median of n samples)."""
    from sim.rl.sweep import expand
    from sim.rl.train import make_train, run_keys

    _, batched = _timed_train(_default_experiment(n), repeats)
    one = _default_experiment(1)
    b = expand(one)
    train = make_train(one.static)
    train(b.hparams_R, run_keys(b.seeds_R))  # compile
    single = []
    for seed in range(n):
        t = time.perf_counter()
        train(b.hparams_R, run_keys([seed]))
        single.append(time.perf_counter() - t)
    seq = n * float(np.median(single))
    return {"runs": n, "batched_seconds": batched, "single_run_seconds": float(np.median(single)),
            "sequential_seconds": seq, "speedup": seq / batched}


def bench_roofline(repeats: int, n: int = 64) -> dict:
    """Sample the default task's tokens (n runs x steps x P x G x L) from fixed logits, nothing else,
    with the runs laid out as training lays them out (sharded over every device, in blocks)."""
    import jax
    import jax.numpy as jnp

    from sim.rl.layout import over_runs, run_block
    from sim.policies.base import cdf_table, sample_table
    from sim.rl.programs import run_shardings
    from sim.rl.train import run_keys

    exp = _default_experiment(n)
    s = exp.static
    P, G, L, V = s.task.prompts, s.group_size, s.task.length, s.task.vocab
    runs, _ = run_shardings()
    whole = runs.mesh.size * run_block(s)  # training pads its runs to whole blocks per device: so does this
    padded = -(-n // whole) * whole
    logits = jax.random.normal(jax.random.key(0), (padded, P, L, V))

    def sample_only(key, logits_PxLxV):
        cdf = cdf_table(logits_PxLxV)

        # Training's sampler (policies.base.sample_table) on a fixed table. The tokens are kept, summed
        # elementwise over steps: with a sum over each step's tokens XLA merged the sampler's count
        # into that sum, one slow reduce-window over its 16x larger comparisons, and this "roofline"
        # ran ~25% slower than the same sampling inside training (an XLA profile of both)
        def step(carry, _):
            key, acc_BxL = carry
            key, k = jax.random.split(key)
            return (key, acc_BxL + sample_table(k, cdf, G)), None

        return jnp.sum(jax.lax.scan(step, (key, jnp.zeros((P * G, L), jnp.int32)), None, length=s.steps)[0][1])

    sample_all = jax.jit(over_runs(sample_only, runs.mesh, run_block(s)), in_shardings=runs)
    keys, logits = jax.device_put((run_keys(range(padded)), logits), runs)
    jax.block_until_ready(sample_all(keys, logits))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(sample_all(keys, logits))
        times.append(time.perf_counter() - t)
    roof = n * _tokens_per_run(exp) / float(np.median(times))
    _, run_s = _timed_train(exp, repeats)
    train_tps = n * _tokens_per_run(exp) / run_s
    return {"runs": n, "roofline_tokens_per_second": roof, "train_tokens_per_second": train_tps,
            "ratio": train_tps / roof}


# The families section's work: issue 21's side-by-side with TRL's GRPOTrainer on a tiny GPT-2.
FAMILY_TASK = ("task.vocab=8", "task.length=8", "task.prompts=4", "algo.group_size=8", "log_every=10")
FAMILY_SIZES = {"transformer": ("policy.d_model=64", "policy.heads=4", "policy.hidden=256", "policy.layers=2")}
FAMILIES = ("tabular", "lowrank", "mlp", "gru", "transformer")


def bench_families(repeats: int, sizes=(1, 16, 64), steps: int = 50, families=FAMILIES) -> dict:
    """Steady-state samples/s (runs x steps x prompts x group_size / run seconds; SFT and
    compilation excluded) per family and batch size, with batch_invariant false and true."""
    out = {}
    for family in families:
        for invariant in (False, True):
            for n in sizes:
                exp = _default_experiment(n, (f"policy={family}", f"steps={steps}", f"batch_invariant={invariant}",
                                              *FAMILY_TASK, *FAMILY_SIZES.get(family, ())))
                compile_s, run_s = _timed_train(exp, repeats)
                samples = n * steps * exp.static.task.prompts * exp.static.group_size
                out.setdefault(family, {}).setdefault("invariant" if invariant else "sized", {})[str(n)] = {
                    "run_seconds": run_s, "compile_seconds": compile_s, "samples_per_second": samples / run_s}
    return out


# The sweep section's 2-axis grid: 25 points; seeds per point = runs / 25.
SWEEP_AXES = ["task.phi_prime.relative_weight=[0,0.125,0.25,0.5,1]", "optim.lr=[0.01,0.02,0.05,0.1,0.2]"]
SWEEP_POINTS = 25


def bench_sweep(repeats: int, runs: int = 1000, steps: int = 500, processes: int = 5, record: str = "auto") -> dict:
    """One in-process sweep of `runs` runs in a fresh `sim.run` (cold cache) against the same runs
    as one `sim.run seeds=1` process each: `processes` of them timed with a warm cache (their best
    case), their median extrapolated to all runs, one after another (processes=0: sweep only)."""
    seeds = max(1, runs // SWEEP_POINTS)
    common = [f"steps={steps}", "log_every=10"]
    sweep, single = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            args = common + SWEEP_AXES + [f"seeds={seeds}", "plots=true", f"record={record}"]
            sweep.append(_sim_run(args, f"{tmp}/cache{i}", Path(tmp) / f"sweep{i}"))
        rel, lr = (axis.partition("=")[2].strip("[]").split(",") for axis in SWEEP_AXES)
        warm = f"{tmp}/single_cache"
        if processes:
            _sim_run(common + ["seeds=1", "plots=false"], warm, Path(tmp) / "single_warmup")
        for i in range(processes):  # a different sweep point (and seed) each, like a loop over the grid
            point = [f"task.phi_prime.relative_weight={rel[i % len(rel)]}", f"optim.lr={lr[(i // len(rel)) % len(lr)]}"]
            args = common + point + ["seeds=1", f"seed={i}", "plots=false"]
            single.append(_sim_run(args, warm, Path(tmp) / f"one{i}"))
    med = lambda rows, k: float(np.median([r[k] for r in rows]))  # noqa: E731
    n_runs = seeds * SWEEP_POINTS
    out = {"runs": n_runs, "points": SWEEP_POINTS, "seeds": seeds, "steps": steps, "repeats": repeats,
           "record": record, "in_process": {k: med(sweep, k) for k in ("wall", "compile", "run", "peak_rss_mib")}}
    if single:
        per_process = {k: med(single, k) for k in ("wall", "compile", "run")}
        separate = per_process["wall"] * n_runs
        out |= {"per_process": per_process, "processes_timed": processes, "separate_processes_seconds": separate,
                "ratio": separate / out["in_process"]["wall"]}
    return out


def bench_lm(repeats: int) -> dict:
    from sim import bench_lm as lm  # the real-model section: sim/bench_lm.py

    return lm.bench_lm(repeats)


def _report_lm(r: dict) -> list[str]:
    from sim import bench_lm as lm

    return lm.report(r)


SECTIONS = {"wall": bench_wall, "throughput": bench_throughput, "vmap": bench_vmap, "roofline": bench_roofline,
            "families": bench_families, "lm": bench_lm, "sweep": bench_sweep}
DEFAULT_SECTIONS = ("wall", "throughput", "vmap", "roofline")


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
                     f"{v['sequential_seconds']:.2f} s ({v['runs']} x {v['single_run_seconds']:.3f} s, a single run "
                     f"padded to a block per device): {v['speedup']:.1f}x")
    if "roofline" in results:
        r = results["roofline"]
        lines.append(f"roofline ({r['runs']} runs): sampling only {r['roofline_tokens_per_second'] / 1e6:.2f} M tokens/s, "
                     f"training {r['train_tokens_per_second'] / 1e6:.2f} M tokens/s: ratio {r['ratio']:.2f}")
    for family, by_layout in results.get("families", {}).items():
        sized, fixed = by_layout["sized"], by_layout["invariant"]
        cells = [f"{n} run{'s' * (n != '1')} {sized[n]['samples_per_second']:8.0f} ({fixed[n]['samples_per_second']:7.0f}, "
                 f"{sized[n]['samples_per_second'] / fixed[n]['samples_per_second']:4.1f}x)" for n in sized]
        lines.append(f"samples/s {family:>11}: " + "; ".join(cells))
    if "families" in results:
        lines.append("samples/s: blocks sized to the batch (default) (fixed blocks, batch_invariant=true, the "
                     "previous design; ratio)")
    if "sweep" in results:
        w = results["sweep"]
        ip = w["in_process"]
        lines.append(f"sweep: {w['runs']} runs ({w['points']} points x {w['seeds']} seeds) x {w['steps']} steps in one "
                     f"sim.run (record={w['record']}): wall {ip['wall']:.1f} s (compile {ip['compile']:.1f} s, "
                     f"run {ip['run']:.1f} s), peak RSS {ip['peak_rss_mib']:.0f} MiB (median of {w['repeats']})")
        if "ratio" in w:
            lines.append(f"sweep as separate processes: {w['per_process']['wall']:.2f} s per run (median of "
                         f"{w['processes_timed']}, warm cache) x {w['runs']} = "
                         f"{w['separate_processes_seconds']:.0f} s: "
                         f"{w['ratio']:.0f}x the in-process sweep")
    if "lm" in results:
        lines += _report_lm(results["lm"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"sections to run: {', '.join(SECTIONS)} (default: {', '.join(DEFAULT_SECTIONS)})")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median reported)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH ('-' for stdout)")
    parser.add_argument("--sweep-runs", type=int, default=1000,
                        help="sweep: runs in the sweep (25 points x runs/25 seeds)")
    parser.add_argument("--sweep-steps", type=int, default=500, help="sweep: training steps (a multiple of 10)")
    parser.add_argument("--sweep-processes", type=int, default=5, help="sweep: separate processes to time (0: none)")
    parser.add_argument("--sweep-record", choices=("auto", "runs", "points"), default="auto",
                        help="sweep: the sweep's record setting")
    args = parser.parse_args(argv)
    for name, lo in (("repeats", 1), ("sweep_runs", 1), ("sweep_processes", 0)):
        if getattr(args, name) < lo:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= {lo}")
    if args.sweep_steps < 10 or args.sweep_steps % 10:
        parser.error(f"--sweep-steps={args.sweep_steps}: must be a positive multiple of 10 (log_every)")
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
    from sim import runtime

    runtime.configure(None, "auto")  # in-process sections: all cores, no persistent cache (cold numbers)
    results = {"header": header()}
    for name in args.sections or DEFAULT_SECTIONS:
        repeats = max(1, args.repeats // 2) if name in ("wall", "sweep") else args.repeats
        extra = {"runs": args.sweep_runs, "steps": args.sweep_steps, "processes": args.sweep_processes,
                 "record": args.sweep_record}
        if name == "lm":
            results[name] = bench_lm(max(1, min(args.repeats, 3)))
        else:
            results[name] = SECTIONS[name](repeats, **extra) if name == "sweep" else SECTIONS[name](repeats)
    print(report(results))
    if args.json:
        text = json.dumps(results, indent=2)
        sys.stdout.write(text + "\n") if args.json == "-" else Path(args.json).write_text(text)
    return results


if __name__ == "__main__":
    main()
