"""sim and TRL on the same GRPO work, one after the other in one run on this machine.

    python experiments/trl/side_by_side.py [--peer-python /work/peer-venv/bin/python] [--out DIR]

Runs `python -m sim.bench lm` (sim/rl/step.py's GRPO step on SmolLM2-135M-Instruct: 16 prompts x group
4 x 32 new tokens, k3 KL, adam; float32; full fine-tuning, LoRA rank 16, and 1/4/8 LoRA seeds in one
program; median of --repeats) in sim's environment, then experiments/trl/grpo_trl.py (TRL's
GRPOTrainer, same model file, prompts, rewards, group, new tokens, beta and lr; median step after
the first) in the peer environment, once per --trl-precision fully fine-tuned and once with a peft
LoRA of rank 16 on the same matrices (one seed at a time, as TRL runs), and prints seconds per step,
samples/s and sim's samples/s over TRL's: full fine-tuning against full fine-tuning, and sim's 8
LoRA seeds in one program against TRL's LoRA. Each
side's JSON (with the load average around it) goes to --out. Only this script's caller needs
both environments; sim itself never imports torch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPTS, GROUP, NEW_TOKENS = 16, 4, 32


def timed(cmd: list[str], env: dict | None = None) -> dict:
    load, t0 = os.getloadavg()[0], time.perf_counter()
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return {"wall_seconds": time.perf_counter() - t0, "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sim-python", default=sys.executable)
    p.add_argument("--peer-python", default="/work/peer-venv/bin/python")
    p.add_argument("--repeats", type=int, default=3, help="sim: timed GRPO steps (median)")
    p.add_argument("--trl-steps", type=int, default=4, help="TRL: steps (median of all but the first)")
    p.add_argument("--sim-json", type=Path, default=None,
                   help="reuse this `python -m sim.bench lm --json` output (measured just before, same machine) "
                        "instead of running the bench again")
    p.add_argument("--trl-precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "trl" / "side_by_side")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ, PYTHONPATH=str(REPO))
    if args.sim_json is not None:
        (args.out / "sim.json").write_text(args.sim_json.read_text())
        sim_run = {"reused": str(args.sim_json)}
    else:
        sim_run = timed([args.sim_python, "-m", "sim.bench", "lm", "--repeats", str(args.repeats),
                         "--json", str(args.out / "sim.json")], env)
    sim = json.loads((args.out / "sim.json").read_text())["lm"]
    by_name = {(r["config"], r["seeds"]): r for r in sim["runs"]}
    rows = [("sim full fine-tuning (float32)", by_name["full", 1]["step_seconds"], 1, sim_run),
            ("sim LoRA r16, 8 seeds in one program", by_name["lora", 8]["step_seconds"], 8, sim_run)]
    for precision, lora in [(p, 0) for p in args.trl_precision] + [(args.trl_precision[0], 16)]:
        path = args.out / f"trl_{precision}{'_lora16' if lora else ''}.json"
        run = timed([args.peer_python, "experiments/trl/grpo_trl.py", "--prompts-per-step", str(PROMPTS),
                     "--group-size", str(GROUP), "--new-tokens", str(NEW_TOKENS), "--steps", str(args.trl_steps),
                     "--precision", precision, "--lora-rank", str(lora), "--out", str(path)])
        name = f"TRL GRPOTrainer ({precision}{', peft LoRA r16' if lora else ''})"
        rows.append((name, json.loads(path.read_text())["median_step_seconds_after_first"], 1, run))

    samples = PROMPTS * GROUP
    summary = {"work": f"{PROMPTS} prompts x group {GROUP} x {NEW_TOKENS} new tokens per step (and seed)",
               "cpu_count": os.cpu_count(), "matmul_gflops": sim["matmul_gflops"],
               "rows": [{"name": n, "seconds_per_step": s, "seeds": k, "samples_per_second": k * samples / s, **run}
                        for n, s, k, run in rows]}
    full, lora8 = summary["rows"][0], summary["rows"][1]
    for row in summary["rows"][2:]:  # full fine-tuning against TRL's full, 8 LoRA seeds against TRL's LoRA
        ours = lora8 if "LoRA" in row["name"] else full
        row["sim_over_this_samples_per_second"] = ours["samples_per_second"] / row["samples_per_second"]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['work']}, one run on this machine ({os.cpu_count()} CPUs, "
          f"matmul {sim['matmul_gflops']:.0f} GFLOP/s):")
    for row in summary["rows"]:
        ratio = row.get("sim_over_this_samples_per_second")
        print(f"  {row['name']:38s} {row['seconds_per_step']:7.1f} s/step  {row['samples_per_second']:5.2f} samples/s"
              + (f"  sim / this = {ratio:.2f}x" if ratio else "")
              + (f"  (load {row['load_before']:.1f} -> {row['load_after']:.1f})" if "load_before" in row else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
