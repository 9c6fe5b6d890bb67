"""sim's numbers on the same token ids as reference_transformers.json, and the differences.

Runs in sim's own environment (no torch), from the repository root:

    PYTHONPATH=$PWD /work/main/.venv/bin/python experiments/trl/sim_check.py \
        --out experiments/trl/sim_vs_transformers.json

It loads the same GGUF with sim.lm.weights.load (float32), runs sim.lm.model.forward on the
exact token ids transformers used (so tokenizers cannot hide or cause a difference), and reports
the mean NLL of the paragraph (with and without BOS), the greedy continuation of "The capital of
France is" (argmax, full forward per token: no cache, so it checks the model, not the sampler) and
the per-token log-probs of the fixed chat response, each next to transformers' value.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sim.lm import weights as checkpoint, model

HERE = Path(__file__).resolve().parent


def logprobs(params, cfg, ids: list[int]) -> np.ndarray:
    """log p(ids[t] | ids[:t]), t = 1..T-1 (float64 from sim's float32 logits)."""
    ids_1xT = jnp.asarray([ids], jnp.int32)
    mask_1xT = jnp.ones_like(ids_1xT, bool)
    logits_1xTxV = model.forward(params, cfg, ids_1xT, model.positions_from_mask(mask_1xT), mask_1xT)
    logp_TxV = jax.nn.log_softmax(np.asarray(logits_1xTxV[0, :-1], np.float64), -1)
    return np.take_along_axis(np.asarray(logp_TxV), np.asarray(ids[1:])[:, None], 1)[:, 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=HERE / "reference_transformers.json")
    p.add_argument("--checkpoint", default="smollm2-135m")
    p.add_argument("--out", type=Path, default=HERE / "sim_vs_transformers.json")
    a = p.parse_args()
    jax.config.update("jax_enable_x64", True)  # float64 log-softmax of the float32 logits
    ref = json.loads(a.reference.read_text())
    cfg, params = checkpoint.load(a.checkpoint, jnp.float32)

    para = ref["paragraph"]
    nll_plain = -logprobs(params, cfg, para["token_ids"])
    nll_bos = -logprobs(params, cfg, [ref["bos_token_id"]] + para["token_ids"])

    ids = list(ref["greedy"]["prompt_ids"])
    for _ in range(ref["greedy"]["new_tokens"]):
        ids_1xT = jnp.asarray([ids], jnp.int32)
        mask = jnp.ones_like(ids_1xT, bool)
        ids.append(int(jnp.argmax(model.forward(params, cfg, ids_1xT, model.positions_from_mask(mask), mask)[0, -1])))
    greedy = ids[len(ref["greedy"]["prompt_ids"]):]

    chat = ref["chat"]
    lp = logprobs(params, cfg, chat["prompt_ids"] + chat["response_ids"])[len(chat["prompt_ids"]) - 1:]
    lp_ref = np.asarray(chat["response_logprobs"])
    d_plain = nll_plain - np.asarray(para["no_bos"]["nll_per_token"])
    d_bos = nll_bos - np.asarray(para["with_bos"]["nll_per_token"])
    out = {
        "checkpoint": a.checkpoint,
        "paragraph_mean_nll": {
            "no_bos": {"sim": float(nll_plain.mean()), "transformers": para["no_bos"]["mean_nll"],
                       "diff": float(nll_plain.mean() - para["no_bos"]["mean_nll"]),
                       "max_abs_per_token_diff": float(np.abs(d_plain).max())},
            "with_bos": {"sim": float(nll_bos.mean()), "transformers": para["with_bos"]["mean_nll"],
                         "diff": float(nll_bos.mean() - para["with_bos"]["mean_nll"]),
                         "max_abs_per_token_diff": float(np.abs(d_bos).max())},
        },
        "greedy": {"sim_ids": greedy, "transformers_ids": ref["greedy"]["continuation_ids"],
                   "equal": greedy == ref["greedy"]["continuation_ids"]},
        "chat_response_logprobs": {"sim": lp.tolist(), "transformers": lp_ref.tolist(),
                                   "diff": (lp - lp_ref).tolist(), "max_abs_diff": float(np.abs(lp - lp_ref).max()),
                                   "sum_sim": float(lp.sum()), "sum_transformers": float(lp_ref.sum())},
    }
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"paragraph_mean_nll": out["paragraph_mean_nll"], "greedy": out["greedy"],
                      "chat_max_abs_diff": out["chat_response_logprobs"]["max_abs_diff"]}, indent=1))


if __name__ == "__main__":
    main()
