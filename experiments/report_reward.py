"""REPORT.md's reward-hacking section (experiments/reward_hacking.yaml) and its figure.

The replicates are reward models (reward_model.seed 0-7: independent preference pairs), each one
sweep point with one RL seed (exact mode has no sampling noise); statistics are means over the 8
reward models with 95% Student-t intervals, paired by reward-model seed across conditions, as in
tests/test_claims_reward_model.py.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import binomtest

from experiments import best_of_n as bon_results
from experiments.runs import Run
from sim.reward_models import best_of_n as bon, hacking
from sim.output import plots
from sim.analysis import stats
from sim.output.results import mean_ci95

MARGIN = stats.DEFAULT_MARGIN
judge = stats.verdicts_of  # one declared family of per-model contrasts -> their verdicts (Holm)
KEYS = {"beta": "algo.kl.beta", "pairs": "reward_model.pairs", "noise": "reward_model.noise", "seed": "reward_model.seed"}


def fmt(ci) -> str:
    return f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]"


def level(ci) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def effect(verdict: str) -> str:
    """A contrast's verdict (sim/analysis/stats.py, via report.judge) as a verb."""
    return {"up": "raises", "down": "lowers", "equivalent": f"does not change (within ±{MARGIN:g}, TOST)",
            "inconclusive": "does not clearly change (inconclusive)"}[verdict]


def series(run: Run, name: str, **where) -> np.ndarray:
    """[T, S]: metric `name` of the points matching `where` (unswept keys match anything), one column
    per reward-model seed in increasing seed order."""
    cols = []
    for p, values in enumerate(run.batch.point_values):
        if all(KEYS[k] not in values or np.isclose(values[KEYS[k]], v) for k, v in where.items()):
            cols.append((values[KEYS["seed"]], run.metric(name, p)[:, 0]))
    return np.stack([c for _, c in sorted(cols, key=lambda sc: sc[0])], 1)


def peaks(run: Run, **where):
    """Per reward model: (peak gold, d at the peak, final gold, final d, final proxy)."""
    gold, d, proxy = (series(run, k, **where) for k in ("gold", "sqrt_kl", "proxy"))
    k, cols = np.argmax(gold, 0), np.arange(gold.shape[1])
    return gold[k, cols], d[k, cols], gold[-1], d[-1], proxy[-1]


def fitted_peak(fit: dict) -> str:
    """The fitted peak d* beside the observed range of d, and whether the fit describes it."""
    if fit["alpha"] is None:
        return "n/a"
    if fit["d_peak"] is None:
        return f"no peak (β ≤ 0); d ≤ {fit['d_max']:.2f}"
    where = "in the data" if fit["peak_in_data"] else "beyond the data: the fit does not describe the peak"
    return f"{fit['d_peak']:.3g} vs d ≤ {fit['d_max']:.2f}: {where}"


def per_model_fits(run: Run, **where) -> list[dict]:
    """Gao's form fitted to each reward model's own gold curve (its seed's column), not to the mean
    of models that peak at different d."""
    gold, d = (series(run, k, **where) for k in ("gold", "sqrt_kl"))
    return [hacking.gao_fit(d[:, i], gold[:, i] - gold[0, i]) for i in range(gold.shape[1])]


def _row(label: str, run: Run, **where) -> list:
    gold, proxy, d = (series(run, k, **where).mean(1) for k in ("gold", "proxy", "sqrt_kl"))
    s = hacking.summary(run.steps_T, gold, proxy, d)
    peak, d_peak, end, _, _ = peaks(run, **where)
    fit = s["gao_fit"]
    fits = per_model_fits(run, **where)
    return [label, level(mean_ci95(peak)), f"{np.mean(d_peak):.2f}", level(mean_ci95(end)), f"{s['final']['proxy']:.3f}",
            f"{s['final_gap']:+.3f}", f"{s['final']['d']:.2f}",
            f"{fit['alpha']:.3f}, {fit['beta']:.3f}, {fit['r2']:.3f}" if fit["alpha"] is not None else "n/a",
            fitted_peak(fit), f"{sum(f['peak_in_data'] for f in fits)} of {len(fits)}"]


ENSEMBLES = {"mean": "ensemble_mean", "worst case": "ensemble_worst", "uncertainty-weighted (λ = 1)": "ensemble_uncertainty"}


def matched_gold_N(arm: Run, single: Run, **where) -> np.ndarray:
    """Per reward model: the arm's gold minus the single model's at the same KL, d* = the smaller of
    the two runs' final d (each curve interpolated where it first reaches d*)."""
    g_a, d_a = (series(arm, k) for k in ("gold", "sqrt_kl"))
    g_s, d_s = (series(single, k, **where) for k in ("gold", "sqrt_kl"))
    d_star = np.minimum(d_a[-1], d_s[-1])
    return np.array([hacking.gold_at_d(d_a[:, i], g_a[:, i], d_star[i]) - hacking.gold_at_d(d_s[:, i], g_s[:, i], d_star[i])
                     for i in range(len(d_star))])


def ensemble_findings(runs: dict[str, Run]) -> tuple[dict, list]:
    """Each objective against the single linear 8-pair model (its member 0), paired by seed, one Holm family."""
    single, where = runs["linear"], {"beta": 0.0, "pairs": 8}
    per_model = {name: matched_gold_N(runs[key], single, **where) for name, key in ENSEMBLES.items()}
    f = {"verdicts": judge(per_model), "matched": {k: mean_ci95(v) for k, v in per_model.items()},
         "matched_pos": {k: int(np.sum(v > 0)) for k, v in per_model.items()}}
    peak0, _, end0, _, _ = peaks(single, **where)
    f["fall_single"] = mean_ci95(peak0 - end0)
    f["fall"] = {}
    for name, key in ENSEMBLES.items():
        peak, _, end, _, _ = peaks(runs[key])
        f["fall"][name] = mean_ci95(peak - end)
    rows = [_row(f"linear ensemble of 4, 8 pairs, {name}, β = 0", runs[key]) for name, key in ENSEMBLES.items()]
    return f, rows


def figure(path: Path, runs: dict[str, Run]) -> None:
    lin, mlp = runs["linear"], runs["mlp"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    panels = [(axes[0], lin, {"beta": 0.0}, "linear RM, β = 0"), (axes[1], lin, {"beta": 0.2}, "linear RM, β = 0.2"),
              (axes[2], mlp, {"beta": 0.0}, "MLP RM, β = 0")]
    for ax, run, where, title in panels:
        for c, pairs in enumerate(sorted({v[KEYS["pairs"]] for v in run.batch.point_values})):
            gold, proxy, d = (series(run, k, pairs=pairs, **where) for k in ("gold", "proxy", "sqrt_kl"))
            for s in range(gold.shape[1]):  # each reward model, thin
                ax.plot(d[:, s], gold[:, s], color=f"C{c}", lw=0.4, alpha=0.35)
            ax.plot(d.mean(1), gold.mean(1), color=f"C{c}", lw=2, label=f"gold, {pairs:g} pairs")
            ax.plot(d.mean(1), proxy.mean(1), color=f"C{c}", lw=1.2, ls="--", label=f"proxy, {pairs:g} pairs")
        ax.set(title=title, xlabel="d = √KL(π ‖ π_ref)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("E[reward] (gold max 5)")
    fig.suptitle("Gold (solid) and proxy (dashed) against d: mean over 8 reward models (thin: each model's gold)",
                 fontsize=10)
    plots.save(fig, path)


def ensemble_text(e: dict, runs: dict[str, Run]) -> str:
    word = {"up": "more gold", "down": "less gold", "equivalent": f"the same gold within ±{MARGIN:g} (TOST)",
            "inconclusive": "no clear difference (inconclusive)"}
    parts = "; ".join(f"{name}: {fmt(e['matched'][name])}, higher in {e['matched_pos'][name]} of 8 models, "
                      f"{word[e['verdicts'][name]]}" for name in ENSEMBLES)
    falls = ", ".join(f"{name} {fmt(e['fall'][name])}" for name in ENSEMBLES)
    return (
        "- **Reward-model ensembles** (Coste et al. 2023): 4 linear members per seed, member 0 the single 8-pair "
        "model above, members 1-3 fit to bootstrap resamples of the same 8 pairs (the same data budget), RL "
        f"against the members' mean, their minimum, or mean − 1·variance (`{runs['ensemble_worst'].command}`, "
        "and `reward_model.objective=mean|uncertainty`). At the same KL (each model's gold where both runs reach "
        "d* = the smaller of their final d, minus the single model's there; paired by seed, Holm over the three "
        f"objectives) the ensemble gives {parts}. The fall of gold from its peak: single model "
        f"{fmt(e['fall_single'])}; {falls}. Where the members agree (the 8 pairs already pin the gold's best "
        "tokens) the ensemble changes nothing; where they disagree the worst-case and uncertainty objectives "
        "refuse the tokens only some members like, which were the proxy's mistakes.\n")


BON_AT_D = (1.0, 2.0)  # where best-of-n and RL are compared: inside both ranges of d (RL ends at d >= 2.1)


def rl_for(runs: dict[str, Run], label: str, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """[T, S] gold and d of the beta = 0 RL runs against the proxies of one best-of-n condition."""
    return tuple(series(runs[label], k, pairs=pairs, beta=0.0) for k in ("gold", "sqrt_kl"))


def best_of_n_findings(runs: dict[str, Run], stored: dict) -> tuple[dict, str]:
    """Best-of-n per condition (its gold against d, the d(alpha - beta d) fit) and against RL at the same
    d, paired by reward-model seed. Two distances, two declared families (Holm over condition x
    BON_AT_D each): d from log n - (n-1)/n, as Gao et al., and d from the exact KL of the tie-aware
    distribution, the same quantity as RL's d."""
    n_N = np.array(stored["n"])
    d_N = np.sqrt(bon.kl_formula(n_N))
    per_seed = {"formula": {}, "exact": {}}
    rows, f = [], {"kl_gap": 0.0}
    for name, (label, pairs) in bon_results.CONDITIONS.items():
        c = stored["conditions"][name]
        gold_SxN, kl_SxN = np.array(c["gold_SxN"]), np.array(c["kl_exact_SxN"])
        d_exact_SxN = np.sqrt(np.maximum(kl_SxN, 0.0))
        f["kl_gap"] = max(f["kl_gap"], float(np.max(bon.kl_formula(n_N) - kl_SxN)))
        f["kl_max"] = max(f.get("kl_max", 0.0), float(np.max(kl_SxN)))
        rl_gold_TxS, rl_d_TxS = rl_for(runs, label, pairs)
        for d_star in BON_AT_D:
            rl_S = np.array([hacking.gold_at_d(rl_d_TxS[:, s], rl_gold_TxS[:, s], d_star) for s in range(gold_SxN.shape[0])])
            per_seed["formula"][(name, d_star)] = np.array(
                [bon.gold_at_d(d_N, gold_SxN[s], d_star) for s in range(gold_SxN.shape[0])]) - rl_S
            per_seed["exact"][(name, d_star)] = np.array(
                # the exact KL can overshoot its limit by ~1e-3 before settling: the first n reaching d*, as for RL
                [hacking.gold_at_d(d_exact_SxN[s], gold_SxN[s], d_star) for s in range(gold_SxN.shape[0])]) - rl_S
        mean_N = gold_SxN.mean(0)
        fit = bon.bon_fit(d_N, mean_N - mean_N[0])
        own = [bon.bon_fit(d_N, g - g[0]) for g in gold_SxN]
        k = int(np.argmax(mean_N))
        peak = "no peak (β ≤ 0)" if fit["d_peak"] is None else (
            f"{fit['d_peak']:.2f}, " + ("in the data" if fit["peak_in_data"] else f"beyond d ≤ {fit['d_max']:.2f}"))
        rows.append([name, f"{mean_N[0]:.3f}", level(mean_ci95(gold_SxN.max(1))), f"{d_N[k]:.2f} (n = {n_N[k]})",
                     level(mean_ci95(gold_SxN[:, -1])), level(mean_ci95(d_exact_SxN[:, -1])),
                     f"{fit['alpha']:.3f}, {fit['beta']:.3f}, {fit['r2']:.3f}", peak,
                     f"{sum(o['peak_in_data'] for o in own)} of {len(own)}"]
                    + [fmt(mean_ci95(per_seed[kind][(name, d)])) for kind in ("formula", "exact") for d in BON_AT_D])
    f["verdicts"] = {kind: dict(zip(x, (v["verdict"] for v in stats.family_verdicts(list(x.values()), MARGIN))))
                     for kind, x in per_seed.items()}
    f["per_seed"] = per_seed
    header = (["proxy", "gold at n = 1 (reference)", "best-of-n peak gold (mean [CI])", "d at the mean's peak",
               f"gold at n = {n_N[-1]} (d = {d_N[-1]:.2f})", f"exact d at n = {n_N[-1]}", "fit α, β, R² (mean gain)",
               "fitted peak d* = α/2β", "models whose own fit peaks in their data"]
              + [f"BoN − RL at d = {d:g} ({kind} d)" for kind in ("formula", "exact") for d in BON_AT_D])
    table = "| " + " | ".join(header) + " |\n|" + "|".join(" --- " for _ in header) + "|\n"
    table += "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)
    return f, table


def best_of_n_text(b: dict, table: str, runs: dict[str, Run]) -> str:
    def listed(kind: str, verdict: str) -> str:
        keys = [k for k, v in b["verdicts"][kind].items() if v == verdict]
        return ", ".join(f"{name} at d = {d:g}" for name, d in keys) or "none"

    def summary(kind: str) -> str:
        n_inc = sum(v == "inconclusive" for v in b["verdicts"][kind].values())
        return (f"more gold than RL (up) for {listed(kind, 'up')}; less (down) for {listed(kind, 'down')}; "
                f"equivalent within ±{MARGIN:g} for {listed(kind, 'equivalent')}; the other {n_inc} inconclusive")

    return (
        "- **Best-of-n from the reference** (Gao et al. 2022): for each β = 0 condition and reward-model seed, draw "
        "n responses per prompt from the reference and keep the one the same frozen proxy scores highest; on the "
        "toy its distribution is exact (every response enumerated; `sim/reward_models/best_of_n.py`, "
        "n = 1, 2, 4, …, 16384; `experiments/best_of_n.py`). Its distance as Gao et al. take it is d = √KL with "
        "KL = log n − (n − 1)/n: the KL of best-of-n for a continuous score, and an upper bound for a discrete one. "
        "Here the responses are finitely many and the proxy's scores tie, so once n is large best-of-n returns the proxy's favourite response and its exact KL stops near "
        f"−log of that response's reference probability (at most {b['kl_max']:.2f} nats here, d ≤ "
        f"{np.sqrt(b['kl_max']):.2f}) while the formula goes on growing: at n = 16384 it exceeds the exact KL by up "
        f"to {b['kl_gap']:.2f} nats. Both distances are reported. The fit is Gao "
        "et al.'s best-of-n form R(d) = d·(α − β·d) (formula d) to the mean gold gain over the 8 models (peak at "
        "d* = α/(2β)); the last columns compare best-of-n with the RL run against the same proxy at the same d, "
        "paired by reward-model seed (RL's gold interpolated where it first reaches d; best-of-n's between the two n "
        "around d; a run that never reaches d leaves its seed's contrast undefined, hence inconclusive), each "
        f"distance one Holm family of {len(b['verdicts']['exact'])} contrasts.\n\n"
        + table + "\n"
        f"  At the formula's d best-of-n gives {summary('formula')}. At the exact d (RL's own measure) it gives "
        f"{summary('exact')}. Gao et al. found best-of-n more KL-efficient than RL; here that holds only where a "
        "verdict above is up.\n")


GOLDS = {"and": "AND", "parity": "parity"}  # golds the linear family cannot represent: run prefix -> name


def misspecified_findings(runs: dict[str, Run], gold: str) -> dict:
    """A gold the linear family cannot represent (runs {gold}_linear, {gold}_mlp): capacity (MLP - linear)
    and data (256 - 8 pairs) on RL's peak gold, paired by seed, one Holm family per gold."""
    per_seed = {}
    peak = {(fam, pairs): peaks(runs[f"{gold}_{fam}"], pairs=pairs)[0] for fam in ("linear", "mlp") for pairs in (8, 256)}
    for pairs in (8, 256):
        per_seed[f"capacity{pairs}"] = peak[("mlp", pairs)] - peak[("linear", pairs)]
    for fam in ("linear", "mlp"):
        per_seed[f"data_{fam}"] = peak[(fam, 256)] - peak[(fam, 8)]
    return {k: mean_ci95(v) for k, v in per_seed.items()} | {"v": judge(per_seed),
                                                              "peak": {k: mean_ci95(v) for k, v in peak.items()}}


def misspecified_text(m: dict, runs: dict[str, Run]) -> str:
    a, p = m["and"], m["parity"]

    def findings(x: dict) -> str:
        pk = x["peak"]
        return (f"RL's peak gold, mean over the 8 models: linear {level(pk[('linear', 8)])} with 8 pairs, "
                f"{level(pk[('linear', 256)])} with 256; MLP {level(pk[('mlp', 8)])} and {level(pk[('mlp', 256)])}. "
                f"Paired by seed, one Holm family: the MLP instead of the linear model {effect(x['v']['capacity8'])} "
                f"the peak with 8 pairs ({fmt(x['capacity8'])}) and {effect(x['v']['capacity256'])} it with 256 "
                f"({fmt(x['capacity256'])}); 256 pairs instead of 8 {effect(x['v']['data_linear'])} it for the linear "
                f"model ({fmt(x['data_linear'])}) and {effect(x['v']['data_mlp'])} it for the MLP ({fmt(x['data_mlp'])})")

    return (
        "- **Golds the linear family cannot represent** (so that capacity and data can matter, as for real reward "
        "models): φ of shape `all` (1 iff both of φ's positions hold a good token, an AND) or `parity` (1 iff "
        "exactly one does, an XOR), gold 4·φ + φ′, neither a sum over positions "
        f"(`{runs['parity_linear'].command}`; `task.phi.shape=all`; `reward_model=mlp`). "
        f"**AND**: {findings(a)}. The AND rises with each position's goodness, so the linear model's favourite "
        "response (a good token everywhere) is still the gold's best: the family cannot represent this gold but "
        "ranks its top correctly, and capacity does not help. "
        f"**Parity**: {findings(p)}. No sum over positions ranks an XOR's best responses first, so here the linear "
        "model's favourite response is wrong whatever the data, and only a model that can represent the "
        "interaction can be right.\n")


def section(out: Path, runs: dict[str, Run]) -> tuple[str, dict]:
    lin, mlp, noise = runs["linear"], runs["mlp"], runs["noise"]
    figure(out / "reward_hacking.png", runs)
    f = {}
    per_model = {}  # each statistic's per-model contrast (8 reward models, paired by seed)
    peak, _, end, _, _ = peaks(lin, beta=0.0, pairs=8)
    per_model["fall8"] = peak - end
    proxy8 = series(lin, "proxy", beta=0.0, pairs=8)
    f["fall8"], f["n_fall8"] = mean_ci95(peak - end), int(np.sum(peak - end > 0.05))
    f["proxy_shortfall"] = float(np.min(proxy8[-1] - proxy8.max(0)))
    for pairs in (8, 256):
        d0, d2 = (peaks(lin, beta=b, pairs=pairs)[3] for b in (0.0, 0.2))
        f[f"d_smaller{pairs}"] = int(np.sum(d2 < d0))
        e0, e2 = (peaks(lin, beta=b, pairs=pairs)[2] for b in (0.0, 0.2))
        f[f"kl_gold{pairs}"], f[f"kl_pos{pairs}"] = mean_ci95(e2 - e0), int(np.sum(e2 > e0))
        per_model[f"kl_gold{pairs}"] = e2 - e0
    g8, d8, *_ = peaks(lin, beta=0.0, pairs=8)
    g256, d256, *_ = peaks(lin, beta=0.0, pairs=256)
    f["pairs_gold"], f["pairs_d"] = mean_ci95(g256 - g8), mean_ci95(d256 - d8)
    per_model["pairs_gold"], per_model["pairs_d"] = g256 - g8, d256 - d8
    f["peak_last256"] = int(np.sum(np.argmax(series(lin, "gold", beta=0.0, pairs=256), 0) == len(lin.steps_T) - 1))
    for pairs in (8, 256):
        gm, dm, *_ = peaks(mlp, pairs=pairs)
        gl, dl, *_ = peaks(lin, beta=0.0, pairs=pairs)
        f[f"mlp_gold{pairs}"], f[f"mlp_d{pairs}"] = mean_ci95(gm - gl), mean_ci95(dm - dl)
        per_model[f"mlp_gold{pairs}"] = gm - gl
    gn0, *_ = peaks(noise, noise=0.0)
    gn2, *_ = peaks(noise, noise=2.0)
    f["noise_gold"] = mean_ci95(gn2 - gn0)
    per_model["noise_gold"] = gn2 - gn0
    # families, Holm-corrected: claim 1's fall; claim 2's two gold differences; claim 3's five contrasts
    f["v"] = (judge({"fall8": per_model["fall8"]}) | judge({k: per_model[k] for k in ("kl_gold8", "kl_gold256")})
              | judge({k: per_model[k] for k in ("pairs_gold", "pairs_d", "mlp_gold8", "mlp_gold256", "noise_gold")}))
    # claim 2's sign test: under "the penalty makes no difference" each model is above or below with p = 1/2
    f["sign_p8"] = binomtest(f["kl_pos8"], 8, 0.5).pvalue
    n_models = len({v[KEYS["seed"]] for v in lin.batch.point_values})
    rows = [_row(f"linear, {p} pairs, β = {b:g}", lin, pairs=p, beta=b) for b in (0.0, 0.2) for p in (8, 64, 256)]
    rows += [_row(f"MLP, {p} pairs, β = 0", mlp, pairs=p) for p in (8, 256)]
    rows += [_row(f"linear, 64 pairs, noise τ = {t:g}, β = 0", noise, noise=t) for t in (0.0, 2.0)]
    f["ensemble"], ensemble_rows = ensemble_findings(runs)
    rows += ensemble_rows
    rows += [_row(f"{name} gold, {fam}, {p} pairs, β = 0", runs[f"{gold}_{fam}"], pairs=p)
             for gold, name in GOLDS.items() for fam in ("linear", "mlp") for p in (8, 256)]
    f["misspecified"] = {gold: misspecified_findings(runs, gold) for gold in GOLDS}
    f["bon"], bon_table = best_of_n_findings(runs, bon_results.load())
    header = ["reward model", "peak gold (mean [CI])", "d at peak", "final gold", "final proxy (mean curve)",
              "final gold − proxy", "final d", "Gao fit α, β, R² (mean curve)", "fitted peak d* (mean curve)",
              "models whose own fit peaks in their data"]
    table = "| " + " | ".join(header) + " |\n|" + "|".join(" --- " for _ in header) + "|\n"
    table += "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)
    held = "holds" if f["v"]["fall8"] == "up" and f["proxy_shortfall"] >= -1e-3 else "does not hold"
    every = "every" if f["proxy_shortfall"] >= -1e-3 else "not every"
    kl_avg = {"up": "it helps", "down": "it costs gold", "equivalent": f"it makes no difference within ±{MARGIN:g}",
              "inconclusive": "whether it helps is inconclusive"}[f["v"]["kl_gold8"]]
    bigger = ("helps in part" if "up" in (f["v"]["mlp_gold8"], f["v"]["mlp_gold256"]) else "is not shown to help")
    text = (
        "## 8. Reward hacking with a learned reward model\n\n"
        "The lecture notes (points 5 and 6): RL scores samples with a *frozen reward model*, the policy finds "
        "unintended ways to maximise it, and the fixes are a better reward model and a KL penalty to the SFT "
        "model. Here the gold is the task's r = 4·φ + φ′ and the proxy a reward model fit by Bradley–Terry "
        "maximum likelihood to pairs of reference responses labelled by the gold (docs/reward-models.md). "
        f"Runs: `{lin.command}`; `{mlp.command}`; `{noise.command}`. Each point is one reward model "
        f"(reward_model.seed 0-7: independent pairs) and one exact-mode RL run; statistics are over the "
        f"{n_models} reward models of each condition, paired by seed. The Gao fit is R(d) = d·(α − β·log d) to the mean gold "
        "gain against the mean d, whose peak is d* = exp(α/β − 1); the mean curve averages models that peak at "
        "different d, so each model's own gold curve is fitted too (last column). A fitted peak outside the observed "
        "d is an extrapolation, and the table says so.\n\n"
        "![reward hacking](reward_hacking.png)\n\n" + table + "\n"
        f"- **Reward hacking {held}** (claim 1): with β = 0 and 8 pairs the proxy ends at its maximum in {every} "
        f"reward model (largest shortfall {f['proxy_shortfall']:.4f}) while the gold falls from its peak by "
        f"{fmt(f['fall8'])} ({f['n_fall8']} of 8 models fall by more than 0.05). A linear proxy is maximised by "
        "one token per position; with few pairs that token is sometimes a bad one, and the policy first gains "
        "gold (the proxy is right on average) and then trades it for proxy.\n"
        f"- **A KL penalty limits it, at a price** (claim 2): β = 0.2 ends at a smaller KL in "
        f"{f['d_smaller8']} of 8 models with 8 pairs and {f['d_smaller256']} of 8 with 256. With 8 pairs it ends "
        f"with more gold than β = 0 in {f['kl_pos8']} of 8 models (two-sided sign test p = {f['sign_p8']:.2f}; "
        f"difference {fmt(f['kl_gold8'])}): {kl_avg}, "
        f"and it costs gold where the proxy happened to be right. With 256 pairs it costs gold in {8 - f['kl_pos256']} of 8 models "
        f"({fmt(f['kl_gold256'])}): the penalty limits exploitation of a bad proxy and of a good one alike.\n"
        f"- **More pairs** (claim 3): 256 pairs instead of 8 {effect(f['v']['pairs_gold'])} the gold peak "
        f"({fmt(f['pairs_gold'])}) and its d ({fmt(f['pairs_d'])}, {effect(f['v']['pairs_d'])}); with 256 pairs the gold "
        f"peaks at the last logged step in {f['peak_last256']} of 8 models. Here that is nearly a tautology: the gold is "
        "linear in the linear reward model's features, so enough pairs recover it exactly (a gold the family cannot "
        "represent is below: AND and parity golds).\n"
        f"- **A bigger reward model {bigger}** (claim 3, the other fix): the MLP against the linear "
        f"model, same pairs and seed, {effect(f['v']['mlp_gold8'])} the peak gold with 8 pairs ({fmt(f['mlp_gold8'])}) "
        f"and {effect(f['v']['mlp_gold256'])} it with 256 ({fmt(f['mlp_gold256'])}; all near the maximum 5) (d at the peak: {fmt(f['mlp_d8'])}, {fmt(f['mlp_d256'])}). In this toy "
        "the gold is linear in (position, token) features, so the linear model is already of the right form; "
        "capacity can help only when the model is too simple for the gold (Gao et al.'s setting): the AND and parity golds below.\n"
        f"- **Noisier labels** (τ = 2 instead of 0, 64 pairs) {effect(f['v']['noise_gold'])} the peak gold: "
        f"{fmt(f['noise_gold'])}.\n"
        + ensemble_text(f["ensemble"], runs) + misspecified_text(f["misspecified"], runs) + best_of_n_text(f["bon"], bon_table, runs) +
        "- **RL vs SFT** (lecture notes point 6) is a statement about gradients, checked exactly in "
        "tests/test_claims_reward_model.py (claim 4): RL's expected gradient on a token the policy never produces "
        "is exactly 0, however high its reward; SFT's on a demonstration containing it is −1 (it pushes "
        "probability onto it).\n\n")
    return text, f
