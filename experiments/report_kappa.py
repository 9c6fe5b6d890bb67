"""REPORT.md section 4's second half: κ′ told apart from c′ (experiments/kappa_competence.yaml).

c′ is the per-token competence task.phi_prime.competence. Over all policies κ′ depends only on the
distribution of φ′ under the reference: `all` over K positions is a 0/1 reward of mean c′^K, so
κ′ = κ_Bernoulli(c′^K), and `mean` over K positions has κ′ = κ_Bernoulli(c′) whatever K. So at a fixed
c′ the number of positions of an `all` reward moves κ′, and at a fixed reward mean (hence κ′) it moves
c′. Each arm's Δφ′ is over the same 16 seeds; contrasts are paired by seed (every arm runs seeds 0-15
with the same keys), and all contrasts of the section form one Holm family (stats.verdicts_of).
"""
from __future__ import annotations

import numpy as np

from experiments.report_reward import fmt
from experiments.runs import Run
from sim.analysis import stats
from sim.output.results import mean_ci95

COMPETENCE = "task.phi_prime.competence"
# (shape, K) -> run label in kappa_competence.yaml
ARMS = {("mean", 4): "mean over 4", ("all", 1): "all over 1", ("all", 2): "all over 2", ("all", 4): "all over 4"}
FIXED_C = (0.9, 0.7)  # hold c' at each, vary kappa' through K of an `all` reward
FIXED_MEAN = {("all", 1): 0.81, ("all", 2): 0.9, ("all", 4): 0.948683, ("mean", 4): 0.81}  # reward mean 0.81: one kappa'
WORDS = {"up": "smaller fall (up)", "down": "larger fall (down)", "equivalent": f"the same within ±{stats.DEFAULT_MARGIN:g}",
         "inconclusive": "inconclusive"}


def arm(runs: dict[str, Run], shape: str, k: int, c: float) -> tuple[Run, int]:
    run = runs[ARMS[(shape, k)]]
    return run, next(p for p, v in enumerate(run.batch.point_values) if np.isclose(v[COMPETENCE], c))


def delta_N(runs: dict[str, Run], shape: str, k: int, c: float) -> np.ndarray:
    run, p = arm(runs, shape, k, c)
    x = np.asarray(run.metric("phi_prime", p), np.float64)
    return x[-1] - x[0]


def start(runs: dict[str, Run], shape: str, k: int, c: float) -> tuple[float, float]:
    """(E[φ′] and κ′ at the reference): the logged first row, the same for every seed."""
    run, p = arm(runs, shape, k, c)
    return float(np.mean(run.metric("phi_prime", p)[0])), float(np.mean(run.metric("kappa_phi_prime", p)[0]))


def section(runs: dict[str, Run]) -> tuple[str, dict]:
    cells = [(s, k, c) for (s, k), label in ARMS.items()
             for c in sorted({v[COMPETENCE] for v in runs[label].batch.point_values}, reverse=True)]
    arms = {cell: delta_N(runs, *cell) for cell in cells}
    # fixed c': each K > 1 of `all` against K = 1; fixed kappa' (mean 0.81): each other arm against `all` over 1
    vary_kappa = {f"c′ = {c:g}: all over {k} − all over 1": arms[("all", k, c)] - arms[("all", 1, c)]
                  for c in FIXED_C for k in (2, 4)}
    base = ("all", 1, FIXED_MEAN[("all", 1)])
    vary_c = {f"κ′ fixed: all over {k} (c′ = {c:g}) − all over 1 (c′ = {base[2]:g})": arms[("all", k, c)] - arms[base]
              for (s, k), c in FIXED_MEAN.items() if s == "all" and k > 1}
    # the same c' and kappa', another shape: what neither of the two describes
    shape = {f"c′ and κ′ fixed: mean over 4 − all over 1 (c′ = {base[2]:g})": arms[("mean", 4, FIXED_MEAN[("mean", 4)])] - arms[base]}
    verdicts = stats.verdicts_of(vary_kappa | vary_c | shape)
    relative = {cell: arms[cell] / start(runs, *cell)[0] for cell in cells}  # the reward's mean is the same for every seed
    rows = []
    for cell in cells:
        m, kappa = start(runs, *cell)
        rows.append([cell[0], str(cell[1]), f"{cell[2]:g}", f"{m:.3f}", f"{kappa:.3f}", fmt(mean_ci95(arms[cell])),
                     fmt(mean_ci95(relative[cell]))])
    header = ["shape", "K", "c′", "E[φ′] at the reference", "κ′ at the reference", "Δφ′ (mean [CI])", "Δφ′ / E[φ′]"]
    table = "| " + " | ".join(header) + " |\n|" + "|".join(" --- " for _ in header) + "|\n"
    table += "".join("| " + " | ".join(r) + " |\n" for r in rows)
    differs = lambda family: [k for k in family if verdicts[k] in ("up", "down")]  # noqa: E731
    same = lambda family: all(verdicts[k] == "equivalent" for k in family)  # noqa: E731
    if differs(vary_kappa) and same(vary_c):
        answer = "κ′ explains the fall: at a fixed c′ it changes with κ′, and at a fixed κ′ it does not change with c′"
    elif differs(vary_c) and same(vary_kappa):
        answer = "c′, not κ′, goes with the fall: at a fixed κ′ it changes with c′, at a fixed c′ not with κ′"
    elif differs(vary_c) and differs(vary_kappa):
        answer = "neither alone explains the fall: it changes with κ′ at a fixed c′ and with c′ at a fixed κ′"
        if differs(shape):
            answer += " (and with the shape at a fixed c′ and κ′)"
    else:
        answer = ("the contrasts cannot say which of the two explains the fall: a family whose contrasts neither differ "
                  "nor are all equivalent after Holm")
    # relative to what there is to lose, does the fall deepen with K in each group of `all` arms?
    groups = [[("all", k, c) for k in (1, 2, 4)] for c in FIXED_C] + [[("all", k, FIXED_MEAN[("all", k)]) for k in (1, 2, 4)]]
    mean_rel = {cell: float(np.mean(relative[cell])) for cell in cells}
    if all(mean_rel[g[0]] > mean_rel[g[1]] > mean_rel[g[2]] for g in groups):
        answer += ("; in every group (fixed c′ = " + ", ".join(f"{c:g}" for c in FIXED_C) + ", and fixed κ′) the "
                   "fall relative to E[φ′] deepens with the number of φ′'s positions K, where φ's good tokens can "
                   "spill (section 6)")
    lines = "".join(f"  - {name}: {fmt(mean_ci95(x))}, {WORDS[verdicts[name]]}\n" for name, x in (vary_kappa | vary_c | shape).items())
    text = (
        "### κ′ against c′\n\n"
        f"`{runs['all over 4'].command}` (and the other runs of experiments/kappa_competence.yaml). Here c′ means "
        "the per-token competence `task.phi_prime.competence`: the reference's probability of a good token at each "
        "of φ′'s positions. Over all policies κ′ depends only on φ′'s distribution under the reference: shape `all` "
        "over K positions is a 0/1 reward of mean c′^K, so κ′ = κ_Bernoulli(c′^K); `mean` over K positions has "
        "κ′ = κ_Bernoulli(c′) for any K. Holding c′ and taking K = 1, 2, 4 therefore varies κ′ (and, inseparably "
        "for a 0/1 reward, the reward's mean); holding the reward's mean at 0.81 holds κ′ and varies c′ "
        "(0.81, 0.9, 0.9487 for K = 1, 2, 4). Default policy (lowrank, d = 4), w₁/w₂ = 4, 200 steps, 16 seeds; "
        "κ′ and E[φ′] below are logged at the reference.\n\n" + table +
        "\nContrasts of Δφ′, paired by seed, one Holm family (up: φ′ falls less than in the arm subtracted):\n"
        + lines + f"\nSo {answer}.\n\n")
    return text, {"verdicts": verdicts, "answer": answer}
