"""A learned reward model (the proxy), fit by Bradley-Terry maximum likelihood on preference pairs
labelled by the gold reward, then frozen for RL.

Gold is the task's r = w1*phi + w2*phi_prime. A pair is two responses to one prompt drawn from the
reference (the task's teacher: the distribution the SFT reference imitates); the gold labeller
prefers a over b with the Bradley-Terry probability sigmoid((g_a - g_b) / noise), noise = 0 meaning
always the gold winner (a gold tie: a fair coin). Pair i is drawn from key fold_in(data key, i),
so the first n pairs of any larger set are the same n pairs.

Families of growing capacity, all r(prompt, response) -> scalar:
  linear       one weight per (position, token): sum_t w[t, y_t] (the gold is of this form)
  mlp          one-hot (prompt, position x token) -> `layers` GELU layers of `hidden` -> scalar
  transformer  sim/policies/transformer.py's network reading [BOS_prompt, y_0..y_{L-1}], its output
               head of width 1 at the last position the score

An ensemble (reward_model.ensemble = k > 1, after Coste et al. 2023, "Reward Model Ensembles Help
Mitigate Overoptimization") is k members of one family: member 0 is the single model (all n pairs,
the usual init), members 1..k-1 are fit to bootstrap resamples of the same n pairs from their own
init, so the data budget is the single model's and even the convex linear family gets diverse
members. RL optimises one objective of the members' calibrated scores R_i: `mean` (mean_i R_i),
`worst` (min_i R_i) or `uncertainty` (mean_i R_i - lambda * var_i R_i, lambda =
reward_model.uncertainty_weight, var over members). The objective is a number per run, not a
shape: hparams rm_worst (1: the minimum, 0: mean - lambda * var) and rm_uncertainty_weight (lambda;
0 for `mean`), so every objective of one ensemble runs in one compiled program (objective_hparams).

After the fit the proxy is put on the gold's scale: a*r + b with the mean and standard deviation
of the gold over the pairs' own responses (a monotone map: it changes no preference, only the
step size of RL and where the proxy curve starts, so that gold and proxy can share an axis).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import optax

from sim.tasks import toy as task_lib
from sim.config_values import FINITE_NONNEG, POSITIVE, ConfigError, choice, integer, is_list, lookup, real
from sim.policies import autoregressive as ar, base as policy_base, transformer
from sim.policies.base import Policy, prompt_major, sample_inverse_cdf
from sim.tasks.toy import Task

# The modules besides this one whose code computes a fitted proxy (sim/stages/proxy.py's cache key)
SOURCES = (task_lib, transformer, ar, policy_base)

FAMILIES = ("none", "linear", "mlp", "transformer")
OBJECTIVES = ("mean", "worst", "uncertainty")  # of an ensemble's member scores
HELD_OUT_PAIRS = 4096  # fresh reference pairs on which the fitted proxy's agreement with gold is measured


@dataclass(frozen=True)
class RewardModel:
    """What the RL program needs of the proxy: its family and shapes (part of config.Static)."""
    family: str  # linear | mlp | transformer
    d_model: int = 0
    hidden: int = 0
    layers: int = 0
    heads: int = 0
    enumerate_max: int = 4096  # the logged E[proxy] by enumeration when vocab**length <= this
    eval_samples: int = 64  # else Monte Carlo responses per prompt (with a standard error)
    ensemble: int = 1  # members (1: a single model; the proxy then has no member axis)


@dataclass(frozen=True)
class Fit:
    """How every variant is fit (config.Experiment.reward_fit). Pairs, noise and the seed (of the
    pairs' data stream, the labeller's coins and the network init) are per sweep point: sweepable."""
    steps: int = 300  # full-batch Adam steps on the Bradley-Terry negative log-likelihood
    lr: float = 0.05
    l2: float = 1e-3  # weight decay on the parameters: hard labels (noise 0) separate, the MLE would not exist


# --- config --------------------------------------------------------------------------------------

KEYS = {"family", "pairs", "noise", "steps", "lr", "l2", "seed", "d_model", "hidden", "layers", "heads",
        "enumerate_max", "eval_samples", "ensemble", "objective", "uncertainty_weight"}


def parse(cfg) -> tuple[RewardModel | None, Fit | None]:
    """The `reward_model` section: (None, None) for family none (the gold reward, as before)."""
    family = choice(cfg, "reward_model.family", FAMILIES)
    if family == "none":
        return None, None
    for key, lo in (("reward_model.pairs", 2), ("reward_model.seed", 0)):  # integers, maybe sweep axes
        v = lookup(cfg, key)
        if any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in (v if is_list(v) else [v])):
            raise ConfigError(f"{key}={v!r}: must be an integer >= {lo} (or a list of them)")
    shape = {}
    if family in ("mlp", "transformer"):
        shape = {"hidden": integer(cfg, "reward_model.hidden", 1),
                 "layers": integer(cfg, "reward_model.layers", 1 if family == "transformer" else 0)}
    if family == "transformer":
        shape |= {"d_model": integer(cfg, "reward_model.d_model", 1), "heads": integer(cfg, "reward_model.heads", 1)}
        if shape["d_model"] % shape["heads"]:
            raise ConfigError(f"reward_model.heads={shape['heads']}: must divide reward_model.d_model={shape['d_model']}")
    objective_hparams(cfg, 1)  # validated whatever the ensemble size
    ensemble = integer(cfg, "reward_model.ensemble", 1)
    if ensemble > 1:
        shape |= {"ensemble": ensemble}
    rm = RewardModel(family, **shape, enumerate_max=integer(cfg, "reward_model.enumerate_max", 0),
                     eval_samples=integer(cfg, "reward_model.eval_samples", 2))
    fit = Fit(steps=integer(cfg, "reward_model.steps", 1), lr=real(cfg, "reward_model.lr", *POSITIVE),
              l2=real(cfg, "reward_model.l2", *FINITE_NONNEG))
    return rm, fit


def objective_hparams(cfg, ensemble: int) -> dict[str, float]:
    """An ensemble's objective as per-run numbers (hparams, not Static: the objectives of one ensemble
    share a compiled program): rm_worst 1.0 for `worst`, else 0.0; rm_uncertainty_weight lambda for
    `uncertainty`, else 0.0. A single model has none (it has no objective)."""
    objective = choice(cfg, "reward_model.objective", OBJECTIVES)
    weight = real(cfg, "reward_model.uncertainty_weight", *FINITE_NONNEG)
    if ensemble == 1:
        return {}
    return {"rm_worst": float(objective == "worst"), "rm_uncertainty_weight": weight if objective == "uncertainty" else 0.0}


# --- networks ------------------------------------------------------------------------------------

def _transformer_config(rm: RewardModel, task: Task) -> transformer.Config:
    return transformer.Config(vocab_in=ar.input_vocab(task), vocab_out=1, max_len=task.length + 1,
                              d_model=rm.d_model, layers=rm.layers, heads=rm.heads, d_ff=rm.hidden,
                              positions="learned")


def init(rm: RewardModel, task: Task, key: jax.Array) -> dict:
    """Random (mlp, transformer) or zero (linear) parameters of the raw score."""
    L, V, P = task.length, task.vocab, task.prompts
    if rm.family == "linear":
        return {"w_LxV": jnp.zeros((L, V))}
    if rm.family == "mlp":
        widths = [L * V + P] + [rm.hidden] * rm.layers + [1]
        keys = jax.random.split(key, len(widths) - 1)
        return {"layers": [{"w": ar.dense_init(k, a, (a, b)), "b": jnp.zeros(b)}
                           for k, a, b in zip(keys, widths[:-1], widths[1:])]}
    return transformer.init(key, _transformer_config(rm, task))


def raw_score_B(rm: RewardModel, task: Task, net: dict, prompts_B: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """The network's score of each (prompt, response), before calibration."""
    L = task.length
    if rm.family == "linear":
        return jnp.sum(net["w_LxV"][jnp.arange(L), tokens_BxL], -1)
    if rm.family == "mlp":
        x = jnp.concatenate([jax.nn.one_hot(tokens_BxL, task.vocab).reshape(tokens_BxL.shape[0], -1),
                             jax.nn.one_hot(prompts_B, task.prompts)], -1)
        for layer in net["layers"][:-1]:
            x = jax.nn.gelu(x @ layer["w"] + layer["b"])
        return (x @ net["layers"][-1]["w"] + net["layers"][-1]["b"])[:, 0]
    ids_BxT = jnp.concatenate([task.vocab + prompts_B[:, None], tokens_BxL], 1).astype(jnp.int32)
    return transformer.forward(net, _transformer_config(rm, task), ids_BxT)[:, -1, 0]


def member(rm: RewardModel) -> RewardModel:
    """One member of an ensemble: what each is fit and measured as."""
    return replace(rm, ensemble=1)


def member_scores_KxB(rm: RewardModel, task: Task, proxy: dict, prompts_B, tokens_BxL) -> jax.Array:
    """Each ensemble member's calibrated score (the proxy's leaves have a leading member axis)."""
    one = lambda p: p["scale"] * raw_score_B(rm, task, p["net"], prompts_B, tokens_BxL) + p["shift"]  # noqa: E731
    return jax.vmap(one)(proxy)


def combine_B(scores_KxB: jax.Array, worst: jax.Array, uncertainty_weight: jax.Array) -> jax.Array:
    """An ensemble's objective over its members' scores: the minimum where worst > 0, else
    mean - uncertainty_weight * var (the mean with weight 0: x - 0 * var is x exactly)."""
    pessimistic_B = jnp.mean(scores_KxB, 0) - uncertainty_weight * jnp.var(scores_KxB, 0)
    return jnp.where(worst > 0, jnp.min(scores_KxB, 0), pessimistic_B)


def score_B(rm: RewardModel, task: Task, proxy: dict, prompts_B: jax.Array, tokens_BxL: jax.Array,
            hp: dict | None = None) -> jax.Array:
    """The frozen proxy reward of each response: the calibrated score (an ensemble's: its objective,
    read from the run's hparams rm_worst and rm_uncertainty_weight)."""
    if rm.ensemble > 1:
        return combine_B(member_scores_KxB(rm, task, proxy, prompts_B, tokens_BxL), hp["rm_worst"],
                         hp["rm_uncertainty_weight"])
    return proxy["scale"] * raw_score_B(rm, task, proxy["net"], prompts_B, tokens_BxL) + proxy["shift"]


# --- preference data and the fit -----------------------------------------------------------------

def gold_B(task: Task, w_2: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    phi_B, phi_prime_B = task_lib.rewards_B(task, tokens_BxL)
    return w_2[0] * phi_B + w_2[1] * phi_prime_B


def sample_pairs(task: Task, ref_logits_PxLxV: jax.Array, n: int, key: jax.Array):
    """(prompts_N, a_NxL, b_NxL): n pairs of reference responses, prompts cycled; pair i from fold_in(key, i)."""
    prompts_N = jnp.arange(n) % task.prompts
    cdf_PxLxV = jnp.cumsum(jax.nn.softmax(ref_logits_PxLxV), -1)

    def one(i, p):
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        return (sample_inverse_cdf(ka, cdf_PxLxV[p]).astype(jnp.int32),
                sample_inverse_cdf(kb, cdf_PxLxV[p]).astype(jnp.int32))

    a_NxL, b_NxL = jax.vmap(one)(jnp.arange(n), prompts_N)
    return prompts_N, a_NxL, b_NxL


def prefer_prob_N(gold_a_N: jax.Array, gold_b_N: jax.Array, noise: jax.Array) -> jax.Array:
    """P(a preferred over b) of the Bradley-Terry labeller with temperature `noise` (0: the gold winner)."""
    diff = gold_a_N - gold_b_N
    hard = 0.5 + 0.5 * jnp.sign(diff)
    return jnp.where(noise > 0, jax.nn.sigmoid(diff / jnp.where(noise > 0, noise, 1.0)), hard)


def label_N(gold_a_N, gold_b_N, noise, key) -> jax.Array:
    """1.0 where the labeller prefers a (one coin per pair)."""
    return (jax.random.uniform(key, gold_a_N.shape) < prefer_prob_N(gold_a_N, gold_b_N, noise)).astype(jnp.float32)


def bt_loss(rm: RewardModel, task: Task, l2: float, net, prompts_N, a_NxL, b_NxL, prefer_a_N) -> jax.Array:
    """Bradley-Terry negative log-likelihood per pair, plus l2 * |params|^2."""
    margin_N = raw_score_B(rm, task, net, prompts_N, a_NxL) - raw_score_B(rm, task, net, prompts_N, b_NxL)
    nll = -jnp.mean(prefer_a_N * jax.nn.log_sigmoid(margin_N) + (1 - prefer_a_N) * jax.nn.log_sigmoid(-margin_N))
    return nll + l2 * sum(jnp.sum(x * x) for x in jax.tree.leaves(net))


def fit_chunk(rm: RewardModel, task: Task, fit: Fit, steps: int, carry, data):
    """`steps` full-batch Adam steps on the pairs: (new (net, opt_state), loss per step)."""
    opt = optax.adam(fit.lr)
    loss_fn = partial(bt_loss, rm, task, fit.l2)

    def one(carry, _):
        net, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(net, *data)
        updates, opt_state = opt.update(grads, opt_state, net)
        return (optax.apply_updates(net, updates), opt_state), loss

    return jax.lax.scan(one, carry, None, length=steps)


def seed_key(seed: jax.Array, stream: int) -> jax.Array:
    """Stream 0: training pairs; 1: held-out pairs; 2: network init; 3: ensemble members' resamples."""
    return jax.random.fold_in(jax.random.key(jnp.asarray(seed, jnp.int32)), stream)


def member_init_key(seed: jax.Array, member: jax.Array) -> jax.Array:
    """Member 0's init key is the single model's; member i > 0 folds i into it."""
    base = seed_key(seed, 2)
    data = jnp.where(member == 0, jax.random.key_data(base), jax.random.key_data(jax.random.fold_in(base, member)))
    return jax.random.wrap_key_data(data)


def member_rows_N(seed: jax.Array, member: jax.Array, n: int) -> jax.Array:
    """The pairs member `member` is fit on: all n in order for member 0, a bootstrap resample else."""
    drawn = jax.random.randint(jax.random.fold_in(seed_key(seed, 3), member), (n,), 0, n)
    return jnp.where(member == 0, jnp.arange(n), drawn)


def preference_data(task: Task, n: int, seed, noise, w_2, ref_logits_PxLxV: jax.Array, stream: int = 0):
    """n pairs from the reference labelled by the gold w_2 . (phi, phi_prime) with label noise:
    (prompts_N, a_NxL, b_NxL, prefer_a_N, gold_a_N, gold_b_N)."""
    data_key, coin_key = jax.random.split(seed_key(seed, stream))
    prompts_N, a_NxL, b_NxL = sample_pairs(task, ref_logits_PxLxV, n, data_key)
    gold_a_N, gold_b_N = gold_B(task, w_2, a_NxL), gold_B(task, w_2, b_NxL)
    return prompts_N, a_NxL, b_NxL, label_N(gold_a_N, gold_b_N, noise, coin_key), gold_a_N, gold_b_N


def calibrate(rm: RewardModel, task: Task, net, prompts_N, a_NxL, b_NxL, gold_a_N, gold_b_N) -> dict:
    """The proxy: net with (scale, shift) giving its scores the gold's mean and std over the pairs' responses."""
    prompts_2N = jnp.concatenate([prompts_N, prompts_N])
    raw_2N = raw_score_B(rm, task, net, prompts_2N, jnp.concatenate([a_NxL, b_NxL]))
    gold_2N = jnp.concatenate([gold_a_N, gold_b_N])
    scale = jnp.std(gold_2N) / jnp.maximum(jnp.std(raw_2N), 1e-12)
    return {"net": net, "scale": scale, "shift": jnp.mean(gold_2N) - scale * jnp.mean(raw_2N)}


def agreement(rm: RewardModel, task: Task, proxy: dict, prompts_N, a_NxL, b_NxL, gold_a_N, gold_b_N) -> jax.Array:
    """Fraction of pairs with a gold preference that the proxy orders the same way (ties in gold left out)."""
    d_proxy = score_B(rm, task, proxy, prompts_N, a_NxL) - score_B(rm, task, proxy, prompts_N, b_NxL)
    d_gold = gold_a_N - gold_b_N
    decided = d_gold != 0
    return jnp.sum(decided & (jnp.sign(d_proxy) == jnp.sign(d_gold))) / jnp.maximum(jnp.sum(decided), 1)


# --- expectations under a policy ------------------------------------------------------------------

def enumerates(task: Task, rm: RewardModel) -> bool:
    return task.vocab ** task.length <= rm.enumerate_max


def metric_names(rm: RewardModel, task: Task, logged: tuple[str, ...]) -> tuple[str, ...]:
    """What a run against a proxy logs besides `logged`: gold (= the logged `reward`), proxy, sqrt_kl
    and their standard errors where they are Monte Carlo."""
    names = ("gold", "proxy", "sqrt_kl")
    names += ("gold_se",) if "reward_se" in logged else ()
    return names + (() if enumerates(task, rm) else ("proxy_se",))


def expected_proxy(rm: RewardModel, task: Task, policy: Policy, params, proxy: dict, key: jax.Array,
                   hp: dict | None = None) -> dict:
    """E[proxy] under the policy averaged over prompts: by enumeration of all V**L responses, or Monte
    Carlo (rm.eval_samples per prompt, prompts as strata) with `proxy_se`."""
    P = task.prompts
    if enumerates(task, rm):
        all_NxL = task_lib.all_responses_NxL(task)
        prompts_B, tokens_BxL = prompt_major(P, all_NxL.shape[0]), jnp.tile(all_NxL, (P, 1))
        p_B = jnp.exp(jnp.sum(policy.log_probs(params, prompts_B, tokens_BxL), -1))
        return {"proxy": jnp.sum(p_B * score_B(rm, task, proxy, prompts_B, tokens_BxL, hp)) / P}
    S = rm.eval_samples
    prompts_B = prompt_major(P, S)
    v_PxS = score_B(rm, task, proxy, prompts_B, policy.sample(params, key, S), hp).reshape(P, S)
    return {"proxy": jnp.mean(v_PxS), "proxy_se": jnp.sqrt(jnp.mean(jnp.var(v_PxS, -1, ddof=1)) / (P * S))}


def logged(rm: RewardModel, task: Task, policy: Policy, params, proxy: dict, key: jax.Array, row: dict,
           hp: dict | None = None) -> dict:
    """The metrics of a run against a proxy at a logged step, from the row's own reward and KL."""
    out = {"gold": row["reward"], "sqrt_kl": jnp.sqrt(jnp.maximum(row["kl"], 0.0))}
    if "reward_se" in row:
        out["gold_se"] = row["reward_se"]
    return out | expected_proxy(rm, task, policy, params, proxy, jax.random.fold_in(key, 7), hp)
