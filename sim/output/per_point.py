"""After a run: per sweep point, the KL geometry of the reference (C(delta) and kappa, over all
policies and within the policy family), the orthogonality certificate, and the blog's quadrant
table over training. Pure (arrays in, plain dicts and arrays out); experiment.py writes them.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sim.analysis import diagnostics, geometry, stats
from sim.policies import estimates, sft
from sim.output import results
from sim.tasks import toy as task_lib
from sim.config import Experiment, Static
from sim.rl.sweep import Batch
from sim.tasks.toy import REWARDS
from sim.rl.runs import build_policy
from sim.rl.train import TrainResult

CURVE_DELTAS = np.array([0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3])  # |delta| grid of the KL-cost figure


def point_hparams(batch: Batch, point: int) -> tuple[int, dict[str, jnp.ndarray]]:
    """The first run of a sweep point and its hparams (every run of a point shares them)."""
    run = int(np.flatnonzero(batch.points_R == point)[0])
    return run, {k: jnp.float32(v[run]) for k, v in batch.hparams_R.items()}


def _reference_logits(static: Static, hp: dict) -> jax.Array:
    return task_lib.reference_logits_PxLxV(static.task, (hp["competence_phi"], hp["competence_phi_prime"]),
                                           hp["competence_spread"])


def _tilt_curves(kind: str, values_J: jax.Array, pmf_PxJ: jax.Array, delta_D: jax.Array) -> dict:
    """{kind_gain, kind_loss}: C(+delta) and C(-delta) over all policies, on the delta grid."""
    D = delta_D.size
    cost_2D = jax.vmap(lambda d: geometry.kl_cost(values_J, pmf_PxJ, d))(jnp.concatenate([delta_D, -delta_D]))
    return {f"{kind}_gain": cost_2D[:D], f"{kind}_loss": cost_2D[D:]}


@functools.lru_cache(maxsize=8)
def _point_arrays(static: Static, family: bool):
    """One jitted program for everything a sweep point's analysis computes:
    (hp, policy_keys_R, params_R, delta_D) -> (curves, joints).

    curves: reward -> {mean, tilt_gain, tilt_loss[, family_gain, family_loss]} (C over the delta
    grid, over all policies and, with `family`, within the family of the point's first run);
    joints: (values_J, values_K, reference joint JxK, final joints RxJxK) of (phi, phi_prime)."""

    def arrays(hp, policy_keys_R, params_R, delta_D):
        D = delta_D.size
        signed_2D = jnp.concatenate([delta_D, -delta_D])
        ref_logits_PxLxV = _reference_logits(static, hp)
        if family:  # both rewards in one vmapped family solve
            which_4D = jnp.repeat(jnp.arange(2), 2 * D)
            family_4D, _ = geometry.family_kl_cost(static.task, which_4D, build_policy(static, hp, policy_keys_R[0]),
                                                   jnp.tile(signed_2D, 2))
        curves = {}
        for which, (name, (values_J, pmf_PxJ)) in enumerate(zip(REWARDS, geometry.policy_pmfs(static.task,
                                                                                               ref_logits_PxLxV))):
            curves[name] = {"mean": jnp.mean(pmf_PxJ @ values_J)} | _tilt_curves("tilt", values_J, pmf_PxJ, delta_D)
            if family:
                family_2D = family_4D[2 * D * which: 2 * D * (which + 1)]
                curves[name] |= {"family_gain": family_2D[:D], "family_loss": family_2D[D:]}

        def final(policy_key, params):
            return diagnostics.joint_pmf(static.task, build_policy(static, hp, policy_key).marginals(params))[2]

        values_J, values_K, ref_JxK = diagnostics.joint_pmf(static.task, ref_logits_PxLxV)
        return curves, (values_J, values_K, ref_JxK, jax.vmap(final)(policy_keys_R, params_R))

    return jax.jit(arrays)


@functools.lru_cache(maxsize=8)
def _network_point_arrays(static: Static):
    """`_point_arrays` for a neural policy: (hp, policy_keys_R, params_R, ref_R, delta_D) -> the
    same (curves, joints). The reference is the SFT-trained network of the point's first run.
    Tilt curves come from each reward's per-position good-token probabilities under it (as the
    logged kappa: positions taken as independent given the prompt, which the SFT reference of a
    factorised teacher nearly is); joints are exact by enumeration or the frequencies of
    sft.MEASURE_SAMPLES responses per prompt. No family curves, whatever exp.analysis says: the
    family solver needs a factorised policy. The teacher's tilt curves come too (`teacher_*`): a
    kappa target is solved on the teacher, but the runs start from the SFT reference, whose kappa
    is the one that counts."""
    key = jax.random.key(0)  # fixed: the same responses for every point and run count
    n, limit = sft.MEASURE_SAMPLES, sft.MEASURE_ENUMERATE_MAX

    def arrays(hp, policy_keys_R, params_R, ref_R, delta_D):
        ref = jax.tree.map(lambda x: x[0], ref_R)
        policy = build_policy(static, hp, policy_keys_R[0], ref)
        _, good_prob_PxK = estimates.sequence_metrics(static.task, policy, ref, ref, (1.0, 1.0), key, n, limit)
        curves = {}
        for name, spec, g_PxK in zip(REWARDS, static.task.specs, good_prob_PxK):
            values_J, pmf_PxJ = geometry.reward_pmf_PxJ(spec, g_PxK)
            curves[name] = {"mean": jnp.mean(pmf_PxJ @ values_J)} | _tilt_curves("tilt", values_J, pmf_PxJ, delta_D)
        # the teacher's, for comparison: the kappa a config's target (task.<reward>.kappa) was solved on
        for name, (values_J, pmf_PxJ) in zip(REWARDS, geometry.policy_pmfs(static.task, _reference_logits(static, hp))):
            curves[name] |= _tilt_curves("teacher", values_J, pmf_PxJ, delta_D)
        joint = lambda params: estimates.joint_count_pmf(static.task, policy, params, key, n, limit)
        values_J, values_K = (task_lib.reward_of_count_J(spec) for spec in static.task.specs)
        return curves, (values_J, values_K, joint(ref), jax.vmap(joint)(params_R))

    return jax.jit(arrays)


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _nan_mean(x: np.ndarray) -> float | None:
    """Mean of the non-NaN entries; None if there are none (a quadrant no sampled response fell in),
    without the RuntimeWarning np.nanmean prints for that."""
    x = x[~np.isnan(x)]
    return float(np.mean(x)) if x.size else None


def geometry_summary(hp: dict, curves: dict, delta_D: np.ndarray, at: int, seed: int) -> dict:
    """Each reward's competence, E_ref[R], and C(+-delta) and kappa at delta = delta_D[at], over
    all policies (tilt) and, where computed, within the policy family (of the run with this seed).
    For a neural policy the reference is the SFT-trained network (its E_ref[R] is the measured
    competence of a mean-shaped reward) and `teacher` is the tilt of the factorised teacher it was
    trained on."""
    out = {"delta": float(delta_D[at])} | ({"family_seed": seed} if "family_gain" in curves[REWARDS[0]] else {})
    for name in REWARDS:
        c = curves[name]
        out[name] = {"competence": float(hp[f"competence_{name}"]), "mean": float(c["mean"])}
        for kind in [k for k in ("tilt", "family", "teacher") if f"{k}_gain" in c]:
            gain, loss = float(c[f"{kind}_gain"][at]), float(c[f"{kind}_loss"][at])
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name][kind] = {"cost_gain": _finite(gain), "cost_loss": _finite(loss),
                                   "kappa": _finite(np.float64(gain) / loss)}
    return out


def orthogonality_summary(values_J, values_K, ref_JxK, final_RxJxK) -> dict:
    """Correlation and joint support of (phi, phi_prime) under the reference and the final policies
    (final: None when there is no healthy run)."""
    reference = diagnostics.orthogonality(values_J, values_K, ref_JxK)
    finals = [diagnostics.orthogonality(values_J, values_K, j) for j in np.asarray(final_RxJxK)]
    if not finals:
        return {"reference": reference, "final": None}
    corr, lo, hi = results.mean_ci95(np.array([f["corr"] for f in finals]))
    return {"reference": reference,
            "final": {"corr_mean": corr, "corr_ci95": [_finite(lo), _finite(hi)],
                      "support_pairs_min": min(f["support_pairs"] for f in finals),
                      "value_pairs": finals[0]["value_pairs"],
                      "min_pair_prob": min(f["min_pair_prob"] for f in finals)}}


def untied_gap_TxN(metrics: dict[str, np.ndarray], runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p(ud) - p(uu) among the untied samples of each batch, the share of tied samples), batch rows
    x runs. A tie (a reward at its group's mean) is neither up nor down (diagnostics.TIED); the gap
    is NaN in a batch with no untied sample."""
    frac = lambda c: metrics[f"quad_frac_{c}"][1:][:, runs]  # noqa: E731; row 0 is the reference, before any batch
    untied_TxN = sum(frac(q) for q in diagnostics.QUADRANTS)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap_TxN = np.where(untied_TxN > 0, (frac("ud") - frac("uu")) / untied_TxN, np.nan)
    return gap_TxN, 1.0 - untied_TxN


def _run_means_N(x_TxN: np.ndarray) -> np.ndarray:
    """Each run's mean over its non-NaN rows; runs with none are left out (no warning)."""
    ok_TxN = ~np.isnan(x_TxN)
    keep = ok_TxN.any(0)
    return np.where(ok_TxN, x_TxN, 0.0).sum(0)[keep] / ok_TxN.sum(0)[keep]


def quadrant_summaries(metrics: dict[str, np.ndarray], runs_P: list[np.ndarray],
                       margin: float = stats.DEFAULT_MARGIN) -> list[dict | None]:
    """The blog's Table 1 over training (batch rows only) of each point's (healthy) runs: mean
    fraction and mean advantage per cell (ties in their own cells), and the blog's inequality
    p(ud) > p(uu) among untied samples with the share of ties beside it. Its verdict (stats.py:
    up = holds, down = reversed, equivalent within +-margin, inconclusive) is Holm-corrected over
    the points. None for a point without runs."""
    gaps = [untied_gap_TxN(metrics, runs) if runs.size else None for runs in runs_P]
    tests = iter(stats.family_verdicts([_run_means_N(g[0]) for g in gaps if g is not None], margin))
    out = []
    for runs, gap in zip(runs_P, gaps):
        if gap is None:
            out.append(None)
            continue
        gap_TxN, tie_TxN = gap
        cells = {c: {"frac": float(np.mean(metrics[f"quad_frac_{c}"][1:][:, runs])),
                     "adv": _nan_mean(metrics[f"quad_adv_{c}"][1:][:, runs])} for c in diagnostics.CELLS}
        gap_N = _run_means_N(gap_TxN)  # empty when every sample was tied (a deterministic policy)
        mean, lo, hi = results.mean_ci95(gap_N) if gap_N.size else (float("nan"),) * 3
        test = next(tests)
        verdict = test.pop("verdict")
        row_means_T = [_nan_mean(g) for g in gap_TxN]  # over runs, per logged batch
        tied_phi_prime = sum(metrics[f"quad_frac_{c}"][1:][:, runs] for c in ("ut", "dt", "tt"))
        out.append({"cells": cells,
                    "blog_inequality": {
                        "among": "untied samples", "ud_minus_uu_mean": _finite(mean),
                        "ud_minus_uu_ci95": [_finite(lo), _finite(hi)],
                        "tie_share": float(np.mean(tie_TxN)), "tie_share_phi_prime": float(np.mean(tied_phi_prime)),
                        "verdict": verdict, "test": test, "holds": verdict == "up",
                        "holds_at_fraction_of_logged_steps": float(np.mean([m is not None and m > 0
                                                                            for m in row_means_T])),
                        "ud_minus_uu_first": row_means_T[0], "ud_minus_uu_last": row_means_T[-1]}})
    return out


def quadrant_summary(metrics: dict[str, np.ndarray], runs: np.ndarray,
                     margin: float = stats.DEFAULT_MARGIN) -> dict | None:
    """quadrant_summaries of one point (a family of one)."""
    return quadrant_summaries(metrics, [runs], margin)[0]


MIN_KAPPA_SAMPLES = 3  # samples per prompt below which the sampled tilt's kappa says nothing


def sampled_geometry(ref_rewards: tuple[np.ndarray, np.ndarray], delta: float, key: jax.Array) -> dict:
    """kappa(+-delta) of a reference known only by samples (a pretrained checkpoint): the tilt over
    its sampled rewards (r_PxS per reward), with a bootstrap standard error (geometry.bootstrap_kappa);
    E_ref[R] with its standard error; and the correlation of phi and phi_prime over the samples
    with their joint support (the orthogonality the blog assumes, measured)."""
    S = int(ref_rewards[0].shape[1])
    out = {"delta": float(delta), "samples_per_prompt": S}
    if S < MIN_KAPPA_SAMPLES:
        # two equally weighted values per prompt: every prompt's tilt is a fair coin's, whose KL cost is
        # even in the shift, so kappa would be 1 whatever the reference; report none rather than that
        out["kappa_note"] = (f"no kappa from {S} sample(s) per prompt (it would be 1 by construction); "
                             f"raise policy.eval.samples or seeds to at least {MIN_KAPPA_SAMPLES} in all")
    for which, (name, r_PxS) in enumerate(zip(REWARDS, ref_rewards)):
        kappa = se = np.nan
        if S >= MIN_KAPPA_SAMPLES:
            kappa, se = geometry.bootstrap_kappa(jax.random.fold_in(key, which), jnp.asarray(r_PxS, jnp.float32),
                                                 jnp.float32(delta))
        out[name] = {"mean": float(np.mean(r_PxS)), "mean_se": float(np.std(r_PxS, ddof=1) / np.sqrt(r_PxS.size)),
                     "tilt": {"kappa": _finite(kappa), "kappa_se": _finite(se)}}
    phi_N, phi_prime_N = (np.asarray(r, np.float64).ravel() for r in ref_rewards)
    corr = np.corrcoef(phi_N, phi_prime_N)[0, 1] if np.std(phi_N) > 0 and np.std(phi_prime_N) > 0 else np.nan
    pairs = {(a, b) for a, b in zip(phi_N.tolist(), phi_prime_N.tolist())}
    ortho = {"corr": _finite(corr), "samples": int(phi_N.size), "support_pairs": len(pairs),
             "value_pairs": len(set(phi_N.tolist())) * len(set(phi_prime_N.tolist()))}
    return {"geometry": out, "orthogonality": {"reference": ortho, "final": None}}


def sampled_report(batch: Batch, result: TrainResult, ref_rewards: tuple[np.ndarray, np.ndarray],
                   margin: float = stats.DEFAULT_MARGIN) -> list[dict]:
    """`report` for a pretrained checkpoint: per sweep point the reference's sampled kappa and
    orthogonality (the same checkpoint for every point; only kappa_delta may differ) and the
    quadrant table over training. The toy's factorised analyses (KL-cost curves over a pmf,
    orthogonality by enumeration, the family solve) do not apply and are not computed."""
    quadrants = quadrant_summaries(result.metrics, healthy_runs_P(batch, result), margin)
    points = []
    for p in range(len(batch.point_values)):
        run, hp = point_hparams(batch, p)
        points.append(sampled_geometry(ref_rewards, float(hp["kappa_delta"]), jax.random.key(0))
                      | {"quadrants": quadrants[p]})
    return points


def healthy_runs_P(batch: Batch, result: TrainResult) -> list[np.ndarray]:
    """Each sweep point's runs that did not diverge (diverged runs are left out of every statistic)."""
    return [r[result.diverged_at_step_R[r] < 0] for r in (np.flatnonzero(batch.points_R == p)
                                                          for p in range(len(batch.point_values)))]


def report(exp: Experiment, batch: Batch, result: TrainResult) -> tuple[list[dict], dict]:
    """(one dict per sweep point for summary.json, the arrays the figures of point 0 need), as much
    as exp.analysis asks for (see config.ANALYSIS_MODES); nothing for 'none'."""
    if exp.analysis == "none":
        return [{} for _ in batch.point_values], {}
    delta_D = np.unique(np.append(CURVE_DELTAS, batch.hparams_R["kappa_delta"])).astype(np.float32)
    points, figures = [], {}
    quadrants = quadrant_summaries(result.metrics, healthy_runs_P(batch, result), exp.verdict_margin)
    for p in range(len(batch.point_values)):
        run, hp = point_hparams(batch, p)
        runs = np.flatnonzero(batch.points_R == p)
        healthy = result.diverged_at_step_R[runs] < 0  # diverged runs are left out, as in every statistic
        at = int(np.flatnonzero(delta_D == batch.hparams_R["kappa_delta"][run])[0])
        state = jax.tree.map(lambda x: x[runs], result.state)  # every run of the point: one compiled shape
        if exp.static.arch is None:
            arrays = _point_arrays(exp.static, exp.analysis == "full")(hp, state.policy_key, state.params, delta_D)
        else:
            arrays = _network_point_arrays(exp.static)(hp, state.policy_key, state.params, state.ref, delta_D)
        curves, joints = jax.tree.map(np.asarray, arrays)
        joints = (*joints[:3], joints[3][healthy])
        points.append({"geometry": geometry_summary(hp, curves, delta_D, at, int(batch.seeds_R[run])),
                       "orthogonality": orthogonality_summary(*joints),
                       "quadrants": quadrants[p]})
        if p == 0:
            figures = {"curves": {"delta": delta_D, **curves}, "joints": joints}
    return points, figures
