"""The edge of a pretrained policy's run (file I/O, like experiment.py): read the checkpoint and
its tokenizer, build the text task on that tokenizer, and write samples.jsonl.

config.parse only locates the checkpoint; here it is read, once per run: the frozen reference
(one copy, in policy.dtype, shared by every run: train.py's `shared`), and `complete` fills what
config.parse cannot (the text task, the architecture, the EOS id), so make_train only ever sees a
complete Static (`Static.complete`).
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

from sim.tasks import text as text_task
from sim.config import Experiment
from sim.config_values import ConfigError
from sim.lm import weights as checkpoint, tokenizer as tokenizer_lib
from sim.lm.config import LMConfig
from sim.policies.pretrained import Frozen, split_boundary
from sim.rl.sweep import Batch


class Loaded(NamedTuple):
    exp: Experiment  # static.task (the text task's) and static.lm (model, eos_id) filled in
    shared: Frozen
    text: text_task.TextTask


def load(exp: Experiment) -> Loaded:
    """Read the checkpoint of exp.static.lm and build exp.text on its tokenizer."""
    settings = exp.static.lm
    where = f"policy.checkpoint={settings.checkpoint}"
    try:
        checkpoint.check_header(*checkpoint.read_header(settings.checkpoint))  # a wrong shape, before reading any
        cfg, params = checkpoint.load(settings.checkpoint, dtype=jnp.dtype(settings.dtype))
        tok = tokenizer_lib.load(settings.checkpoint)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"{where}: {e}") from None
    exp, text = complete(exp, cfg, tok, where)
    shared = Frozen(jax.tree.map(jnp.asarray, params), jnp.asarray(text.prompt_ids_PxT, jnp.int32),
                    jnp.asarray(text.prompt_mask_PxT, bool))
    return Loaded(exp, shared, text)


def complete(exp: Experiment, model: LMConfig, tok: tokenizer_lib.Tokenizer, where: str
             ) -> tuple[Experiment, text_task.TextTask]:
    """The one place a pretrained run's Static is completed (config.parse cannot: it needs files):
    the text task built on the checkpoint's tokenizer (static.task), the checkpoint's architecture
    and EOS (static.lm.model, eos_id), checked against the model's context, a position-split
    adapter's windows and runtime.mesh. The
    preflight and `load` both call it, so what is checked is what trains. Reads no file itself
    beyond the prompts file the text task names. `where` names the checkpoint in errors."""
    text = text_task.build(exp.text, tok, vocab=model.vocab)  # prompts file, prompt count, rules
    check_context(where, model, int(text.prompt_ids_PxT.shape[1]), exp.text.new_tokens)
    eos = tok.eos_id if tok.eos_id is not None else model.eos_id
    static = replace(exp.static, task=text.task, lm=replace(exp.static.lm, model=model, eos_id=eos))
    split_boundary(static.lm, static.task)  # a position-split adapter's reward windows, refused before any compile
    if static.lm.sharded:
        check_mesh(static)
    return replace(exp, static=static), text


def check_mesh(static) -> None:
    """runtime.mesh against this checkpoint and batch: one line naming the degree and what it
    does not divide (the devices, the model's widths, or a batch split over data x fsdp)."""
    from sim.lm import sharding

    mesh = sharding.make_mesh(*static.lm.mesh)
    sharding.check_divides(static.lm.model, mesh)
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    train = ("task.prompts_per_step", static.prompts_per_step) if static.prompts_per_step else ("task.prompts",
                                                                                                static.task.prompts)
    held_out = ("task.eval_prompts", static.eval_prompts) if static.eval_prompts else ("task.prompts", static.task.prompts)
    for what, size in ((f"{train[0]} x algo.group_size", train[1] * static.group_size),
                       (f"{held_out[0]} x policy.eval.samples", held_out[1] * static.eval_samples)):
        if size % split:
            raise ConfigError(f"runtime.mesh data x fsdp = {split}: must divide the batch {what} = {size}")


def check_context(where: str, model, prompt_tokens: int, new_tokens: int) -> None:
    """The longest prompt and its response must fit the model's context (its rotary positions are
    trained up to max_positions; JAX would otherwise allocate the attention of any length asked)."""
    if prompt_tokens + new_tokens > model.max_positions:
        raise ConfigError(f"task.new_tokens={new_tokens}: the longest prompt ({prompt_tokens} tokens) and its response "
                          f"need {prompt_tokens + new_tokens} positions; {where} has a context of "
                          f"{model.max_positions}; allowed: task.new_tokens <= {model.max_positions - prompt_tokens}")


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
