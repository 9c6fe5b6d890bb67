"""Mean φ and φ′ of reference samples from transformers, for comparison with sim's sampler.

Peer environment only:

    /work/peer-venv/bin/python experiments/trl/reference_rewards.py --per-prompt 4 \
        --out experiments/trl/reference_rewards_transformers.json

Samples `--per-prompt` completions of `new_tokens` tokens for each of the task's prompts (chat
template, temperature 1, no top-k/top-p: the reference distribution itself) with transformers'
`generate` on the GGUF dequantised to float32, and scores them with grpo_trl.py's φ and φ′ (sim's
token-class rules). Reports each mean with a 95% interval that treats prompts as clusters (the
per-prompt means are independent; samples of one prompt are not), and the correlation of φ and φ′.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; no telemetry either
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_trl import REPO, hf_dir_from_gguf, make_reward, smollm2_gguf


def cluster_ci(values_PxG: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width from the P per-prompt means (normal approximation, P >= 30)."""
    m_P = values_PxG.mean(1)
    return float(m_P.mean()), float(1.96 * m_P.std(ddof=1) / math.sqrt(len(m_P)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task-yaml", type=Path, default=REPO / "conf/task/text.yaml")
    p.add_argument("--prompts-file", type=Path, default=REPO / "sim/data/instructions.txt")
    p.add_argument("--prompts", type=int, default=None, help="default: the task's")
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--batch-prompts", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-cache", type=Path, default=Path("/tmp/smollm2-135m-instruct-hf"))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    task = yaml.safe_load(a.task_yaml.read_text())
    new_tokens = task["new_tokens"]
    model_dir = hf_dir_from_gguf(smollm2_gguf(), a.hf_cache)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [l.strip() for l in a.prompts_file.read_text().splitlines()
             if l.strip() and not l.lstrip().startswith("#")][:a.prompts or task["prompts"]]
    log: dict = {}
    rewards = {k: make_reward(k, task[k], tok, model.config.vocab_size, log) for k in ("phi", "phi_prime")}
    torch.manual_seed(a.seed)
    completions: list[list[int]] = []
    for b in range(0, len(texts), a.batch_prompts):
        chunk = texts[b:b + a.batch_prompts]
        prompts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
                   for t in chunk for _ in range(a.per_prompt)]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
        for row in out[:, enc.input_ids.shape[1]:].tolist():
            cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            completions.append(row[:cut])
        print(f"sampled {len(completions)} / {len(texts) * a.per_prompt}", flush=True)
    P, G = len(texts), a.per_prompt
    vals = {k: np.asarray(f(None, None, completions), float).reshape(P, G) for k, f in rewards.items()}
    result = {"samples": P * G, "prompts": P, "per_prompt": G, "new_tokens": new_tokens, "seed": a.seed,
              "correlation_phi_phi_prime": float(np.corrcoef(vals["phi"].ravel(), vals["phi_prime"].ravel())[0, 1])}
    for k, v in vals.items():
        m, h = cluster_ci(v)
        result[k] = {"mean": m, "ci95_half_width": h}
    result["example_completions"] = [tok.decode(c) for c in completions[:4]]
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
