"""The decisive real-model experiment (issue 27): `python -m experiments.decisive`.

    python -m experiments.decisive pairs              score the two reward pairs on the stored reference samples
    python -m experiments.decisive run pilot|main     train the primary arms of both pairs (resumable)
    python -m experiments.decisive run secondary [--only NAME ...]
    python -m experiments.decisive run toy             the toy's prediction for the same structures (minutes)
    python -m experiments.decisive power              the main run's seeds, from the pilot's spread

The design is experiments/decisive.yaml, written before the main run. Results go to
experiments/results/decisive/: pairs.json, runs/<stage>/<pair>[_<arm>]/ (sim.run's small files and
run.json: command, wall time, load) and power.json. A run interrupted (a session's end) resumes
from its last checkpoint when `run` is called again; a finished one is left alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from experiments import decisive_report
from experiments.real_model import run_one
from sim.analysis import stats

HERE = Path(__file__).resolve().parent
SPEC = HERE / "decisive.yaml"
RESULTS = HERE / "results" / "decisive"


def load_spec(path: Path = SPEC) -> dict:
    return yaml.safe_load(path.read_text())


def stage_overrides(spec: dict, stage: str, seeds: int | None = None) -> list[str]:
    """The sizes of a stage (pilot or main) as sim.run overrides (all its seeds in one run)."""
    s = spec[stage]
    n = seeds or s["seeds"]
    if not n:
        raise SystemExit(f"decisive: {stage}.seeds is not set yet: run `python -m experiments.decisive power` "
                         "on the pilot first, and write its answer into experiments/decisive.yaml")
    return [f"seeds={n}", f"steps={s['steps']}", f"log_every={s['log_every']}", f"optim.lr={s['lr']}"]


def chunk_overrides(spec: dict, first: int, seeds: int) -> list[str]:
    m = spec["main"]
    return [f"seed={first}", f"seeds={seeds}", f"steps={m['steps']}", f"log_every={m['log_every']}", f"optim.lr={m['lr']}"]


def configurations(spec: dict, stage: str, only: list[str] | None = None) -> dict[str, list[str]]:
    """name -> overrides of every sim.run of a stage: one per pair (primary), or per pair and arm."""
    if stage == "toy":
        return {f"toy_{name}": list(overrides) for name, overrides in spec["toy"].items()}
    if stage == "main" and spec["main"].get("extends_pilot"):  # chunk by chunk, the pairs interleaved
        return {f"{pair}_s{first}": [task] + spec["common"] + chunk_overrides(spec, first, n) + list(spec["primary"])
                for first, n in decisive_report.seed_chunks(spec) for pair, task in spec["pairs"].items()}
    sizes = stage_overrides(spec, "main" if stage == "secondary" else stage)
    out = {}
    for pair, task in spec["pairs"].items():
        if stage == "secondary":
            for arm, extra in spec["secondary"].items():
                if not only or arm in only:
                    out[f"{pair}_{arm}"] = [task] + spec["common"] + sizes + list(extra)
        else:
            out[pair] = [task] + spec["common"] + sizes + list(spec["primary"])
    return out


# ---- pairs: the reference's numbers for each pair ----

def pairs(spec: dict) -> dict:
    """Score each pair on the reference samples stored by experiments/text_rewards.py (2048
    responses, 32 per prompt to 64 prompts), cut to the pair's 16 tokens: the first 16 tokens of
    a 32-token sample are a 16-token sample."""
    import jax
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments import text_rewards
    from sim.lm import tokenizer as tokenizer_lib
    from sim.lm import weights
    from sim.run import CONF_DIR

    tok = tokenizer_lib.load(text_rewards.MODEL)
    vocab = weights.read_header(text_rewards.MODEL)[0].vocab  # the sizes only
    stored = np.load(text_rewards.TOKENS)["tokens_SxPxN"]
    out = {}
    for pair, task in spec["pairs"].items():
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            section = OmegaConf.to_container(compose("config", overrides=[task]).task, resolve=True)
        section["prompts"] = stored.shape[1]  # the prompts the samples answer (text_rewards.py's)
        section["eval_prompts"], section["prompts_per_step"] = 0, None
        tokens = stored[:, :, :section["new_tokens"]]
        out[pair] = {"task": task} | text_rewards.score(section, tok, vocab, tokens, jax.random.key(0))
    return out


# ---- power: the main run's seeds from the pilot ----

def contrasts(spec: dict, results: Path, stage: str = "pilot") -> dict[str, np.ndarray]:
    """The primary contrasts' per-seed values: point 0 is the paid arm (w2 = 1), point 1 the unpaid."""
    out = {}
    last = spec["endpoint"]["last_evaluations"]
    for pair, run in decisive_report.load_stage(spec, results, stage).items():
        paid, unpaid = (decisive_report.endpoint_N(run[point], spec["endpoint"]["metric"], last) for point in (0, 1))
        out[f"{pair}.paid"], out[f"{pair}.unpaid"], out[f"{pair}.paid-unpaid"] = paid, unpaid, paid - unpaid
    return out


def seeds_needed(sd: float, mde: float, alpha: float, power: float, k: int, most: int = 1000) -> int | None:
    """The fewest seeds n at which a two-sided one-sample t-test at level alpha / k (Holm's first,
    strictest step over k contrasts) detects a mean of `mde` with probability `power`, for a spread
    `sd` between seeds: MDE(n) = (t_{1 - alpha/2k, n-1} + t_{power, n-1}) sd / sqrt(n)."""
    from scipy import stats as st

    for n in range(3, most + 1):
        if (st.t.ppf(1 - alpha / (2 * k), n - 1) + st.t.ppf(power, n - 1)) * sd / np.sqrt(n) <= mde:
            return n
    return None


def power(spec: dict, results: Path) -> dict:
    values = contrasts(spec, results, "pilot")
    k = len(spec["contrasts"])
    out = {"pilot": "runs/pilot", "mde": spec["mde"], "power": spec["power"], "alpha": spec["alpha"], "family": k,
           "contrasts": {}}
    for name in spec["contrasts"]:
        x = values[name]
        c = stats.contrast(x)
        sd = float(np.std(x, ddof=1))
        out["contrasts"][name] = {"seeds": int(x.size), "mean": float(np.mean(x)), "sd": sd,
                                  "ci95": [c.lo, c.hi], "seeds_needed": seeds_needed(sd, spec["mde"], spec["alpha"],
                                                                                      spec["power"], k)}
    needed = [c["seeds_needed"] for c in out["contrasts"].values()]
    out["seeds_needed"] = None if None in needed else max(needed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.decisive", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("pairs", help="score the reward pairs on the stored reference samples -> pairs.json")
    p_run = sub.add_parser("run", help="train a stage's configurations (slow; resumable)")
    p_run.add_argument("stage", choices=("pilot", "main", "secondary", "toy"))
    p_run.add_argument("--only", nargs="+", metavar="NAME", help="only these pairs (pilot, main) or arms (secondary)")
    p_run.add_argument("--extra", nargs="+", default=[], metavar="OVERRIDE", help="more sim.run overrides")
    sub.add_parser("power", help="the main run's seeds from the pilot's spread -> power.json")
    args = parser.parse_args(argv)
    spec = load_spec()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.what == "pairs":
        (RESULTS / "pairs.json").write_text(json.dumps(pairs(spec), indent=2) + "\n")
        print(f"wrote {RESULTS / 'pairs.json'}", file=sys.stderr)
        return 0
    if args.what == "power":
        result = power(spec, RESULTS)
        (RESULTS / "power.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    configs = configurations(spec, args.stage, args.only if args.stage == "secondary" else None)
    names = [n for n in configs if args.stage == "secondary" or not args.only or n.split("_s")[0] in args.only]
    runs = RESULTS / "runs" / args.stage
    statuses = [run_one({"runs": {n: configs[n]}}, n, runs, args.extra) for n in names]
    return max(statuses, default=0)


if __name__ == "__main__":
    sys.exit(main())
