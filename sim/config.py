"""Config schema and validation: a composed Hydra config -> (Static, hparams, seeds).

`Static` holds everything that changes shapes or code (one compiled program per Static);
`hparams` holds every numeric knob, one float per run, so a batch of runs with different values
shares one compiled program. Every invalid value raises `ConfigError` with one line naming the
key, the bad value and what is allowed, before anything is compiled.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from sim import policies
from sim.rl import algos
from sim.analysis import geometry, stats
from sim.reward_models import model as reward_model
from sim.tasks import text as text_task
from sim.output import trackers
from sim.config_values import (CLIP, EPS_HIGH, FINITE_NONNEG, KAPPA, POSITIVE, PROBABILITY, UNIT, ConfigError,
                               choice, flag, int_list, integer, is_list, lookup, real, sweep_axis)
from sim.policies.autoregressive import POSITIONS, Arch
from sim.policies.pretrained import ADAPTERS, DTYPES, LORA_SPLITS, LORA_TARGETS, Settings
from sim.policies.sft import SFT
from sim.tasks.toy import MAX_RESPONSES, SHAPES, RewardSpec, Task

OPTIMIZERS = ("adam", "sgd")
MODES = ("sampled", "exact")  # exact: the infinite-sample limit, by enumerating every response

# hparam name -> its key in the config. Every numeric knob a sweep may vary lives here.
HPARAM_KEYS: dict[str, str] = {
    "w_phi": "task.phi.weight",
    "w_phi_prime": "task.phi_prime.weight",
    "competence_phi": "task.phi.competence",
    "competence_phi_prime": "task.phi_prime.competence",
    "competence_spread": "task.competence_spread",
    "overlap": "policy.overlap",
    "beta": "algo.kl.beta",
    "eps_low": "algo.loss.eps_low",
    "eps_high": "algo.loss.eps_high",
    "entropy_coef": "algo.loss.entropy_coef",
    "lr": "optim.lr",
    "max_grad_norm": "optim.max_grad_norm",
    # A target KL-cost asymmetry per reward (NaN = none); when set it decides the competence.
    "kappa_phi_target": "task.phi.kappa",
    "kappa_phi_prime_target": "task.phi_prime.kappa",
    "kappa_delta": "task.kappa_delta",
}

# Settings that are not hparams themselves but set hparams per sweep point (`sweep.resolve`):
# relative_weight r sets w_phi_prime = r * w_phi, so r = 0 drops phi_prime from the reward.
DERIVED_KEYS: dict[str, str] = {
    "relative_weight": "task.phi_prime.relative_weight",
    # a learned reward model's preference pairs and label noise: they select the run's proxy (sim/stages/proxy.py)
    "rm_pairs": "reward_model.pairs",
    "rm_noise": "reward_model.noise",
    "rm_seed": "reward_model.seed",
}
# Every key that may be given as a list, an in-process sweep axis (name -> config key).
SWEEP_KEYS: dict[str, str] = {**HPARAM_KEYS, **DERIVED_KEYS}
# Static keys whose value is itself a list (they cannot be swept in-process).
_LIST_KEYS = {f"task.{r}.{k}" for r in ("phi", "phi_prime") for k in ("positions", "good_tokens")} | {"policy.lora.targets"}

# What a run keeps of its metrics: every run's rows, or per sweep point the mean and spread over
# seeds (reduced on device; each run keeps only its first and last rows, for the summary).
# 'auto' keeps every run's rows up to RUN_ROWS_LIMIT rows (runs x logged steps).
RECORD_MODES = ("auto", "runs", "points")

# The analysis after training (analysis.py): none; basic = the reference's KL-cost curves and kappa
# over all policies (the tilt), the orthogonality certificate and the quadrant table; full = also
# the least KL within the policy family (an optimisation per sweep point: seconds of compile and run).
ANALYSIS_MODES = ("none", "basic", "full")
RUN_ROWS_LIMIT = 1_000_000

# The keys each section accepts (anything else is a typo and is refused).
_REWARD_KEYS = {"positions", "good_tokens", "shape", "weight", "competence", "kappa"}
_KEYS: dict[str, set[str]] = {
    "": {"task", "policy", "algo", "optim", "seed", "seeds", "steps", "log_every", "plots", "record", "runtime",
         "analysis", "chunk_steps", "checkpoint_seconds", "resume", "overwrite", "reward_model",
         "batch_invariant", "logger", "verdict", "decomposition"},
    "verdict": {"margin"},
    "reward_model": reward_model.KEYS,
    "runtime": {"compilation_cache", "cpu_devices", "sft_cache", "mesh", "distributed"},
    "runtime.mesh": {"data", "fsdp", "tp"},
    "logger": set(trackers.KINDS), **{f"logger.{k}": keys for k, keys in trackers.KEYS.items()},
    "task": {"kind", "prompts", "length", "vocab", "seed", "competence_spread", "kappa_delta", "phi", "phi_prime"},
    "task.phi": _REWARD_KEYS,
    "task.phi_prime": _REWARD_KEYS | {"relative_weight"},
    "policy": set(),  # depends on policy.kind: see _POLICY_KEYS
    "policy.sft": {"steps", "batch", "lr", "seed"},
    "policy.eval": {"samples", "enumerate_max"},
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
# the toy's hparams a text task has no use for (the reference is the checkpoint): NaN, so a use shows
_TEXT_ABSENT = {"competence_phi": math.nan, "competence_phi_prime": math.nan, "competence_spread": 0.0,
                "kappa_phi_target": math.nan, "kappa_phi_prime_target": math.nan}
_NEURAL_KEYS = {"kind", "d_model", "hidden", "sft", "eval"}
_POLICY_KEYS: dict[str, set[str]] = {
    "tabular": {"kind"},
    "lowrank": {"kind", "width", "overlap"},
    "mlp": _NEURAL_KEYS | {"layers", "window"},
    "gru": _NEURAL_KEYS,
    "transformer": _NEURAL_KEYS | {"layers", "heads", "positions"},
    "pretrained": {"kind", "checkpoint", "dtype", "remat", "temperature", "top_k", "top_p", "eval", "adapter", "lora"},
}
_LORA_KEYS = {"rank", "alpha", "targets", "runs_per_block", "split"}


@dataclass(frozen=True)
class Static:
    task: Task | None  # None for a text task until its tokenizer is loaded (text_task.build gives it)
    policy: str
    width: int
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
    arch: Arch | None = None  # neural policies only
    eval_samples: int = 0  # neural: Monte Carlo responses per prompt for the logged expectations
    enumerate_max: int = 0  # neural: exact expectations by enumeration when vocab**length <= this
    # whether the loss carries the entropy bonus: parse() clears it when every run's entropy_coef is
    # 0, so the default runs skip the entropy and its gradient (~10% of a step in an XLA profile)
    entropy_bonus: bool = True
    lm: Settings | None = None  # policy.kind=pretrained: its settings (the checkpoint's architecture once loaded)
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


@dataclass(frozen=True)
class Runtime:
    compilation_cache: str | None = None
    cpu_devices: int | str = "auto"
    sft_cache: str | None = None  # where SFT references are cached (None: reference.default_cache_dir())
    # policy=pretrained: the device mesh its model is sharded over (sim/lm/sharding.py); (1, 1, 1): none
    mesh: tuple[int, int, int] = (1, 1, 1)  # data x fsdp x tp
    distributed: bool = False  # join JAX's multi-process runtime (jax.distributed.initialize) first


@dataclass(frozen=True)
class Experiment:
    static: Static
    hparams: dict[str, float]  # one value per HPARAM_KEYS name; a swept one holds its first value
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
    derived: dict[str, float] = field(default_factory=dict)  # DERIVED_KEYS name -> value, set and not swept
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


def _check_keys(cfg: Mapping, keys: dict[str, set[str]], section: str = "") -> None:
    for k, v in cfg.items():
        full = f"{section}.{k}" if section else str(k)
        if k not in keys[section]:
            raise ConfigError(f"{full}: unknown key; allowed keys here are {', '.join(sorted(keys[section]))}")
        if full in keys:
            if not isinstance(v, Mapping):
                raise ConfigError(f"{full}={v!r}: must be a section with keys {', '.join(sorted(keys[full]))}")
            _check_keys(v, keys, full)
        elif is_list(v) and full not in SWEEP_KEYS.values() and full not in _LIST_KEYS:
            raise ConfigError(f"{full}={list(v)!r}: static keys cannot be swept in-process; "
                              "use -m (Hydra multirun) with comma-separated values")


def _task(cfg) -> Task:
    length, vocab = integer(cfg, "task.length", 2), integer(cfg, "task.vocab", 4)
    specs = []
    for name in ("phi", "phi_prime"):
        key = f"task.{name}"
        specs.append(RewardSpec(
            positions=int_list(cfg, f"{key}.positions", 0, length),
            good_tokens=int_list(cfg, f"{key}.good_tokens", 0, vocab),
            shape=choice(cfg, f"{key}.shape", SHAPES),
        ))
        if len(specs[-1].good_tokens) >= vocab:
            raise ConfigError(f"{key}.good_tokens has {vocab} tokens: at least one of the task.vocab={vocab} "
                              "tokens must be bad")
    phi, phi_prime = specs
    if set(phi.positions) & set(phi_prime.positions):
        raise ConfigError(f"task.phi_prime.positions={list(phi_prime.positions)}: must be disjoint from "
                          f"task.phi.positions={list(phi.positions)}")
    if set(phi.good_tokens) & set(phi_prime.good_tokens):
        raise ConfigError(f"task.phi_prime.good_tokens={list(phi_prime.good_tokens)}: must be disjoint from "
                          f"task.phi.good_tokens={list(phi.good_tokens)} (raise task.vocab for more tokens)")
    return Task(prompts=integer(cfg, "task.prompts", 1), length=length, vocab=vocab,
                phi=phi, phi_prime=phi_prime, seed=integer(cfg, "task.seed", 0))


_HPARAM_RULES = {
    "w_phi": FINITE_NONNEG, "w_phi_prime": FINITE_NONNEG,
    "competence_phi": PROBABILITY, "competence_phi_prime": PROBABILITY,
    "competence_spread": FINITE_NONNEG, "overlap": UNIT, "beta": FINITE_NONNEG,
    "eps_low": UNIT, "eps_high": EPS_HIGH, "entropy_coef": FINITE_NONNEG,
    "lr": POSITIVE, "max_grad_norm": CLIP,
    "kappa_phi_target": KAPPA, "kappa_phi_prime_target": KAPPA, "kappa_delta": PROBABILITY,
    "relative_weight": FINITE_NONNEG,
    "rm_pairs": POSITIVE, "rm_noise": FINITE_NONNEG, "rm_seed": FINITE_NONNEG,
}
# Keys that may be absent (or null, for derived keys: not set), and what that means.
_OPTIONAL = {"overlap": 0.0, "relative_weight": None, "rm_pairs": None, "rm_noise": None,
             "rm_seed": None}  # overlap: families without features ignore it


def _hparams(cfg, optional: dict = _OPTIONAL) -> tuple[dict[str, float], dict[str, tuple[float, ...]], dict[str, float]]:
    """(hparams, axes, derived): scalars per hparam name, sweep axes per config key (in SWEEP_KEYS
    order), and the derived settings that are set to one value."""
    hparams, axes, derived = {}, {}, {}
    for name, key in SWEEP_KEYS.items():
        section, _, leaf = key.rpartition(".")
        absent = leaf not in lookup(cfg, section) or (name in DERIVED_KEYS and lookup(cfg, key) is None)
        if name in optional and absent:
            if name in HPARAM_KEYS:
                hparams[name] = optional[name]
            continue
        check, allowed = _HPARAM_RULES[name]
        v = lookup(cfg, key)
        if check is KAPPA[0] and v is None:
            hparams[name] = math.nan  # no target kappa: the competence stands
            continue
        if is_list(v):
            axes[key] = sweep_axis(key, v, check, allowed)
            value = axes[key][0]
        else:
            value = real(cfg, key, check, allowed)
        if name in HPARAM_KEYS:
            hparams[name] = value
        elif key not in axes:
            derived[name] = value
    rel = SWEEP_KEYS["relative_weight"]
    w2 = SWEEP_KEYS["w_phi_prime"]
    if w2 in axes and (rel in axes or "relative_weight" in derived):
        raise ConfigError(f"{w2}={list(axes[w2])}: cannot be swept while {rel} is set "
                          f"(it sets w2 = {rel} x task.phi.weight)")
    return hparams, axes, derived


def parse_runtime(cfg: Mapping) -> Runtime:
    rt = cfg.get("runtime") or {}
    if not isinstance(rt, Mapping):
        raise ConfigError(f"runtime={rt!r}: must be a section with keys {', '.join(sorted(_KEYS['runtime']))}")
    cache, devices = rt.get("compilation_cache"), rt.get("cpu_devices", "auto")
    if cache is not None and not isinstance(cache, str):
        raise ConfigError(f"runtime.compilation_cache={cache!r}: must be a directory path, or null for no cache")
    if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise ConfigError(f"runtime.cpu_devices={devices!r}: must be auto or an integer >= 1")
    sft_cache = rt.get("sft_cache")
    if sft_cache is not None and (not isinstance(sft_cache, str) or not sft_cache):
        raise ConfigError(f"runtime.sft_cache={sft_cache!r}: must be a directory path, or null for the default")
    mesh = rt.get("mesh") or {}
    if not isinstance(mesh, Mapping):
        raise ConfigError(f"runtime.mesh={mesh!r}: must be a section with keys data, fsdp, tp")
    degrees = tuple(integer({"runtime": rt}, f"runtime.mesh.{axis}", 1) if axis in mesh else 1
                    for axis in ("data", "fsdp", "tp"))
    distributed = rt.get("distributed", False)
    if not isinstance(distributed, bool):
        raise ConfigError(f"runtime.distributed={distributed!r}: must be true or false")
    return Runtime(cache, devices, sft_cache, degrees, distributed)


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
    if s.kl_estimator == "exact" and s.policy not in policies.FACTORISED:
        raise ConfigError(f"algo.kl.estimator=exact: needs a factorised policy ({', '.join(policies.FACTORISED)}), "
                          f"not policy.kind={s.policy}")
    if text and s.mode == "exact":
        raise ConfigError("algo.mode=exact: not with task.kind=text (a real vocabulary's responses cannot be "
                          "enumerated); allowed: sampled")
    n = 0 if text else s.task.vocab ** s.task.length
    if s.mode == "exact" and n > MAX_RESPONSES:
        raise ConfigError(f"algo.mode=exact: enumerates task.vocab**task.length = {s.task.vocab}**{s.task.length} "
                          f"= {n} responses; at most {MAX_RESPONSES} allowed")


def resolve_kappa_targets(task: Task, hp: dict[str, float]) -> dict[str, float]:
    """One sweep point's hparams with each reward's competence solved from its target kappa
    (where one is set). Idempotent; raises ConfigError naming the key when a target is unreachable."""
    out = dict(hp)
    for which, name in enumerate(("phi", "phi_prime")):
        target = hp[f"kappa_{name}_target"]
        if math.isnan(target):
            continue
        try:
            out[f"competence_{name}"] = geometry.competence_for_kappa(
                task, which, target, hp["kappa_delta"], hp["competence_spread"])
        except ValueError as e:
            spec = task.specs[which]
            raise ConfigError(f"task.{name}.kappa={target:g}: unreachable at task.kappa_delta={hp['kappa_delta']:g} "
                              f"for shape {spec.shape} over {len(spec.positions)} positions; {e}") from None
    return out


def _check_kappa_axes(task: Task, hparams: dict[str, float], axes: dict[str, tuple[float, ...]]) -> None:
    """Every combination of swept values that a target kappa depends on must be reachable: found
    here, before compilation, rather than when sweep.expand resolves the points."""
    names = ("kappa_phi_target", "kappa_phi_prime_target", "kappa_delta", "competence_spread")
    keys = [HPARAM_KEYS[n] for n in names if HPARAM_KEYS[n] in axes]
    name_of = {HPARAM_KEYS[n]: n for n in names}
    for combo in itertools.product(*(axes[k] for k in keys)):
        resolve_kappa_targets(task, {**hparams, **{name_of[k]: v for k, v in zip(keys, combo)}})


def _arch(cfg, kind: str) -> Arch:
    fields = {"kind": kind, "d_model": integer(cfg, "policy.d_model", 1), "hidden": integer(cfg, "policy.hidden", 1)}
    if kind in ("mlp", "transformer"):
        fields["layers"] = integer(cfg, "policy.layers", 1)
    if kind == "mlp":
        fields["window"] = integer(cfg, "policy.window", 1)
    if kind == "transformer":
        heads = fields["heads"] = integer(cfg, "policy.heads", 1)
        fields["positions"] = choice(cfg, "policy.positions", POSITIONS)
        if fields["d_model"] % heads or (fields["positions"] == "rope" and fields["d_model"] // heads % 2):
            raise ConfigError(f"policy.heads={heads}: must divide policy.d_model={fields['d_model']}"
                              + (" into heads of even width (rope)" if fields["positions"] == "rope" else ""))
    return Arch(**fields)


def _sft(cfg) -> SFT:
    return SFT(steps=integer(cfg, "policy.sft.steps", 1), batch=integer(cfg, "policy.sft.batch", 1),
               lr=real(cfg, "policy.sft.lr", *POSITIVE), seed=integer(cfg, "policy.sft.seed", 0))


def _pretrained(cfg) -> Settings:
    """policy=pretrained's settings. The checkpoint is only located here (a missing file or an
    unregistered name is a one-line error before anything runs); it is read at the edge
    (sim/lm_setup.py)."""
    from sim.lm import weights as checkpoint  # here, not at the top: only this family needs gguf and safetensors

    temperature = real(cfg, "policy.temperature", *POSITIVE)
    top_p = real(cfg, "policy.top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
    remat = lookup(cfg, "policy.remat")
    if not isinstance(remat, bool):
        raise ConfigError(f"policy.remat={remat!r}: must be true or false")
    dtype, top_k = choice(cfg, "policy.dtype", DTYPES), integer(cfg, "policy.top_k", 0)
    source = lookup(cfg, "policy.checkpoint")  # last: the other keys' errors do not depend on what is installed
    if not isinstance(source, str) or not source:
        raise ConfigError(f"policy.checkpoint={source!r}: must be a registered name "
                          f"({', '.join(checkpoint.REGISTRY)}), a Hugging Face directory or a .gguf file")
    try:
        checkpoint.resolve(source)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"policy.checkpoint={source}: {e}") from None
    return Settings(checkpoint=source, dtype=dtype, remat=remat, temperature=temperature, top_k=top_k, top_p=top_p,
                    **_adapter(cfg))


def _adapter(cfg) -> dict:
    """policy.adapter and, for lora, policy.lora's rank, alpha, targets, runs_per_block and split."""
    adapter = choice(cfg, "policy.adapter", ADAPTERS) if "adapter" in lookup(cfg, "policy") else "none"
    if adapter == "none":
        return {"adapter": "none"}
    targets = lookup(cfg, "policy.lora.targets")
    if isinstance(targets, str) or not is_list(targets) or not targets or any(t not in LORA_TARGETS for t in targets) \
            or len(set(targets)) != len(targets):
        raise ConfigError(f"policy.lora.targets={targets if isinstance(targets, str) else list(targets or [])!r}: must be "
                          f"a non-empty list of distinct matrices from {', '.join(LORA_TARGETS)}")
    return {"adapter": adapter, "lora_rank": integer(cfg, "policy.lora.rank", 1),
            "lora_alpha": real(cfg, "policy.lora.alpha", *POSITIVE), "lora_targets": tuple(targets),
            "runs_per_block": integer(cfg, "policy.lora.runs_per_block", 1),
            "lora_split": choice(cfg, "policy.lora.split", LORA_SPLITS) if "split" in lookup(cfg, "policy.lora") else "none"}


def task_kind(cfg: Mapping) -> str:
    """toy unless the task section says kind: text (every toy config predates the key)."""
    task = lookup(cfg, "task")
    return choice(cfg, "task.kind", TASK_KINDS) if isinstance(task, Mapping) and "kind" in task else "toy"


def _verdict_margin(cfg) -> float:
    if "verdict" not in cfg or "margin" not in cfg["verdict"]:
        return stats.DEFAULT_MARGIN
    return real(cfg, "verdict.margin", *POSITIVE)


def parse(cfg: Mapping) -> Experiment:
    """Validate a composed config (plain dict or DictConfig) and split it into static and numeric parts."""
    if is_list(kind := lookup(cfg, "policy.kind")):  # read before the keys are checked: say so here too
        raise ConfigError(f"policy.kind={list(kind)!r}: static keys cannot be swept in-process; "
                          "use -m (Hydra multirun) with comma-separated values")
    kind = choice(cfg, "policy.kind", policies.KINDS)
    is_text = task_kind(cfg) == "text"
    _check_keys(cfg, {**_KEYS, "policy": _POLICY_KEYS[kind], **(_TEXT_KEYS if is_text else {}),
                      **({"policy.lora": _LORA_KEYS} if kind == "pretrained" else {})})
    if is_text and kind != "pretrained":
        raise ConfigError(f"task.kind=text: needs policy.kind=pretrained (a checkpoint and its tokenizer), "
                          f"not policy.kind={kind}")
    text = text_task.parse(cfg) if is_text else None
    task = None if is_text else _task(cfg)
    neural = kind in policies.NEURAL
    advantage = choice(cfg, "algo.advantage", tuple(algos.ADVANTAGES))
    mode = choice(cfg, "algo.mode", MODES)
    lo = 2 if advantage in algos.NEEDS_GROUPS and mode == "sampled" else 1
    group_size = integer(cfg, "algo.group_size", lo)
    steps = integer(cfg, "steps", 1)
    log_every = integer(cfg, "log_every", 1, steps)
    if steps % log_every:
        raise ConfigError(f"log_every={log_every}: must divide steps={steps}")
    static = Static(
        task=task, policy=kind, width=integer(cfg, "policy.width", 1) if kind == "lowrank" else 0,
        advantage=advantage, group_size=group_size,
        std_eps=real(cfg, "algo.std_eps", *FINITE_NONNEG),
        kl_estimator=choice(cfg, "algo.kl.estimator", tuple(algos.KL_ESTIMATORS)),
        kl_placement=choice(cfg, "algo.kl.placement", algos.KL_PLACEMENTS),
        optimizer=choice(cfg, "optim.name", OPTIMIZERS), steps=steps, log_every=log_every,
        mode=mode, loss=choice(cfg, "algo.loss.kind", algos.LOSSES),
        aggregation=choice(cfg, "algo.loss.aggregation", algos.AGGREGATIONS),
        epochs=integer(cfg, "algo.loss.epochs", 1),
        arch=_arch(cfg, kind) if neural else None,
        eval_samples=integer(cfg, "policy.eval.samples", 2) if neural else 0,
        enumerate_max=integer(cfg, "policy.eval.enumerate_max", 0) if neural else 0,
        batch_invariant=flag(cfg, "batch_invariant", False),
        decomposition=flag(cfg, "decomposition", False),
    )
    _check_algo(static, text)
    runtime = parse_runtime(cfg)
    if kind == "pretrained":
        if not is_text:
            raise ConfigError("policy.kind=pretrained: needs a text task (task=text); the toy task's tokens are "
                              "not a real model's vocabulary")
        static = replace(static, lm=replace(_pretrained(cfg), mesh=runtime.mesh),
                         eval_samples=integer(cfg, "policy.eval.samples", 2),
                         prompts_per_step=text.prompts_per_step, eval_prompts=text.eval_prompts)
    elif runtime.mesh != (1, 1, 1):
        raise ConfigError(f"runtime.mesh={dict(zip(('data', 'fsdp', 'tp'), runtime.mesh))}: shards a real "
                          f"model (policy=pretrained); policy={kind} shards its runs over runtime.cpu_devices instead")
    rm, rm_fit = reward_model.parse(cfg) if "reward_model" in cfg else (None, None)
    if rm is not None and kind == "pretrained":
        raise ConfigError(f"reward_model={rm.family}: learned reward models train on the toy task; allowed with "
                          f"policy=pretrained: reward_model=none")
    if rm is not None and static.decomposition:
        raise ConfigError(f"decomposition=true: splits the update by the gold rewards phi and phi_prime; "
                          f"with reward_model={rm.family} the update follows one proxy. Allowed: reward_model=none")
    static = replace(static, reward_model=rm)
    seed, seeds = integer(cfg, "seed", 0), integer(cfg, "seeds", 1)
    hparams, axes, derived = _hparams(cfg, {**_OPTIONAL, **_TEXT_ABSENT} if is_text else _OPTIONAL)
    hparams = resolve_kappa_targets(task, hparams)  # a swept kappa: resolved again per point
    if rm is not None:  # an ensemble's objective: numbers per run, so its objectives share one program
        hparams |= reward_model.objective_hparams(cfg, rm.ensemble)
    entropy_coefs = axes.get(SWEEP_KEYS["entropy_coef"], (hparams["entropy_coef"],))
    static = replace(static, entropy_bonus=any(c != 0 for c in entropy_coefs))
    _check_kappa_axes(task, hparams, axes)
    record = choice(cfg, "record", RECORD_MODES) if "record" in cfg else "auto"
    exp = Experiment(static, hparams, tuple(range(seed, seed + seeds)), plots=flag(cfg, "plots", True),
                     runtime=runtime, chunk_steps=_chunk_steps(cfg, steps, log_every),
                     checkpoint_seconds=_checkpoint_seconds(cfg),
                     resume=flag(cfg, "resume", True), overwrite=flag(cfg, "overwrite", False),
                     axes=axes, derived=derived, sft=_sft(cfg) if neural else None,
                     analysis=choice(cfg, "analysis", ANALYSIS_MODES) if "analysis" in cfg else "basic",
                     text=text, reward_fit=rm_fit, verdict_margin=_verdict_margin(cfg))
    if record == "auto":
        record = "runs" if exp.n_runs * (steps // log_every + 1) <= RUN_ROWS_LIMIT else "points"
    logger = trackers.parse_logger(cfg)
    if logger and record == "points":
        raise ConfigError(f"logger={trackers.shown(logger)}: streams every run's rows, which record=points does not "
                          "keep; pass record=runs")
    return replace(exp, record=record, logger=logger)
