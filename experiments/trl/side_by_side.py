"""sim and TRL on the same GRPO work, one after the other in one run on this machine.

    python experiments/trl/side_by_side.py [--peer-python /work/peer-venv/bin/python] [--out DIR]

Runs `python -m sim.bench lm` (sim's GRPO step on SmolLM2-135M-Instruct: 16 prompts x group 4 x 32
new tokens, k3 KL, adam; float32; median of --repeats) in sim's environment, then
experiments/trl/grpo_trl.py (TRL's GRPOTrainer, same model file, prompts, rewards, group, new
tokens, beta and lr; median step after the first) in the peer environment, once per
--trl-precision, and prints seconds per step, samples/s and sim's samples/s over TRL's. Each
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
    p.add_argument("--trl-precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "trl" / "side_by_side")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ, PYTHONPATH=str(REPO))
    sim_run = timed([args.sim_python, "-m", "sim.bench", "lm", "--repeats", str(args.repeats),
                     "--json", str(args.out / "sim.json")], env)
    sim = json.loads((args.out / "sim.json").read_text())["lm"]
    rows = [("sim (float32)", sim["grpo_step_seconds"], sim_run)]
    for precision in args.trl_precision:
        path = args.out / f"trl_{precision}.json"
        run = timed([args.peer_python, "experiments/trl/grpo_trl.py", "--prompts-per-step", str(PROMPTS),
                     "--group-size", str(GROUP), "--new-tokens", str(NEW_TOKENS), "--steps", str(args.trl_steps),
                     "--precision", precision, "--out", str(path)])
        rows.append((f"TRL GRPOTrainer ({precision})", json.loads(path.read_text())["median_step_seconds_after_first"], run))

    samples = PROMPTS * GROUP
    summary = {"work": f"{PROMPTS} prompts x group {GROUP} x {NEW_TOKENS} new tokens per step", "cpu_count": os.cpu_count(),
               "rows": [{"name": n, "seconds_per_step": s, "samples_per_second": samples / s, **run}
                        for n, s, run in rows]}
    for row in summary["rows"][1:]:
        row["sim_over_this_samples_per_second"] = summary["rows"][0]["samples_per_second"] / row["samples_per_second"]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['work']}, one run on this machine ({os.cpu_count()} CPUs):")
    for row in summary["rows"]:
        ratio = row.get("sim_over_this_samples_per_second")
        print(f"  {row['name']:28s} {row['seconds_per_step']:7.1f} s/step  {row['samples_per_second']:5.2f} samples/s"
              + (f"  sim / this = {ratio:.2f}x" if ratio else "")
              + f"  (load {row['load_before']:.1f} -> {row['load_after']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
