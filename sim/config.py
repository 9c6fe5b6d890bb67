"""Config schema: a composed Hydra config -> Experiment (Static, hparams, seeds).

`Static` holds everything that changes shapes or code (one compiled program per Static);
`hparams` holds every numeric knob, one float per run, so a batch of runs with different values
shares one compiled program. Each feature parses its own section (the task: tasks/toy.py or
tasks/text.py; the policy: its family's module, found through the registry in sim/policies; the
hparams: sim/hparams.py; runtime, reward_model, logger: their modules); this module checks the
keys, composes the sections and refuses the combinations no section can judge alone. Every
invalid value raises `ConfigError` with one line naming the key, the bad value and what is
allowed, before anything is compiled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from sim import hparams as hparams_lib, policies, runtime as runtime_lib
from sim.analysis import stats
from sim.config_values import FINITE_NONNEG, POSITIVE, ConfigError, choice, flag, integer, is_list, lookup, real
from sim.hparams import SWEEP_KEYS, resolve_kappa_targets
from sim.output import trackers
from sim.policies import sft as sft_lib
from sim.policies.autoregressive import Arch
from sim.policies.pretrained import Settings
from sim.policies.sft import SFT
from sim.reward_models import model as reward_model
from sim.rl import algos
from sim.runtime import Runtime
from sim.tasks import text as text_task, toy as toy_task
from sim.tasks.toy import MAX_RESPONSES, Task

OPTIMIZERS = ("adam", "sgd")
MODES = ("sampled", "exact")  # exact: the infinite-sample limit, by enumerating every response

# Static keys whose value is itself a list (they cannot be swept in-process); a family adds its own.
_LIST_KEYS = {f"task.{r}.{k}" for r in ("phi", "phi_prime") for k in ("positions", "good_tokens")}

# What a run keeps of its metrics: every run's rows, or per sweep point the mean and spread over
# seeds (reduced on device; each run keeps only its first and last rows, for the summary).
# 'auto' keeps every run's rows up to RUN_ROWS_LIMIT rows (runs x logged steps).
RECORD_MODES = ("auto", "runs", "points")

# The analysis after training (analysis.py): none; basic = the reference's KL-cost curves and kappa
# over all policies (the tilt), the orthogonality certificate and the quadrant table; full = also
# the least KL within the policy family (an optimisation per sweep point: seconds of compile and run).
ANALYSIS_MODES = ("none", "basic", "full")
RUN_ROWS_LIMIT = 1_000_000

# The keys each section accepts (anything else is a typo and is refused); the policy section's
# come from its family (policies.Family.keys and .sections).
_KEYS: dict[str, set[str]] = {
    "": {"task", "policy", "algo", "optim", "seed", "seeds", "steps", "log_every", "plots", "record", "runtime",
         "analysis", "chunk_steps", "checkpoint_seconds", "resume", "overwrite", "reward_model",
         "batch_invariant", "logger", "verdict", "decomposition"},
    "verdict": {"margin"},
    "reward_model": reward_model.KEYS,
    "runtime": runtime_lib.KEYS,
    "runtime.mesh": runtime_lib.MESH_KEYS,
    "logger": set(trackers.KINDS), **{f"logger.{k}": keys for k, keys in trackers.KEYS.items()},
    "task": toy_task.KEYS,
    "task.phi": toy_task.REWARD_KEYS,
    "task.phi_prime": toy_task.REWARD_KEYS | {"relative_weight"},
    "algo": {"advantage", "group_size", "std_eps", "mode", "loss", "kl"},
    "algo.loss": {"kind", "aggregation", "epochs", "eps_low", "eps_high", "entropy_coef"},
    "algo.kl": {"beta", "estimator", "placement"},
    "optim": {"name", "lr", "max_grad_norm"},
}
# task.kind: toy (the default: the synthetic world above) | text (real prompts and tokens: text_task.py)
TASK_KINDS = ("toy", "text")
_TEXT_KEYS: dict[str, set[str]] = {
    "task": text_task.KEYS,
    "task.phi": text_task.REWARD_KEYS,
    "task.phi_prime": text_task.REWARD_KEYS | {"relative_weight"},
}


@dataclass(frozen=True)
class Static:
    # A text task's Static leaves parse() incomplete: its task (built on the checkpoint's tokenizer) and
    # lm.model / lm.eos_id need files; sim/lm_setup.complete fills them at the edge, before make_train,
    # which refuses an incomplete Static (`complete`).
    task: Task | None
    policy: str  # a name in policies.FAMILIES; the fields below it fills are its family's parse()
    advantage: str
    group_size: int
    std_eps: float
    kl_estimator: str
    kl_placement: str
    optimizer: str
    steps: int
    log_every: int
    mode: str = "sampled"  # or "exact": the expected update, summed over every response
    loss: str = "pg"  # algos.LOSSES
    aggregation: str = "seq_mean_token_sum"  # algos.AGGREGATIONS
    epochs: int = 1  # optimizer steps on each batch (old log-probs held fixed)
    width: int = 0  # lowrank only: the features' width
    arch: Arch | None = None  # neural policies only
    eval_samples: int = 0  # neural: Monte Carlo responses per prompt for the logged expectations
    enumerate_max: int = 0  # neural: exact expectations by enumeration when vocab**length <= this
    # whether the loss carries the entropy bonus: parse() clears it when every run's entropy_coef is
    # 0, so the default runs skip the entropy and its gradient (~10% of a step in an XLA profile)
    entropy_bonus: bool = True
    lm: Settings | None = None  # policy.kind=pretrained: its settings (the checkpoint's architecture once complete)
    # a registered family's own static settings beyond width, arch and lm (a frozen, hashable value; BuildArgs.settings)
    settings: object = None
    reward_model: reward_model.RewardModel | None = None  # a learned proxy replaces the gold reward in RL
    # True: every run goes through the same compiled code whatever its batch and the device count
    # (fixed blocks: bit-identical numbers alone or in any batch; small batches padded). False: blocks
    # sized to the batch (a run costs what it computes; the numbers depend on config and seed only
    # through the batch it is in). See sim/rl/layout.py.
    batch_invariant: bool = False
    # a real model's data set (task=text): prompts drawn per step (0: every training prompt, every
    # step), and held-out prompts the logged metrics are evaluated on (0: the training prompts)
    prompts_per_step: int = 0
    eval_prompts: int = 0
    # log the gradient decomposition (sim/rl/decomposition.py) at logged steps: which term moves E[phi']
    decomposition: bool = False

    @property
    def complete(self) -> bool:
        """Everything training reads is here (a text task's: after sim/lm_setup.complete)."""
        return self.task is not None and (self.lm is None or self.lm.model is not None)


@dataclass(frozen=True)
class Experiment:
    static: Static
    hparams: dict[str, float]  # one value per hparams.HPARAM_KEYS name; a swept one holds its first value
    seeds: tuple[int, ...]
    plots: bool = True
    runtime: Runtime = Runtime()
    # How a run is executed; none of these changes a number. The loop runs in chunks of
    # `chunk_steps` steps (None: about 10 chunks); after a chunk, a checkpoint is written if
    # `checkpoint_seconds` have passed since the last one (0: after every chunk; None: never).
    chunk_steps: int | None = None
    checkpoint_seconds: float | None = 60.0
    resume: bool = True  # continue an interrupted run of the same config found in the output directory
    overwrite: bool = False  # replace whatever run the output directory holds

    @property
    def rows_per_chunk(self) -> int | None:
        return self.chunk_steps // self.static.log_every if self.chunk_steps else None
    axes: dict[str, tuple[float, ...]] = field(default_factory=dict)  # swept config key -> values
    derived: dict[str, float] = field(default_factory=dict)  # hparams.DERIVED_KEYS name -> value, set and not swept
    record: str = "runs"  # 'runs' | 'points' ('auto' is resolved by parse)
    sft: SFT | None = None  # neural policies: how their reference is trained
    analysis: str = "basic"  # ANALYSIS_MODES
    text: text_task.TextTaskConfig | None = None  # task.kind=text: the task's config (built at the edge)
    reward_fit: reward_model.Fit | None = None  # with Static.reward_model: how its proxies are fit
    # trackers.parse_logger: kind -> options of the trackers every logged row also streams to
    # ({}: none; changes no number)
    logger: dict[str, dict] = field(default_factory=dict)
    # summary.json's verdicts: "equivalent" needs |delta| < margin by TOST (sim/analysis/stats.py); changes no metric
    verdict_margin: float = stats.DEFAULT_MARGIN

    @property
    def n_runs(self) -> int:
        return math.prod(len(v) for v in self.axes.values()) * len(self.seeds)


def _chunk_steps(cfg, steps: int, log_every: int) -> int | None:
    if cfg.get("chunk_steps") is None:
        return None
    chunk = integer(cfg, "chunk_steps", 1)
    if chunk % log_every or steps % chunk:
        raise ConfigError(f"chunk_steps={chunk}: must be a multiple of log_every={log_every} that divides "
                          f"steps={steps}, or null for about 10 chunks")
    return chunk


def _checkpoint_seconds(cfg) -> float | None:
    if "checkpoint_seconds" not in cfg:
        return Experiment.checkpoint_seconds
    return None if cfg["checkpoint_seconds"] is None else real(cfg, "checkpoint_seconds", *FINITE_NONNEG)


def _check_keys(cfg: Mapping, keys: dict[str, set[str]], list_keys: set[str], section: str = "") -> None:
    for k, v in cfg.items():
        full = f"{section}.{k}" if section else str(k)
        if k not in keys[section]:
            raise ConfigError(f"{full}: unknown key; allowed keys here are {', '.join(sorted(keys[section]))}")
        if full in keys:
            if not isinstance(v, Mapping):
                raise ConfigError(f"{full}={v!r}: must be a section with keys {', '.join(sorted(keys[full]))}")
            _check_keys(v, keys, list_keys, full)
        elif is_list(v) and full not in SWEEP_KEYS.values() and full not in list_keys:
            raise ConfigError(f"{full}={list(v)!r}: static keys cannot be swept in-process; "
                              "use -m (Hydra multirun) with comma-separated values")


def _check_algo(s: Static, text: text_task.TextTaskConfig | None = None) -> None:
    """Combinations that are each valid alone but not together."""
    prompts = text.prompts if text else s.task.prompts
    if s.advantage in algos.NEEDS_BATCH and s.mode == "sampled" and prompts * s.group_size < 2:
        raise ConfigError(f"algo.group_size={s.group_size}: {s.advantage} whitens over the batch of "
                          f"task.prompts * algo.group_size responses, which must be >= 2")
    if s.epochs > 1 and s.loss != "clip":
        raise ConfigError(f"algo.loss.epochs={s.epochs}: several epochs on the same samples need "
                          f"algo.loss.kind=clip (the importance ratio); {s.loss} allows 1")
    if s.kl_estimator == "exact" and s.kl_placement != "loss":
        raise ConfigError("algo.kl.estimator=exact: needs algo.kl.placement=loss (the exact KL is not a "
                          "per-response reward)")
    if s.kl_estimator == "exact" and s.policy not in policies.names(policies.FACTORISED):
        factorised = ", ".join(policies.names(policies.FACTORISED))
        raise ConfigError(f"algo.kl.estimator=exact: needs a factorised policy ({factorised}), "
                          f"not policy.kind={s.policy}")
    if text and s.mode == "exact":
        raise ConfigError("algo.mode=exact: not with task.kind=text (a real vocabulary's responses cannot be "
                          "enumerated); allowed: sampled")
    n = 0 if text else s.task.vocab ** s.task.length
    if s.mode == "exact" and n > MAX_RESPONSES:
        raise ConfigError(f"algo.mode=exact: enumerates task.vocab**task.length = {s.task.vocab}**{s.task.length} "
                          f"= {n} responses; at most {MAX_RESPONSES} allowed")


def task_kind(cfg: Mapping) -> str:
    """toy unless the task section says kind: text (every toy config predates the key)."""
    task = lookup(cfg, "task")
    return choice(cfg, "task.kind", TASK_KINDS) if isinstance(task, Mapping) and "kind" in task else "toy"


def _verdict_margin(cfg) -> float:
    if "verdict" not in cfg or "margin" not in cfg["verdict"]:
        return stats.DEFAULT_MARGIN
    return real(cfg, "verdict.margin", *POSITIVE)


def _static(cfg, kind: str, task: Task | None) -> Static:
    """The loop's own sections (algo, optim, steps), composed with the task's and the family's parts."""
    advantage = choice(cfg, "algo.advantage", tuple(algos.ADVANTAGES))
    mode = choice(cfg, "algo.mode", MODES)
    lo = 2 if advantage in algos.NEEDS_GROUPS and mode == "sampled" else 1
    group_size = integer(cfg, "algo.group_size", lo)
    steps = integer(cfg, "steps", 1)
    log_every = integer(cfg, "log_every", 1, steps)
    if steps % log_every:
        raise ConfigError(f"log_every={log_every}: must divide steps={steps}")
    return Static(
        task=task, policy=kind, advantage=advantage, group_size=group_size,
        std_eps=real(cfg, "algo.std_eps", *FINITE_NONNEG),
        kl_estimator=choice(cfg, "algo.kl.estimator", tuple(algos.KL_ESTIMATORS)),
        kl_placement=choice(cfg, "algo.kl.placement", algos.KL_PLACEMENTS),
        optimizer=choice(cfg, "optim.name", OPTIMIZERS), steps=steps, log_every=log_every,
        mode=mode, loss=choice(cfg, "algo.loss.kind", algos.LOSSES),
        aggregation=choice(cfg, "algo.loss.aggregation", algos.AGGREGATIONS),
        epochs=integer(cfg, "algo.loss.epochs", 1),
        batch_invariant=flag(cfg, "batch_invariant", False),
        decomposition=flag(cfg, "decomposition", False),
        **policies.family(kind).parse(cfg),
    )


def parse(cfg: Mapping) -> Experiment:
    """Validate a composed config (plain dict or DictConfig) and split it into static and numeric parts."""
    if is_list(kind := lookup(cfg, "policy.kind")):  # read before the keys are checked: say so here too
        raise ConfigError(f"policy.kind={list(kind)!r}: static keys cannot be swept in-process; "
                          "use -m (Hydra multirun) with comma-separated values")
    kind = choice(cfg, "policy.kind", policies.names())
    family = policies.family(kind)
    is_text = task_kind(cfg) == "text"
    sections = {"policy": set(family.keys), **family.sections}
    if family.needs_sft:  # the SFT stage's own section
        sections["policy.sft"] = sft_lib.KEYS
    _check_keys(cfg, {**_KEYS, **sections, **(_TEXT_KEYS if is_text else {})}, _LIST_KEYS | family.list_keys)
    if is_text and family.kind != policies.PRETRAINED:
        raise ConfigError(f"task.kind=text: needs policy.kind=pretrained (a checkpoint and its tokenizer), "
                          f"not policy.kind={kind}")
    if family.kind == policies.PRETRAINED and not is_text:
        raise ConfigError("policy.kind=pretrained: needs a text task (task=text); the toy task's tokens are "
                          "not a real model's vocabulary")
    text = text_task.parse(cfg) if is_text else None
    task = None if is_text else toy_task.parse(cfg)
    static = _static(cfg, kind, task)
    _check_algo(static, text)
    runtime = runtime_lib.parse(cfg)
    if static.lm is not None:
        static = replace(static, lm=replace(static.lm, mesh=runtime.mesh),
                         prompts_per_step=text.prompts_per_step, eval_prompts=text.eval_prompts)
    elif runtime.mesh != (1, 1, 1):
        raise ConfigError(f"runtime.mesh={dict(zip(('data', 'fsdp', 'tp'), runtime.mesh))}: shards a real "
                          f"model (policy=pretrained); policy={kind} shards its runs over runtime.cpu_devices instead")
    rm, rm_fit = reward_model.parse(cfg) if "reward_model" in cfg else (None, None)
    if rm is not None and family.kind == policies.PRETRAINED:
        raise ConfigError(f"reward_model={rm.family}: learned reward models train on the toy task; allowed with "
                          f"policy=pretrained: reward_model=none")
    if rm is not None and static.decomposition:
        raise ConfigError(f"decomposition=true: splits the update by the gold rewards phi and phi_prime; "
                          f"with reward_model={rm.family} the update follows one proxy. Allowed: reward_model=none")
    static = replace(static, reward_model=rm)
    seed, seeds = integer(cfg, "seed", 0), integer(cfg, "seeds", 1)
    optional = {**hparams_lib.OPTIONAL, **hparams_lib.TEXT_ABSENT} if is_text else hparams_lib.OPTIONAL
    hparams, axes, derived = hparams_lib.parse(cfg, optional)
    hparams = resolve_kappa_targets(task, hparams)  # a swept kappa: resolved again per point
    if rm is not None:  # an ensemble's objective: numbers per run, so its objectives share one program
        hparams |= reward_model.objective_hparams(cfg, rm.ensemble)
    entropy_coefs = axes.get(SWEEP_KEYS["entropy_coef"], (hparams["entropy_coef"],))
    static = replace(static, entropy_bonus=any(c != 0 for c in entropy_coefs))
    hparams_lib.check_kappa_axes(task, hparams, axes)
    record = choice(cfg, "record", RECORD_MODES) if "record" in cfg else "auto"
    exp = Experiment(static, hparams, tuple(range(seed, seed + seeds)), plots=flag(cfg, "plots", True),
                     runtime=runtime, chunk_steps=_chunk_steps(cfg, static.steps, static.log_every),
                     checkpoint_seconds=_checkpoint_seconds(cfg),
                     resume=flag(cfg, "resume", True), overwrite=flag(cfg, "overwrite", False),
                     axes=axes, derived=derived, sft=sft_lib.parse(cfg) if family.needs_sft else None,
                     analysis=choice(cfg, "analysis", ANALYSIS_MODES) if "analysis" in cfg else "basic",
                     text=text, reward_fit=rm_fit, verdict_margin=_verdict_margin(cfg))
    if record == "auto":
        record = "runs" if exp.n_runs * (static.steps // static.log_every + 1) <= RUN_ROWS_LIMIT else "points"
    logger = trackers.parse_logger(cfg)
    if logger and record == "points":
        raise ConfigError(f"logger={trackers.shown(logger)}: streams every run's rows, which record=points does not "
                          "keep; pass record=runs")
    return replace(exp, record=record, logger=logger)
