"""The edge of a pretrained policy's run (file I/O, like experiment.py): read the checkpoint and
its tokenizer, build the text task on that tokenizer, and write samples.jsonl.

config.parse only locates the checkpoint; here it is read, once per run: the frozen reference
(one copy, in policy.dtype, shared by every run: train.py's `shared`) and the architecture that
completes `Static.lm`.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sim import preflight
from sim.tasks import text as text_task
from sim.config import Experiment
from sim.config_values import ConfigError
from sim.lm import weights as checkpoint, tokenizer as tokenizer_lib
from sim.policies.pretrained import Frozen, split_boundary
from sim.rl.sweep import Batch


class Loaded(NamedTuple):
    exp: Experiment  # static.task (the text task's) and static.lm (model, eos_id) filled in
    shared: Frozen
    text: text_task.TextTask


def load(exp: Experiment) -> Loaded:
    """Read the checkpoint of exp.static.lm and build exp.text on its tokenizer."""
    settings = exp.static.lm
    try:
        checkpoint.check_header(*checkpoint.read_header(settings.checkpoint))  # a wrong shape, before reading any
        cfg, params = checkpoint.load(settings.checkpoint, dtype=jnp.dtype(settings.dtype))
        tok = tokenizer_lib.load(settings.checkpoint)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"policy.checkpoint={settings.checkpoint}: {e}") from None
    text = text_task.build(exp.text, tok, vocab=cfg.vocab)
    preflight.check_context(f"policy.checkpoint={settings.checkpoint}", cfg, int(text.prompt_ids_PxT.shape[1]),
                            exp.text.new_tokens)
    eos = tok.eos_id if tok.eos_id is not None else cfg.eos_id
    static = replace(exp.static, task=text.task, lm=replace(settings, model=cfg, eos_id=eos))
    split_boundary(static.lm, static.task)  # a position-split adapter's reward windows, refused before any compile
    if settings.sharded:
        preflight.check_mesh(static)
    shared = Frozen(jax.tree.map(jnp.asarray, params), jnp.asarray(text.prompt_ids_PxT, jnp.int32),
                    jnp.asarray(text.prompt_mask_PxT, bool))
    return Loaded(replace(exp, static=static), shared, text)


class SamplesWriter:
    """samples.jsonl: one line per response drawn at a logged step (the Monte Carlo responses of
    the logged metrics, `policy.eval.samples` per prompt; step 0's are the reference's): step, run,
    seed, point, prompt (index and text), response text (up to and without its EOS), whether it
    ended at EOS, phi and phi_prime. Appended as each chunk ends, decoded here on the host."""

    def __init__(self, path: Path, text: text_task.TextTask, batch: Batch, fresh: bool, eval_prompts: int = 0):
        self.path, self.text, self.batch = path, text, batch
        P = text.task.prompts  # the logged rows' responses answer the held-out prompts, when there are any
        self.prompts_P = np.arange(P, P + eval_prompts) if eval_prompts else np.arange(P)
        if fresh:
            path.write_text("")

    def reset(self, last_step: int) -> None:
        """Cut the file back to the lines of steps <= last_step (a resumed run's checkpoint; -1:
        none), atomically: the steps after it are drawn again, identically, as metrics.csv's rows are."""
        kept = []
        if self.path.exists():
            for line in self.path.read_text("utf-8").splitlines(keepends=True):
                try:
                    if line.endswith("\n") and json.loads(line)["step"] <= last_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):  # a line cut short by a kill: after the checkpoint
                    pass
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(kept), "utf-8")
        os.replace(tmp, self.path)

    def __call__(self, steps_C: np.ndarray, samples: dict) -> None:
        tokens_CxRxBxL, mask_CxRxBxL = samples["sample_tokens"], samples["sample_mask"]
        C, R, B, L = tokens_CxRxBxL.shape
        prompts_B = np.repeat(self.prompts_P, B // len(self.prompts_P))
        eos = self.text.tokenizer.eos_id
        lines = []
        for c in range(C):
            for r in range(R):
                for b in range(B):
                    ids = tokens_CxRxBxL[c, r, b][mask_CxRxBxL[c, r, b]].tolist()
                    finished = bool(ids) and eos is not None and ids[-1] == eos
                    lines.append(json.dumps({
                        "step": int(steps_C[c]), "run": r, "seed": int(self.batch.seeds_R[r]),
                        "point": int(self.batch.points_R[r]), "prompt_index": int(prompts_B[b]),
                        "prompt": self.text.prompt_texts[prompts_B[b]],
                        "response": self.text.tokenizer.decode(ids[:-1] if finished else ids),
                        "finished": finished, "phi": float(samples["sample_phi"][c, r, b]),
                        "phi_prime": float(samples["sample_phi_prime"][c, r, b])}, ensure_ascii=False))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def reference_rewards(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(phi_PxS, phi_prime_PxS) of the reference, read back from samples.jsonl: step 0's responses
    of every run pooled per prompt (each run draws its own, so S = runs x policy.eval.samples
    independent responses), over the prompts the logged rows answer. Read from the file so that a
    resumed run finds them too."""
    per_prompt: dict[int, list] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = json.loads(line)
            if s["step"] == 0:
                per_prompt.setdefault(s["prompt_index"], []).append((s["phi"], s["phi_prime"]))
    r_PxSx2 = np.array([per_prompt[p] for p in sorted(per_prompt)], np.float64)
    return r_PxSx2[..., 0], r_PxSx2[..., 1]
