"""A pretrained run's peak memory, estimated from its configuration and the checkpoint's
architecture alone (read from the file's header: nothing loaded), so that a run that cannot fit
is refused before it starts rather than killed an hour in.

    peak = runtime + base weights + every run's state + the largest transient of a block of runs

- runtime: the Python process with JAX, XLA's compiler and the compiled programs (measured on
  this project's machines: RUNTIME_BYTES);
- base: the frozen checkpoint in policy.dtype, one copy for every run (and, while it loads, the
  float32 copy it is read into);
- state: each run's trained weights and Adam's two moments in float32: the whole model under full
  fine-tuning, the adapters under LoRA (both sets of a position-split adapter);
- transient, per run, times the runs that compute at once (a block per device): the step's
  activations kept for the backward pass (each prompt once: P x T tokens, its G responses B x N)
  and the logits of the response tokens with their log-softmax and gradient, or the sampler's
  key/value cache before them; the gradient and the optimizer's update; or the evaluation's
  sampler and its two passes (policy and reference); or a logged step's batch statistics (the
  entropy of the whole next-token distribution at every response token), whichever is larger.

The coefficients (`_activation_floats`, ATTENTION_COPIES, LOGIT_COPIES, ...) were fitted to XLA's own memory analysis
of the compiled step (tests/lm/test_memory.py checks three configurations against it) and the
total to measured peak RSS (`python -m sim.bench lm`, docs/real-models.md).
"""
from __future__ import annotations

import os

from sim.lm import model
from sim.lm.config import LMConfig
from sim.lm.sampling import HEAD_CHUNK

RUNTIME_BYTES = 1.0 * 2**30  # python + jax + the compiler's working memory (tiny checkpoints: 0.7-0.9 GB RSS)
ATTENTION_COPIES = 5
LOGIT_COPIES = 3  # logits, their log-softmax and its gradient, float32, of every response token
EVAL_LOGIT_COPIES = 5  # the evaluation's policy and reference logits, their softmaxes and the KL's product


def param_count(cfg: LMConfig) -> int:
    D, F, V, L = cfg.d_model, cfg.ffn, cfg.vocab, cfg.layers
    HD, KD = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    block = D * HD + 2 * D * KD + HD * D + 3 * D * F + 2 * D + (HD + 2 * KD if cfg.attn_bias else 0)
    return L * block + V * D + D + (0 if cfg.tied_embeddings else D * V)


def lora_count(cfg: LMConfig, rank: int, targets: tuple[str, ...]) -> int:
    return cfg.layers * rank * sum(i + o for i, o in model.lora_shapes(cfg, targets).values())


def _activation_floats(cfg: LMConfig, remat: bool) -> int:
    """Floats per token and layer kept for the backward pass: the block's inputs, norms, q, k, v,
    attention output, and the MLP's four F-wide products (remat: the block's input alone)."""
    if remat:
        return cfg.d_model
    D, F = cfg.d_model, cfg.ffn
    HD, KD = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return 4 * D + 2 * HD + 2 * KD + 4 * F


def estimate(cfg: LMConfig, static, n_runs: int, prompt_slots: int, concurrent_runs: int = 1) -> dict[str, float]:
    """Bytes by component and their `total` for a run of `static` (config.Static with .lm) over
    n_runs runs, prompts left-padded to prompt_slots tokens, `concurrent_runs` runs computing at
    once (a LoRA block per device; 1 under full fine-tuning)."""
    lm, task = static.lm, static.task
    dtype_bytes = 2 if lm.dtype == "bfloat16" else 4
    n = param_count(cfg)
    trained = lm.lora_sets * lora_count(cfg, lm.lora_rank, lm.lora_targets) if lm.lora else n
    P = static.prompts_per_step or task.prompts
    G, N, T, V, L = static.group_size, task.length, prompt_slots, cfg.vocab, cfg.layers
    B, H, KD = P * G, cfg.heads, cfg.kv_heads * cfg.head_dim
    M = P * T + B * N  # tokens of one teacher-forced pass: each prompt once, then its responses
    # attention scores, their masked and concatenated copies and the probabilities, float32
    attention = ATTENTION_COPIES * H * (P * T * T + B * N * (T + N))
    per_layer = M * _activation_floats(cfg, lm.remat) + (0 if lm.remat else attention)
    # one block recomputed in the backward pass
    remat_layer = (M * _activation_floats(cfg, False) + attention) if lm.remat else 0
    # the loss's logits: chunks of HEAD_CHUNK tokens (sampling.group_token_log_probs), unless the entropy
    # bonus or the exact KL needs every token's whole distribution
    logit_rows = B * N if static.entropy_bonus or static.kl_estimator == "exact" else min(B * N, HEAD_CHUNK)
    training = 4 * (L * per_layer + remat_layer) + 4 * LOGIT_COPIES * logit_rows * V
    sampling = 2 * L * B * (T + N) * KD * dtype_bytes  # the key/value cache; freed before the loss
    step = max(training, sampling) + 3 * 4 * trained  # + the gradient, its clipped copy and the update
    E = (static.eval_prompts or task.prompts) * static.eval_samples
    evaluation = 4 * EVAL_LOGIT_COPIES * E * N * V + 2 * L * E * (T + N) * KD * dtype_bytes
    # a logged step's batch statistics: pi_old's entropy per token needs the whole distribution
    statistics = 4 * LOGIT_COPIES * B * N * V
    out = {"runtime": RUNTIME_BYTES, "base": n * dtype_bytes,
           "state": n_runs * 3 * 4 * trained,
           "step": concurrent_runs * step, "evaluation": concurrent_runs * evaluation,
           "statistics": concurrent_runs * statistics}
    out["transient"] = max(out["step"], out["evaluation"], out["statistics"])
    # while the checkpoint loads, its float32 read is alive instead of the runs' state and transients
    out["total"] = out["runtime"] + out["base"] + max(4 * n, out["state"] + out["transient"])
    out["load"] = 4 * n
    return out


def check_fits(cfg: LMConfig, static, n_runs: int, prompt_slots: int, concurrent_runs: int,
               limit: int | None = None) -> dict[str, float]:
    """The estimate, or a one-line ConfigError when it exceeds `limit` (default: this machine's
    memory), naming what it would take, its largest parts and the keys that shrink them."""
    from sim.config_values import ConfigError

    est = estimate(cfg, static, n_runs, prompt_slots, concurrent_runs)
    limit = machine_bytes() if limit is None else limit
    if est["total"] > limit:
        P = static.prompts_per_step or static.task.prompts
        parts = ", ".join(f"{k} {gib(est[k])}" for k in ("transient", "state", "base", "runtime"))
        raise ConfigError(
            f"policy=pretrained with {n_runs} run(s), {P} prompts x algo.group_size={static.group_size} x "
            f"task.new_tokens={static.task.length} per step, {concurrent_runs} run(s) at once: needs about "
            f"{gib(est['total'])} ({parts}) but this machine has {gib(limit)}; shrink task.prompts_per_step, "
            "algo.group_size, task.new_tokens, seeds or policy.lora.runs_per_block, or set policy.adapter=lora "
            "or policy.remat=true")
    return est


def machine_bytes() -> int:
    """This machine's physical memory (what the kernel will let a process grow to before OOM)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(x: float) -> str:
    return f"{x / 2**30:.1f} GB"
