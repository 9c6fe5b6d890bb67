"""The checks that need more than the config's values: the files it names, the machine, the
installed packages. `check` runs them all before anything is written (sim/run.py calls it before
Hydra creates the run directory; sim/experiment.py's edge reads the same files again), so a run
that cannot start is refused in one line (a ConfigError) with nothing written, and the corrected
command reruns into the same directory.

What is checked, from the config and the files' headers only (no tensor is read):
- policy=pretrained: the checkpoint's format and family (config.json / GGUF metadata), every
  tensor's shape against the config's sizes, the tokenizer; the text task built on it (prompts
  file readable, UTF-8, holding enough prompts; each rule matching some token and not every one);
  the context length against the longest prompt + task.new_tokens; runtime.mesh against the device
  count, the model's widths and the batch;
- policy=pretrained: the run's peak memory, estimated from all this (sim/lm/memory.py), against
  the machine's memory.
runtime.distributed's coordinator is checked where the runtime is configured (sim/run.py), as
JAX's distributed runtime must be joined before any other check touches a device.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from sim.config import Experiment
from sim.config_values import ConfigError


@dataclass(frozen=True)
class Context:
    """What the checks know: the parsed experiment and its plain config; for policy=pretrained also
    the checkpoint's architecture (from its header), its tensor shapes and the built text task
    (exp completed by sim/lm_setup.complete, as a run completes it)."""
    exp: Experiment
    plain: dict
    model: object | None = None  # sim.lm.config.LMConfig
    shapes: dict | None = None  # HF name -> shape (HF layout)
    text: object | None = None  # sim.tasks.text.TextTask

    @property
    def prompt_tokens(self) -> int:
        """The longest prompt, in tokens (after the chat template): 0 without a text task."""
        return 0 if self.text is None else int(self.text.prompt_ids_PxT.shape[1])


Check = Callable[[Context], None]

def check(exp: Experiment, plain: dict) -> Context:
    """Every check above; raises ConfigError (one line) for the first that fails."""
    ctx = Context(exp, plain)
    if exp.static.lm is not None:
        ctx = check_pretrained(ctx)
        check_memory(ctx)
    return ctx


def check_pretrained(ctx: Context) -> Context:
    from sim import lm_setup
    from sim.lm import weights as checkpoint, tokenizer as tokenizer_lib

    exp = ctx.exp
    source = exp.static.lm.checkpoint
    path = checkpoint.resolve(source)
    where = f"policy.checkpoint={source}" + (f" ({path})" if str(path) != source else "")
    try:
        model, shapes = checkpoint.read_header(source)
        checkpoint.check_header(model, shapes)
        tok = tokenizer_lib.load(source)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"{where}: {e}") from None
    exp, text = lm_setup.complete(exp, model, tok, where)  # the text task (prompts, rules), context, mesh
    return replace(ctx, exp=exp, model=model, shapes=shapes, text=text)


def check_memory(ctx: Context) -> None:
    """The estimated peak of the whole run (every run's state, a block of runs computing at once)
    against the machine's memory: refused in one line before the model is read."""
    from sim import runtime
    from sim.rl.layout import batch_layout
    from sim.lm import memory

    exp = ctx.exp
    devices, block = batch_layout(exp.static, exp.n_runs, runtime.cpu_device_count(exp.runtime.cpu_devices))
    concurrent = devices * block if exp.static.lm.lora else 1
    memory.check_fits(ctx.model, exp.static, exp.n_runs, ctx.prompt_tokens, concurrent)
