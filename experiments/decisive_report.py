"""REPORT §9 from the decisive experiment's stored results (experiments/results/decisive/).

`render(spec, results, out)` returns the section's markdown and draws its figures into `out`:
phi and phi_prime against step for every arm of both pairs (mean and 95% band over seeds), the
gradient decomposition, the primary contrasts with Holm-corrected verdicts (sim/analysis/stats.py),
the reference's kappa with its error, and the toy's prediction for the same structures. A stage
that has not run yet is said to be missing, with the command that runs it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from sim.analysis import stats

ARMS = {0: "paid (w = 4, 1)", 1: "unpaid (w = 4, 0)"}
TERMS = {"phi": "φ's advantage", "phi_prime": "φ′'s advantage", "kl": "the KL term"}


def read_runs(*metrics_csvs: Path) -> dict:
    """point -> metric -> steps_T, values_TxN (seeds as columns), from sim.run metrics.csv files of
    the same configuration with different seeds (the main run's extension of the pilot's)."""
    rows = [r for path in metrics_csvs for r in csv.DictReader(path.open())]
    runs_of = [{(r["seed"], r["point"]) for r in csv.DictReader(path.open())} for path in metrics_csvs]
    if len(metrics_csvs) > 1 and set.intersection(*runs_of):
        raise ValueError(f"{', '.join(map(str, metrics_csvs))}: the same seed appears in more than one file")
    out = {}
    for point in sorted({int(r["point"]) for r in rows}):
        mine = [r for r in rows if int(r["point"]) == point]
        seeds, steps = sorted({int(r["seed"]) for r in mine}), sorted({int(r["step"]) for r in mine})
        index = {(int(r["seed"]), int(r["step"])): r for r in mine}
        metrics = [k for k in mine[0] if k not in ("run", "seed", "point", "step")]
        out[point] = {"steps": np.array(steps), "seeds": seeds}
        for m in metrics:
            try:
                out[point][m] = np.array([[float(index[s, t][m]) for s in seeds] for t in steps])
            except ValueError:  # a non-numeric column (a swept value's label)
                continue
    return out


SIZES = ("steps", "log_every", "lr")  # what a main run that extends the pilot must share with it


def seed_chunks(spec: dict) -> list[tuple[int, int]]:
    """(first seed, seeds) of each sim.run of a main run that extends the pilot (main.extends_pilot):
    the pilot's seeds are the main run's first ones (the same configuration and seeds), so only
    seeds pilot.seeds .. main.seeds - 1 are trained, in runs of at most main.chunk seeds (each a
    few tens of minutes, resumable; the pairs grow together). Its sizes must be the pilot's."""
    main, pilot = spec["main"], spec["pilot"]
    if not main.get("seeds"):
        raise SystemExit("decisive: main.seeds is not set yet: run `python -m experiments.decisive power` on the pilot "
                         "first, and write its answer into experiments/decisive.yaml")
    if any(main[k] != pilot[k] for k in SIZES) or main["seeds"] <= pilot["seeds"]:
        raise SystemExit(f"decisive: main.extends_pilot needs the pilot's {', '.join(SIZES)} and more seeds "
                         f"than its {pilot['seeds']}")
    step = main.get("chunk") or main["seeds"]
    return [(first, min(step, main["seeds"] - first)) for first in range(pilot["seeds"], main["seeds"], step)]


def stage_csvs(spec: dict, results: Path, stage: str, pair: str) -> list[Path]:
    """A pair's metrics.csv files at a stage. With main.extends_pilot, the main run's first seeds
    ARE the pilot's (the same configuration and seeds), so the main run trains only the later
    seeds, in chunks (seed_chunks), and reads the pilot's file and every chunk's."""
    if stage == "main" and spec["main"].get("extends_pilot"):
        return [results / "runs" / "pilot" / pair / "metrics.csv"] + [
            results / "runs" / "main" / f"{pair}_s{first}" / "metrics.csv" for first, _ in seed_chunks(spec)]
    return [results / "runs" / stage / pair / "metrics.csv"]


def load_stage(spec: dict, results: Path, stage: str, partial: bool = False) -> dict[str, dict]:
    """pair -> read_runs of the pairs whose runs at `stage` are all stored (partial: whatever of
    them is, e.g. a main run's chunks so far)."""
    out = {}
    for pair in spec["pairs"]:
        paths = stage_csvs(spec, results, stage, pair)
        there = [p for p in paths if p.exists()]
        if there and (partial or len(there) == len(paths)):
            out[pair] = read_runs(*there)
    return out


def endpoint_N(run: dict, metric: str = "phi_prime", last: int = 2) -> np.ndarray:
    x_TxN = run[metric]
    return x_TxN[-last:].mean(0) - x_TxN[0]


def primary_contrasts(spec: dict, stage_runs: dict[str, dict]) -> list[dict]:
    """The declared family (spec['contrasts']) with Holm-corrected verdicts and Bonferroni intervals
    (simultaneous: each at level alpha / K, so that all K cover together)."""
    values = {}
    for pair, run in stage_runs.items():
        last = spec["endpoint"]["last_evaluations"]
        paid, unpaid = (endpoint_N(run[point], spec["endpoint"]["metric"], last) for point in (0, 1))
        values |= {f"{pair}.paid": paid, f"{pair}.unpaid": unpaid, f"{pair}.paid-unpaid": paid - unpaid}
    family = [c for c in spec["contrasts"] if c in values]
    if not family:
        return []
    verdicts = stats.family_verdicts([values[c] for c in family], spec["margin"], spec["alpha"])
    out = []
    for name, v in zip(family, verdicts):
        wide = stats.contrast(values[name], spec["alpha"] / len(family))
        out.append({"contrast": name, "seeds": int(values[name].size), "mean": float(np.mean(values[name])),
                    "ci_bonferroni": [wide.lo, wide.hi]} | v)
    return out


def plot_rewards(stage_runs: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(stage_runs), 2, figsize=(9, 3.2 * len(stage_runs)), squeeze=False)
    for row, (pair, run) in zip(axes, stage_runs.items()):
        for ax, metric, label in zip(row, ("phi", "phi_prime"), ("φ", "φ′")):
            for point, arm in ARMS.items():
                x_TxN = run[point][metric]
                mean, half = x_TxN.mean(1), 1.96 * x_TxN.std(1, ddof=1) / np.sqrt(x_TxN.shape[1])
                ax.plot(run[point]["steps"], mean, label=arm)
                ax.fill_between(run[point]["steps"], mean - half, mean + half, alpha=0.2)
            ax.set_title(f"pair {pair}: {label} (held-out, Rao-Blackwellised)")
            ax.set_xlabel("step")
        row[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_decomposition(stage_runs: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stage_runs), figsize=(4.8 * len(stage_runs), 3.4), squeeze=False)
    for ax, (pair, runs) in zip(axes[0], stage_runs.items()):
        run = runs[0]  # the paid arm
        steps = run["steps"][1:]
        for term, label in TERMS.items():
            x_TxN = run[f"dphi_prime_by_{term}"][1:]
            mean, half = x_TxN.mean(1), 1.96 * x_TxN.std(1, ddof=1) / np.sqrt(x_TxN.shape[1])
            ax.errorbar(steps, mean, half, capsize=3, label=label)
        ax.axhline(0, color="grey", lw=0.5)
        cos = run["cos_grad_phi_phi_prime"][1:]
        ax.set_title(f"pair {pair}: <-grad loss_t, grad E[φ′]>\ncos(∇E[φ], ∇E[φ′]) = {np.nanmean(cos):+.2f}")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_ci(lo: float, hi: float) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]"


def toy_rows(spec: dict, runs: Path) -> list[str]:
    lines = []
    for name in spec.get("toy", {}):
        summary = runs / f"toy_{name}" / "summary.json"
        if not summary.exists():
            continue
        points = json.loads(summary.read_text())["points"]
        for point in points:
            d = point["metrics"]["phi_prime"]
            w2 = point["values"].get("task.phi_prime.weight")
            lines.append(f"| toy, {name} | w₂ = {w2:g} | {d['delta_mean']:+.3f} {_fmt_ci(*d['delta_ci95'])} | "
                         f"{d.get('verdict', '?')} |")
    return lines


def toy_at_matched_gain(spec: dict, toy_runs: Path, stage_runs: dict[str, dict]) -> list[dict]:
    """The toy's Δφ′ at the first logged step where its mean φ has gained what the real model's
    mean φ gained by its endpoint, arm by arm: the toy's 200 steps gain far more φ than 20 real
    steps, so its endpoint overstates what each account predicts for the real run's size."""
    lines = []
    last = spec["endpoint"]["last_evaluations"]
    for name in spec.get("toy", {}):
        path = toy_runs / f"toy_{name}" / "metrics.csv"
        if not path.exists():
            continue
        toy = read_runs(path)
        for pair, real in stage_runs.items():
            for point, arm in ARMS.items():
                t = toy[point]
                gain = float(np.mean(endpoint_N(real[point], "phi", last)))
                dphi_T = t["phi"].mean(1) - t["phi"][0].mean()
                reached = np.flatnonzero(dphi_T >= gain)
                if not reached.size:
                    continue
                i = reached[0]
                c = stats.contrast(t["phi_prime"][i] - t["phi_prime"][0])
                lines.append({"toy": name, "arm": arm, "pair": pair, "gain": gain, "step": int(t["steps"][i]),
                              "mean": c.mean, "lo": c.lo, "hi": c.hi})
    return lines


def matched_rows(matched: list[dict]) -> list[str]:
    return [f"| toy, {m['toy']} | {m['arm']} | {m['pair']}: {m['gain']:+.3f} | {m['step']} | "
            f"{m['mean']:+.3f} {_fmt_ci(m['lo'], m['hi'])} |" for m in matched]


def decomposition_table(stage_runs: dict[str, dict]) -> list[str]:
    """Mean over logged steps and seeds of each term's first-order change of E[phi'] (and E[phi])."""
    lines = ["| pair | arm | on E[φ′]: by φ's adv. | by φ′'s adv. | by KL | on E[φ]: by φ's adv. | cos(∇E[φ], ∇E[φ′]) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for pair, runs in stage_runs.items():
        for point, arm in ARMS.items():
            run = runs[point]
            cells = []
            for name in ("dphi_prime_by_phi", "dphi_prime_by_phi_prime", "dphi_prime_by_kl", "dphi_by_phi",
                         "cos_grad_phi_phi_prime"):
                x = run[name][1:].mean(0)  # per seed, over the logged updates
                c = stats.contrast(x)
                interval = f" [{c.lo:+.3g}, {c.hi:+.3g}]" if np.isfinite(c.lo) else ""
                cells.append(f"{c.mean:+.3g}{interval}")
            lines.append(f"| {pair} | {arm} | " + " | ".join(cells) + " |")
    return lines


def peer_rows(stage_runs: dict[str, dict], results: Path, pair: str = "I") -> list[str]:
    """TRL's GRPOTrainer on the pair's paid arm (experiments/trl/grpo_trl.py; results/decisive/trl/
    <pair>_seed*.json) beside sim's: each reward's mean over the training batch at the steps sim
    logs (the batch of step t is drawn by the policy after t - 1 updates in both), per TRL seed,
    against sim's mean and range over its seeds."""
    files = sorted((results / "trl").glob(f"{pair}_seed*.json"))
    if pair not in stage_runs or not files:
        return []
    run = stage_runs[pair][0]  # the paid arm
    peers = [json.loads(f.read_text()) for f in files]
    lines = ["| reward | step | sim: mean over seeds [min, max] | TRL: " + ", ".join(f"seed {i}" for i in range(len(peers)))
             + " | TRL within sim's range |", "| --- | --- | --- | --- | --- |"]
    logged = [i for i, step in enumerate(run["steps"]) if step > 0]
    for metric, label in (("phi", "φ"), ("phi_prime", "φ′")):
        rows = [(str(run["steps"][i]), run[f"{metric}_sampled"][i],
                 [p["mean_reward_per_step"][metric][run["steps"][i] - 1] for p in peers]) for i in logged]
        # the mean over the logged steps: 4 batches per seed, the least noisy comparison
        rows.append(("mean of these", np.mean([r[1] for r in rows], 0), list(np.mean([r[2] for r in rows], 0))))
        for step, x, trl in rows:
            within = sum(x.min() <= t <= x.max() for t in trl)
            lines.append(f"| {label} | {step} | {x.mean():.3f} [{x.min():.3f}, {x.max():.3f}] | "
                         + ", ".join(f"{t:.3f}" for t in trl) + f" | {within} of {len(trl)} |")
    return lines


def answer(rows: list[dict]) -> str:
    """The blog's question answered by the verdicts' rule, whatever they are."""
    v = {r["contrast"]: r["verdict"] for r in rows}
    i, n = v.get("I.paid"), v.get("N.paid")
    if i is None or n is None:
        return "Not answered yet: a pair's primary runs are missing."
    if i == "down" and n == "down":
        return ("φ′ falls in both pairs, also where φ's tokens are good for φ′ (N): a fall that spill cannot "
                "explain, as the KL-asymmetry account predicts.")
    if i == "down" and n in ("up", "equivalent"):
        return ("φ′ falls only where φ's tokens are bad for it (I), not where they are good for it (N), at the "
                "same κ′: the spill account's outcome, not the KL-asymmetry account's.")
    if i == "down":
        return ("φ′ falls where φ's tokens are bad for it (I); in N the verdict is inconclusive, so the two "
                "accounts are not told apart yet.")
    if i in ("up", "equivalent") and n in ("up", "equivalent"):
        return "φ′ does not fall in either pair at this size: neither account's fall is seen on this model."
    return "Inconclusive: the runs cannot yet say whether φ′ falls (see the verdicts above)."


def choose_stage(spec: dict, results: Path) -> tuple[str, dict[str, dict]]:
    """(stage, its runs): the main run once all of it is stored; "main (interim)" while a main run
    that extends the pilot has some of its chunks stored (the pilot's seeds and those chunks');
    else the pilot."""
    main = load_stage(spec, results, "main")
    if len(main) == len(spec["pairs"]):
        return "main", main
    if spec["main"].get("seeds") and any(path.exists() for pair in spec["pairs"]
                                         for path in stage_csvs(spec, results, "main", pair)[1:]):
        return "main (interim)", load_stage(spec, results, "main", partial=True)
    return "pilot", load_stage(spec, results, "pilot")


def section(spec: dict, results: Path, out: Path) -> str:
    """REPORT §9: from the main run where it exists, else from the pilot (said so)."""
    pairs = json.loads((results / "pairs.json").read_text()) if (results / "pairs.json").exists() else {}
    stage, stage_runs = choose_stage(spec, results)
    lines = ["## 9. Does φ′ fall on a real model? The decisive experiment", ""]
    lines += ["SmolLM2-135M-Instruct, LoRA r16 on the frozen base, GRPO on r = 4·φ + w₂·φ′ with β = 0.04; "
              "design in experiments/decisive.yaml and docs/real-experiment.md, written before the main run."]
    has_runs = bool(stage_runs)
    if stage == "main (interim)":
        done = ", ".join(f"{p} {len(r[0]['seeds'])}" for p, r in stage_runs.items())
        lines += ["", f"**The main run is under way** (`python -m experiments.decisive run main`, resumable): seeds so "
                  f"far, of {spec['main']['seeds']} per pair: {done}. The verdicts below are INTERIM, from the seeds "
                  "stored so far; the pre-registered analysis is the one on all of them."]
    if stage.startswith("main") and spec["main"].get("extends_pilot"):
        lines += ["", f"The main run's {spec['main']['seeds']} seeds per pair include the pilot's "
                  f"{spec['pilot']['seeds']} (seeds 0–{spec['pilot']['seeds'] - 1}: the same configuration and seeds, "
                  "so the same runs up to float rounding that depends on the batch; an internal pilot), trained only "
                  f"from seed {spec['pilot']['seeds']} on (experiments/decisive.yaml, `amendments`)."]
    if stage == "pilot" and has_runs:
        lines += ["", "**Only the pilot has run** (`python -m experiments.decisive run pilot`): its verdicts below "
                  "are exploratory, from its few seeds; the main run's (`run main`, seeds from `power`) replace them."]
    elif not has_runs:
        lines += ["", "**No valid run yet.** A first pilot (2026-12-08, pair I) was discarded: its LoRA runs were spread "
                  "over two CPU devices, where the training batches were sampled wrongly (docs/real-models.md, "
                  "\"Known problem\"); LoRA runs now stay on one device. What follows is the design's measured "
                  "ground: the pairs and the toy's prediction."]
    lines += ["", "| pair | φ at ref | φ′ at ref | corr(φ, φ′) | κ′ ± SE | φ's words in φ′'s window |",
              "| --- | --- | --- | --- | --- | --- |"]
    for pair, p in pairs.items():
        k = p["kappa"]["phi_prime"]
        role = "bad (spill lowers φ′)" if pair == "I" else "good (spill cannot lower φ′)"
        lines.append(f"| {pair} | {p['mean_phi']:.3f} | {p['mean_phi_prime']:.3f} | {p['corr']:+.3f} "
                     f"{_fmt_ci(*p['corr_ci95_bootstrap_prompts'])} | {k['kappa']:.3f} ± {k['kappa_se']:.3f} | {role} |")
    rows = primary_contrasts(spec, stage_runs)
    if rows:
        plot_rewards(stage_runs, out / "decisive.png", f"{stage}: mean and 95% band over seeds")
        plot_decomposition(stage_runs, out / "decisive_decomposition.png")
        lines += ["", "![phi and phi_prime against step](decisive.png)", "",
                  f"Δφ′ (endpoint: the mean of the last {spec['endpoint']['last_evaluations']} evaluations minus "
                  f"step 0, per seed), Holm-corrected over the {len(rows)} primary contrasts; the intervals are "
                  f"simultaneous (Bonferroni, each at 1 − α/{len(rows)}); \"no change\" needs TOST within "
                  f"±{spec['margin']}.", "",
                  "| contrast | seeds | Δφ′ | simultaneous 95% CI | p (Holm) | verdict |", "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            p = "n/a" if r["p_holm"] is None else f"{r['p_holm']:.3g}"
            lines.append(f"| {r['contrast']} | {r['seeds']} | {r['mean']:+.3f} | {_fmt_ci(*r['ci_bonferroni'])} | {p} | "
                         f"{r['verdict']} |")
        lines += ["", "**The answer, by the rule above:** " + answer(rows), "",
                  "The gradient decomposition (docs/outputs.md): each term's first-order change of E[φ′] per unit "
                  "learning rate, mean over the logged updates per seed, then over seeds with a 95% interval.", "",
                  "![decomposition](decisive_decomposition.png)", ""] + decomposition_table(stage_runs)
    else:
        lines += ["", f"No {stage} runs are stored yet: `python -m experiments.decisive run {stage}`."]
    peer = peer_rows(stage_runs, results)
    if peer:
        lines += ["", "A peer on pair I's paid arm: TRL's GRPOTrainer with a peft LoRA of the same rank, targets, "
                  "prompts, weights, β and lr (experiments/trl/grpo_trl.py, float32), against sim's runs: each "
                  "reward's mean over a step's training batch (16 responses), which both log.", ""] + peer
    toy = toy_rows(spec, results / "runs" / "toy")
    if toy:
        lines += ["", "The toy's prediction for the same structures (κ′ = 1.14, 32 seeds, 200 steps): with features "
                  "shared across positions (I's structure), and with nothing shared (tabular: the KL asymmetry alone, "
                  "what N isolates).", "", "| toy | arm | Δφ′ (95% CI) | verdict |", "| --- | --- | --- | --- |"] + toy
    matched = toy_at_matched_gain(spec, results / "runs" / "toy", stage_runs) if stage_runs else []
    if matched:
        lines += ["", "The same toy runs at the real model's size of change: Δφ′ at the first logged step where the "
                  "toy's mean φ has gained what the real model's gained by its endpoint (mean over seeds, paid and "
                  "unpaid arm of each pair). Beside the equivalence margin (±"
                  f"{spec['margin']}) and the MDE ({spec['mde']}), this is the size of fall each account predicts "
                  "for a run this short.", "", "| toy | arm | real Δφ (pair) | toy step | toy Δφ′ there (95% CI) |",
                  "| --- | --- | --- | --- | --- |"] + matched_rows(matched)
        falls = [-m["mean"] for m in matched if (m["toy"], m["arm"], m["pair"]) == ("shared", ARMS[0], "I")]
        if falls and max(falls) < spec["margin"]:
            size = f"{min(falls):.3f}" if f"{min(falls):.3f}" == f"{max(falls):.3f}" else \
                f"{min(falls):.3f} to {max(falls):.3f}"
            lines += ["", f"**Caveat.** At this size of change the toy's spill predicts a fall of {size} in pair I's "
                      f"paid arm, inside the ±{spec['margin']} equivalence margin and under the "
                      f"MDE of {spec['mde']}: an \"equivalent\" verdict above does not rule out a fall of the toy's "
                      "size at this φ gain; longer training (a larger gain in φ) would."]
    return "\n".join(lines) + "\n"
