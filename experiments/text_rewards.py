"""The text task's default reward pair, measured on SmolLM2-135M-Instruct's own samples.

Two steps, both regenerable:

    python -m experiments.text_rewards sample [--samples 32] [--batch 128]
        draws `samples` responses per prompt from the reference (conf/task/text.yaml: its prompts,
        chat template and new_tokens; temperature 1, no top-k/top-p, as training samples) and
        stores their tokens in experiments/results/text_rewards/text_rewards_tokens.npz (appended batch by batch, so an
        interrupted run keeps what it drew; each batch's key: the responses per prompt drawn before it)
    python -m experiments.text_rewards measure
        scores the stored responses with conf/task/text.yaml's phi and phi_prime and writes
        experiments/results/text_rewards/text_rewards.json: mean phi and phi_prime, their correlation with a 95% CI
        (Fisher's z; and a bootstrap over prompts, which respects that samples of one prompt are
        related), the joint support (counts of the four (phi > 0, phi_prime > 0) cells), the
        sampled kappa(+-delta) of each with its bootstrap error, and a few decoded examples.

`measure` also scores the pairs of experiments/text_rewards_candidates.yaml on the same samples
(stored under "alternatives"), so that a pair is chosen without sampling again.
`cost` times one text-reward callback per batch of 64 stored responses of 32 tokens.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from sim.analysis import geometry
from sim.tasks import text as text_task
from sim.lm import weights as checkpoint, sampling, tokenizer as tokenizer_lib

HERE = Path(__file__).parent
TOKENS = HERE / "results" / "text_rewards" / "text_rewards_tokens.npz"
RESULT = HERE / "results" / "text_rewards" / "text_rewards.json"
CONF = HERE.parent / "conf" / "task" / "text.yaml"
CANDIDATES = HERE / "text_rewards_candidates.yaml"  # other pairs, scored on the same samples
MODEL = "smollm2-135m"


def task_section(overrides: dict | None = None) -> dict:
    section = yaml.safe_load(CONF.read_text())
    section.update(overrides or {})
    return section


def sample(samples: int, batch: int) -> None:
    cfg_m, params = checkpoint.load(MODEL)
    tok = tokenizer_lib.load(MODEL)
    section = task_section()
    tt = text_task.build(text_task.parse({"task": section}), tok, vocab=cfg_m.vocab)
    P, N = tt.task.prompts, tt.task.length
    ids_PxT, mask_PxT = jnp.asarray(tt.prompt_ids_PxT), jnp.asarray(tt.prompt_mask_PxT)
    reps = batch // P  # each batch: every prompt `reps` times
    assert reps >= 1 and batch % P == 0 and samples % reps == 0, "batch must be a multiple of the prompts"
    have = dict(np.load(TOKENS)) if TOKENS.exists() else {}
    tokens = list(have["tokens_SxPxN"]) if have else []  # one entry per sample index s: P x N
    if have and (have["prompt_ids_PxT"].shape != tt.prompt_ids_PxT.shape or (have["prompt_ids_PxT"] != tt.prompt_ids_PxT).any()):
        raise SystemExit(f"{TOKENS} holds samples of other prompts: move it away first")
    ids_BxT, mask_BxT = jnp.tile(ids_PxT, (reps, 1)), jnp.tile(mask_PxT, (reps, 1))
    while len(tokens) < samples:
        b = len(tokens) // reps
        t0 = time.perf_counter()
        # the key: the number of responses per prompt drawn before (so batch sizes may change on resume)
        out_BxN = sampling.generate(params, cfg_m, jax.random.key(len(tokens)), ids_BxT, mask_BxT, N, 1.0, 0, 1.0)
        out_RxPxN = np.asarray(out_BxN).reshape(reps, P, N)
        tokens.extend(out_RxPxN)
        np.savez(TOKENS, tokens_SxPxN=np.stack(tokens).astype(np.int32), prompt_ids_PxT=tt.prompt_ids_PxT,
                 prompt_mask_PxT=tt.prompt_mask_PxT)
        print(f"batch {b}: {batch} responses of {N} tokens in {time.perf_counter() - t0:.1f} s "
              f"({len(tokens)}/{samples} per prompt)", flush=True)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")


def score(section: dict, tok, vocab: int, tokens_SxPxN: np.ndarray, key: jax.Array) -> dict:
    tt = text_task.build(text_task.parse({"task": section}), tok, vocab=vocab)
    S, P, N = tokens_SxPxN.shape
    tokens_BxN = jnp.asarray(tokens_SxPxN.transpose(1, 0, 2).reshape(P * S, N))  # prompt-major
    mask_BxN = sampling.response_mask(tokens_BxN, tok.eos_id)
    phi_B, phi_prime_B = (np.asarray(r, np.float64) for r in tt.rewards_B(tokens_BxN, mask_BxN, jnp.arange(P).repeat(S)))
    phi_PxS, phi_prime_PxS = phi_B.reshape(P, S), phi_prime_B.reshape(P, S)
    corr = _corr(phi_B, phi_prime_B)
    n = phi_B.size
    z, half = np.arctanh(corr), 1.96 / np.sqrt(n - 3)
    # bootstrap over prompts (samples of one prompt are not independent of each other)
    rng = np.random.default_rng(0)
    boot = [_corr(phi_PxS[i].ravel(), phi_prime_PxS[i].ravel()) for i in rng.integers(0, P, (1000, P))]
    cells = {f"phi{'>' if a else '='}0,phi_prime{'>' if b else '='}0": int(np.sum(((phi_B > 0) == a) & ((phi_prime_B > 0) == b)))
             for a in (False, True) for b in (False, True)}
    delta = float(section["kappa_delta"])
    kappas = {}
    for i, (name, r_PxS) in enumerate((("phi", phi_PxS), ("phi_prime", phi_prime_PxS))):
        k, se = geometry.bootstrap_kappa(jax.random.fold_in(key, i), jnp.asarray(r_PxS, jnp.float32), jnp.float32(delta))
        kappas[name] = {"kappa": float(k), "kappa_se": float(se)}
    finished = np.asarray(jnp.any(tokens_BxN == tok.eos_id, -1)).mean()
    return {
        "phi": {k: section["phi"][k] for k in ("positions", "shape") if k in section["phi"]}
               | {"rule" if "rule" in section["phi"] else "text": section["phi"].get("rule", section["phi"].get("text")),
                  "good_tokens": len(tt.task.phi.good_tokens)},
        "phi_prime": {k: section["phi_prime"][k] for k in ("positions", "shape") if k in section["phi_prime"]}
                     | {"rule" if "rule" in section["phi_prime"] else "text":
                        section["phi_prime"].get("rule", section["phi_prime"].get("text")),
                        "good_tokens": len(tt.task.phi_prime.good_tokens)},
        "samples": int(n), "prompts": int(P), "samples_per_prompt": int(S),
        "mean_phi": float(phi_B.mean()), "mean_phi_prime": float(phi_prime_B.mean()),
        "mean_phi_se_over_prompts": float(phi_PxS.mean(1).std(ddof=1) / np.sqrt(P)),
        "mean_phi_prime_se_over_prompts": float(phi_prime_PxS.mean(1).std(ddof=1) / np.sqrt(P)),
        "corr": corr, "corr_ci95_fisher": [float(np.tanh(z - half)), float(np.tanh(z + half))],
        "corr_ci95_bootstrap_prompts": [float(np.nanpercentile(boot, 2.5)), float(np.nanpercentile(boot, 97.5))],
        "joint_support": cells, "distinct_value_pairs": len(set(zip(phi_B.tolist(), phi_prime_B.tolist()))),
        "kappa_delta": delta, "kappa": kappas, "finished_at_eos": float(finished),
    }


def measure(candidates: Path = CANDIDATES) -> None:
    cfg_m, _ = checkpoint.read_header(MODEL)  # the sizes only
    tok = tokenizer_lib.load(MODEL)
    tokens_SxPxN = np.load(TOKENS)["tokens_SxPxN"]
    key = jax.random.key(0)
    result = score(task_section(), tok, cfg_m.vocab, tokens_SxPxN, key)
    result["alternatives"] = []
    for cand in yaml.safe_load(candidates.read_text()):
        name = cand.pop("name")
        result["alternatives"].append({"name": name} | score(task_section(cand), tok, cfg_m.vocab, tokens_SxPxN, key))
    mask = np.asarray(sampling.response_mask(jnp.asarray(tokens_SxPxN[0]), tok.eos_id))
    result["examples"] = [{"prompt": p, "response": tok.decode([t for t, m in zip(ids, mk) if m and t != tok.eos_id])}
                          for p, ids, mk in list(zip(text_task.read_prompts(None), tokens_SxPxN[0], mask))[:4]]
    result["model"] = MODEL
    result["command"] = "python -m experiments.text_rewards sample && python -m experiments.text_rewards measure"
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


def cost(repeats: int = 50) -> None:
    """Median wall time of one text-reward call inside a jitted function, per batch of 64 responses
    of 32 tokens (the stored samples), next to the same batch's token-class rewards."""
    from sim.tasks import text_rewards
    tok = tokenizer_lib.load(MODEL)
    tokens_BxN = jnp.asarray(np.load(TOKENS)["tokens_SxPxN"][0][:64, :32])
    mask_BxN = sampling.response_mask(tokens_BxN, tok.eos_id)
    tt = text_task.build(text_task.parse({"task": task_section()}), tok, vocab=49152)
    calls = {name: jax.jit(lambda t, m, name=name: text_rewards.reward_B(name, tok, t, m))
             for name in sorted(text_rewards.REGISTRY)}
    calls["token-class phi and phi_prime (on device)"] = jax.jit(lambda t, m: jnp.stack(tt.rewards_B(t, m)))
    for name, f in calls.items():
        f(tokens_BxN, mask_BxN).block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(tokens_BxN, mask_BxN).block_until_ready()
            times.append(time.perf_counter() - t0)
        print(f"{name}: median {1e3 * np.median(times):.2f} ms per call of 64 x 32 tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("sample", "measure", "cost"))
    ap.add_argument("--samples", type=int, default=32, help="responses per prompt")
    ap.add_argument("--batch", type=int, default=128, help="responses per generate call (a multiple of the prompts)")
    ap.add_argument("--candidates", type=Path, default=CANDIDATES, help="measure: other {name, phi, phi_prime} pairs")
    a = ap.parse_args()
    if a.step == "sample":
        sample(a.samples, a.batch)
    elif a.step == "measure":
        measure(a.candidates)
    else:
        cost()


if __name__ == "__main__":
    main()
