"""Best-of-n from the reference against the reward-hacking runs' own proxies (REPORT.md §8).

For each condition (a run of experiments/reward_hacking.yaml at β = 0 and one pair count) and each
reward-model seed: the proxy that seed's RL run optimised, the reference it started from, and best-of-n
for n = 1, 2, 4, ..., 2^14 (sim/reward_models/best_of_n.py: exact on the toy, every response
enumerated). Computed when reward_hacking is retrained (python -m experiments.regenerate) and stored
as results/toy/reward_hacking_best_of_n.json, which the report reads: --stored fits nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.runs import RESULTS, Run

STORED = RESULTS / "reward_hacking_best_of_n.json"
NS = tuple(2 ** k for k in range(15))  # d = sqrt(log n - (n-1)/n) from 0 to 2.95: past every RL run's final d
# condition -> (run label in reward_hacking.yaml, its pair count); all at beta = 0 (best-of-n has no penalty)
CONDITIONS = {"linear, 8 pairs": ("linear", 8), "linear, 256 pairs": ("linear", 256),
              "MLP, 8 pairs": ("mlp", 8), "MLP, 256 pairs": ("mlp", 256),
              "AND gold, linear, 8 pairs": ("and_linear", 8), "AND gold, linear, 256 pairs": ("and_linear", 256),
              "AND gold, MLP, 8 pairs": ("and_mlp", 8), "AND gold, MLP, 256 pairs": ("and_mlp", 256),
              "parity gold, linear, 8 pairs": ("parity_linear", 8), "parity gold, linear, 256 pairs": ("parity_linear", 256),
              "parity gold, MLP, 8 pairs": ("parity_mlp", 8), "parity gold, MLP, 256 pairs": ("parity_mlp", 256)}
PAIRS, BETA, SEED = "reward_model.pairs", "algo.kl.beta", "reward_model.seed"


def points(run: Run, pairs: int) -> list[int]:
    """The sweep points of `run` at this pair count and beta = 0 (if beta is swept), in increasing seed."""
    keep = [p for p, v in enumerate(run.batch.point_values)
            if np.isclose(v.get(PAIRS, pairs), pairs) and np.isclose(v.get(BETA, 0.0), 0.0)]
    return sorted(keep, key=lambda p: run.batch.point_values[p][SEED])


def curves(run: Run, pairs: int) -> dict:
    """{seeds, gold_SxN, proxy_SxN, kl_exact_SxN} of best-of-n at each n in NS, per reward-model seed."""
    from sim.reward_models import best_of_n, model as rm_lib
    from sim.stages import proxy as proxy_stage
    from sim.tasks import toy

    exp, batch = run.exp, run.batch
    task, rm = exp.static.task, exp.static.reward_model
    params_R = proxy_stage.prepare(exp, batch).params_R  # from the cache the RL runs filled
    all_NxL = toy.all_responses_NxL(task)
    P, N = task.prompts, all_NxL.shape[0]
    prompts_B, tokens_BxL = jnp.repeat(jnp.arange(P), N), jnp.tile(all_NxL, (P, 1))
    out = {"seeds": [], "gold_SxN": [], "proxy_SxN": [], "kl_exact_SxN": []}
    for p in points(run, pairs):
        r = int(run.runs(p)[0])
        hp = {k: jnp.float32(v) for k, v in batch.point_hparams[p].items()}
        ref_PxLxV = toy.reference_logits_PxLxV(task, (hp["competence_phi"], hp["competence_phi_prime"]),
                                               hp["competence_spread"])
        ref_prob_PxN = np.exp(np.sum(np.asarray(ref_PxLxV, np.float64)[:, np.arange(task.length), all_NxL], -1))
        proxy = jax.tree.map(lambda x: jnp.asarray(x[r]), params_R)
        proxy_PxN = np.asarray(rm_lib.score_B(rm, task, proxy, prompts_B, tokens_BxL, hp), np.float64).reshape(P, N)
        gold_N = np.asarray(rm_lib.gold_B(task, jnp.stack([hp["w_phi"], hp["w_phi_prime"]]), all_NxL), np.float64)
        rows = [best_of_n.best_of_n(ref_prob_PxN, proxy_PxN, np.broadcast_to(gold_N, (P, N)), n) for n in NS]
        out["seeds"].append(int(run.batch.point_values[p][SEED]))
        for key in ("gold", "proxy", "kl_exact"):
            out[f"{key}_SxN"].append([row[key] for row in rows])
    return out


def compute(runs: dict[str, Run]) -> dict:
    return {"n": list(NS), "conditions": {name: curves(runs[label], pairs) for name, (label, pairs) in CONDITIONS.items()}}


def store(results: dict, path: Path = STORED) -> None:
    path.write_text(json.dumps(results, indent=0) + "\n")


def load(path: Path = STORED) -> dict:
    return json.loads(path.read_text())
