"""REPORT.md's real-model section and experiments/real_model.png, from STORED results only.

Reads each experiments/results/real_model/runs/<name>/ (metrics.csv, summary.json, run.json) that
experiments/real_model.py wrote; trains nothing. Every number is computed here with the report's
statistics (experiments/report.py: mean over seeds of end - start, 95% Student-t interval), and
every sentence of the verdict is chosen by the verdicts of sim/analysis/stats.py (a family per statistic,
Holm-corrected over the runs; "no change" only by TOST), so the text follows the results.
"""
from __future__ import annotations

import csv
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from experiments import figures
from experiments.report import MARGIN, fmt, judge, mean_ci95, table
from sim.analysis import stats
from sim.analysis.diagnostics import CELLS, TIE

HERE = Path(__file__).resolve().parent
SPEC = HERE / "real_model.yaml"
RUNS = HERE / "results" / "real_model" / "runs"
REFERENCE = HERE / "results" / "text_rewards" / "text_rewards.json"  # experiments/text_rewards.py's
SECTION_BEGIN, SECTION_END = "<!-- real-model section: begin -->", "<!-- real-model section: end -->"

def load_spec(path: Path = SPEC) -> dict:
    return yaml.safe_load(path.read_text())


def overrides(spec: dict, name: str) -> list[str]:
    """The sim.run overrides of one configuration: the file's `common` ones, then its own."""
    return list(spec.get("common", [])) + list(spec["runs"][name])


def command(spec: dict, name: str) -> str:
    """The shell command that redoes one configuration alone (its output directory aside)."""
    return "python -m sim.run " + " ".join(shlex.quote(o) for o in overrides(spec, name))


def replace_section(report_text: str, section: str) -> str:
    """REPORT.md with its real-model section (between the markers) replaced, or appended."""
    block = f"{SECTION_BEGIN}\n{section.rstrip()}\n{SECTION_END}\n"
    if SECTION_BEGIN in report_text and SECTION_END in report_text:
        head, rest = report_text.split(SECTION_BEGIN, 1)
        return head + block + rest.split(SECTION_END, 1)[1].lstrip("\n")
    return report_text.rstrip("\n") + "\n\n" + block


# The roles the verdict reads; experiments/real_model.yaml names its configurations so.
MAIN, NO_FLOOR, STRONG_KL, RARE = "main", "no_phi_prime", "beta_x10", "rare_phi_prime"
QUAD_COLUMNS = ("uu", "ud", "ut", "du", "dd", "dt")  # the rows with phi tied (tu, td, tt) are counted in "tied"


def _cell_name(c: str) -> str:
    arrow = {"u": "↑", "d": "↓", "t": "‖"}
    return f"φ{arrow[c[0]]} φ′{arrow[c[1]]}"


# a verdict (sim/analysis/stats.py) as the sentences below read it
WORD = {"up": "rises", "down": "falls", "equivalent": "no change", "inconclusive": "inconclusive"}


@dataclass(frozen=True)
class Stored:
    name: str
    steps_T: np.ndarray
    seeds_N: np.ndarray
    metrics: dict[str, np.ndarray]  # name -> [T, N] over the healthy runs (diverged ones left out)
    n_diverged: int
    summary: dict
    info: dict  # run.json ({} when absent)
    path: Path | None = None  # the run directory

    def delta_N(self, metric: str) -> np.ndarray:
        return self.metrics[metric][-1] - self.metrics[metric][0]

    def change(self, metric: str) -> tuple[float, float, float]:
        return mean_ci95(self.delta_N(metric))

    def paired_delta_N(self, other: "Stored", metric: str) -> np.ndarray:
        """Δmetric here minus Δmetric in `other`, paired by seed over the seeds both have."""
        common = np.intersect1d(self.seeds_N, other.seeds_N)

        def delta(s: Stored):
            x = s.metrics[metric]
            return np.array([x[-1, i] - x[0, i] for i in (int(np.flatnonzero(s.seeds_N == c)[0]) for c in common)])
        return delta(self) - delta(other) if len(common) else np.zeros(0)

    def paired_change(self, other: "Stored", metric: str) -> tuple[float, float, float]:
        d_N = self.paired_delta_N(other, metric)
        return mean_ci95(d_N) if d_N.size else (math.nan, math.nan, math.nan)


def read_metrics(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], int]:
    """(steps_T, seeds_N, metric -> [T, N], number of diverged runs) from a run's metrics.csv."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    runs = sorted({int(r["run"]) for r in rows})
    steps = sorted({int(r["step"]) for r in rows})
    diverged = {int(r["run"]) for r in rows if int(float(r.get("diverged_at_step", -1))) >= 0}
    healthy = [r for r in runs if r not in diverged]
    col = {r: i for i, r in enumerate(healthy)}
    row = {s: i for i, s in enumerate(steps)}
    names = [k for k in rows[0] if k not in ("run", "seed", "point", "step", "diverged_at_step")]
    metrics = {k: np.full((len(steps), len(healthy)), np.nan) for k in names}
    seeds = np.zeros(len(healthy), np.int64)
    for r in rows:
        run = int(r["run"])
        if run in col:
            seeds[col[run]] = int(r["seed"])
            for k in names:
                metrics[k][row[int(r["step"])], col[run]] = float(r[k])
    return np.array(steps), seeds, metrics, len(diverged)


def load(runs_dir: Path, names) -> dict[str, Stored]:
    """The stored runs among `names` that finished (summary.json written), in that order."""
    out = {}
    for name in names:
        d = runs_dir / name
        if not (d / "summary.json").exists():
            continue
        steps_T, seeds_N, metrics, n_div = read_metrics(d / "metrics.csv")
        info = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
        out[name] = Stored(name, steps_T, seeds_N, metrics, n_div, json.loads((d / "summary.json").read_text()), info, d)
    return out


# --- facts: the numbers each sentence rests on ----------------------------------------------

def kappa(s: Stored, reward: str = "phi_prime") -> tuple[float | None, float | None]:
    """The reference's sampled tilt kappa of a reward and its bootstrap standard error."""
    tilt = s.summary["points"][0].get("geometry", {}).get(reward, {}).get("tilt", {})
    return tilt.get("kappa"), tilt.get("kappa_se")


def kappa_side(k: float | None, se: float | None) -> str:
    """'> 1' / '< 1' when kappa is more than two standard errors from 1, else 'indistinguishable from 1'."""
    if k is None:
        return "not measured"
    if se is None or not math.isfinite(se):
        return "> 1 (no error bar)" if k > 1 else "< 1 (no error bar)" if k < 1 else "= 1"
    return "> 1" if k - 2 * se > 1 else "< 1" if k + 2 * se < 1 else "indistinguishable from 1"


def sample_quadrants(path: Path) -> dict | None:
    """The quadrant table with ties in their own cells, from the responses samples.jsonl stored at
    each logged step after step 0 (policy.eval.samples per prompt: each prompt's samples are a group,
    compared with their mean as diagnostics.quadrant_metrics does). The stored batch table
    (quad_frac_*) of runs made before ties had their own cells counts a tie as down, which with a
    φ′ nearly every response gets right makes the blog's inequality hold by construction; these are
    the stored numbers that tell ties apart. Per seed, pooled over steps: p(ud) − p(uu) among untied
    samples (`gap_N`) and the share of ties; `cells`: each cell's share of all samples."""
    if not path.exists():
        return None
    groups: dict[tuple, list] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["step"] > 0:
            groups.setdefault((r["seed"], r["step"], r["prompt_index"]), []).append((r["phi"], r["phi_prime"]))
    side = lambda c: np.where(c > TIE, "u", np.where(c < -TIE, "d", "t"))  # noqa: E731
    counts: dict[int, dict[str, int]] = {}
    for (seed, _, _), values in groups.items():
        v = np.array(values, np.float64)
        c = side(v - v.mean(0))
        for a, b in c:
            counts.setdefault(seed, dict.fromkeys(CELLS, 0))[a + b] += 1
    if not counts:
        return None
    seeds = sorted(counts)
    untied = np.array([sum(counts[s][q] for q in ("uu", "ud", "du", "dd")) for s in seeds], np.float64)
    total = np.array([sum(counts[s].values()) for s in seeds], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap_N = np.array([counts[s]["ud"] - counts[s]["uu"] for s in seeds]) / untied
    return {"gap_N": gap_N[untied > 0], "tie_share": float(1 - untied.sum() / total.sum()),
            "cells": {c: sum(counts[s][c] for s in seeds) / total.sum() for c in CELLS}}


def facts_of(runs: dict[str, Stored]) -> dict:
    """Each run's changes (mean and CI) and their verdicts ("v"): one family per statistic over the
    runs (Δφ, Δφ′, Δspill, the paired Δφ′ against the main run, the quadrant gap), Holm-corrected."""
    f, family = {}, {k: {} for k in ("d_phi", "d_pp", "d_spill", "paired_d_pp", "ineq")}
    for name, s in runs.items():
        quads = sample_quadrants(s.path / "samples.jsonl") if s.path is not None else None
        f[name] = {"d_phi": s.change("phi"), "d_pp": s.change("phi_prime"),
                   "d_spill": s.change("spill") if "spill" in s.metrics else (math.nan,) * 3,
                   "kappa": kappa(s), "seeds": len(s.seeds_N), "quadrants": quads,
                   "ineq": None if quads is None or not quads["gap_N"].size else stats.contrast(quads["gap_N"])[:3]}
        family["d_phi"][name], family["d_pp"][name] = s.delta_N("phi"), s.delta_N("phi_prime")
        if "spill" in s.metrics:
            family["d_spill"][name] = s.delta_N("spill")
        if quads is not None:
            family["ineq"][name] = quads["gap_N"]
    if MAIN in runs:
        for other in (NO_FLOOR, STRONG_KL):
            if other in runs:
                f[other]["paired_d_pp"] = runs[other].paired_change(runs[MAIN], "phi_prime")
                family["paired_d_pp"][other] = runs[other].paired_delta_N(runs[MAIN], "phi_prime")
    verdicts = {k: judge(v) for k, v in family.items()}
    for name in runs:
        f[name]["v"] = {k: v[name] for k, v in verdicts.items() if name in v}
    return f


def _k(k, se) -> str:
    return "n/a" if k is None else f"{k:.3f}" + ("" if se is None else f" ± {se:.3f}")


def _against_main(d: dict, head: str, paired: str, says: dict, otherwise: str) -> str:
    """A control's line: `head`, its Δφ′ verdict, then its Δφ′ paired by seed with the main run's
    (`paired` with the interval at {}) and what that says (`says` by verdict, else `otherwise`)."""
    dv = d.get("v", {})
    return (f"- {head}, {WORD[dv.get('d_pp', 'inconclusive')]}; against the main run, paired by seed, "
            + paired.format(fmt(d.get("paired_d_pp", (math.nan,) * 3))) + says.get(dv.get("paired_d_pp"), otherwise))


def verdict(f: dict) -> str:
    """The plain-language conclusions; each sentence quotes its statistic and is chosen by it."""
    if MAIN not in f:
        return "- The main run has no stored results yet: no verdict.\n"
    m = f[MAIN]
    k_side = kappa_side(*m["kappa"])
    lines = [f"- **The blog's premise** (κ′ > 1 at the reference): the reference's sampled κ′ is "
             f"{_k(*m['kappa'])}, {k_side}" + (" (the premise holds).\n" if k_side.startswith("> 1") else
                                              " (the premise cannot be checked).\n" if m["kappa"][0] is None else
                                              " (the premise does not hold for this φ′).\n")]
    v = m.get("v", {})
    phi_rises, pp = v.get("d_phi") == "up", WORD[v.get("d_pp", "inconclusive")]
    if not phi_rises:
        lines.append(f"- **The blog's claim is not tested by this run**: φ does not clearly rise "
                     f"(Δφ {fmt(m['d_phi'])} over {m['seeds']} seeds), so nothing can ride along with its gains; "
                     "train longer or harder before reading Δφ′.\n")
    elif pp == "falls":
        lines.append(f"- **The blog's picture reproduces on the real model**: φ rises by {fmt(m['d_phi'])} while "
                     f"φ′ falls by {fmt(m['d_pp'])} ({m['seeds']} seeds).\n")
    elif pp == "rises":
        lines.append(f"- **The blog's picture does not reproduce on the real model**: φ rises by {fmt(m['d_phi'])} "
                     f"and φ′ rises too, by {fmt(m['d_pp'])} ({m['seeds']} seeds).\n")
    elif pp == "no change":
        lines.append(f"- **φ′ does not move on the real model**: φ rises by {fmt(m['d_phi'])} while "
                     f"Δφ′ = {fmt(m['d_pp'])} ({m['seeds']} seeds) is within ±{MARGIN:g} (TOST).\n")
    else:
        lines.append(f"- **The blog's picture is not seen at this precision**: φ rises by {fmt(m['d_phi'])} but "
                     f"Δφ′ = {fmt(m['d_pp'])} ({m['seeds']} seeds) is inconclusive: neither a change nor its "
                     f"absence (within ±{MARGIN:g}) is shown.\n")
    # the toy's prediction: phi_prime falls only through shared features (spill); toy networks raise both
    spill = WORD[v["d_spill"]] if "d_spill" in v else "not measured"
    if phi_rises and pp == "falls":
        lines.append("- **The toy's mechanism** (φ′ falls only through shared features, so φ's tokens spread to φ′'s "
                     f"positions): the probability of φ's tokens there (`spill`) changes by {fmt(m['d_spill'])}, "
                     + ("consistent with it" if spill == "rises" else
                        "inconclusive, so this run neither supports nor rules out the toy's mechanism"
                        if spill == "inconclusive" else
                        "so the fall is NOT carried by spill-over: against the toy's mechanism")
                     + ". The real model behaves like the toy's lowrank policy, not like its networks (which raised "
                     "both rewards). (Spill lowers φ′ only where φ's tokens are bad for φ′: not so for the default "
                     "pair, docs/real-experiment.md.)\n")
    elif phi_rises:
        lines.append("- **The toy's prediction**: every toy network (shared features, but not built to make φ's "
                     "positions indistinguishable from φ′'s) raised both rewards; here φ′ "
                     + ("rises too: the real model behaves like the toy's networks, not like the lowrank policy the "
                        "blog's picture needs.\n" if pp == "rises" else
                        f"does not clearly move ({pp}): neither the toy networks' rise nor the lowrank policy's fall "
                        "is seen.\n")
                     + f"  `spill` changes by {fmt(m['d_spill'])}.\n")
    ineq = m.get("ineq")
    if ineq is not None:
        lines.append(f"- **The quadrant table** (main run, the stored samples of every logged step; a tie with the "
                     f"group's mean is neither up nor down): p(φ↑φ′↓) − p(φ↑φ′↑) among untied samples is {fmt(ineq)}, "
                     f"with {m['quadrants']['tie_share']:.0%} of samples tied: "
                     + {"up": "the blog's inequality holds.\n", "down": "the blog's inequality is reversed.\n",
                        "equivalent": f"no difference within ±{MARGIN:g}.\n"}.get(
                         v.get("ineq"), "inconclusive.\n"))
    if RARE in f:
        r = f[RARE]
        r_side = kappa_side(*r["kappa"])
        what = WORD[r.get("v", {}).get("d_pp", "inconclusive")]
        lines.append(f"- **κ′ < 1 control** (a φ′ the reference rarely meets: κ′ = {_k(*r['kappa'])}, {r_side}): Δφ′ = "
                     f"{fmt(r['d_pp'])}, {what}. "
                     + ("With κ′ below 1 the blog predicts no fall; a fall here means κ′ > 1 is not needed, as with "
                        "the toy's shared features.\n" if what == "falls" else
                        f"Neither a fall nor its absence (within ±{MARGIN:g}) is shown, so this control tests nothing "
                        "yet.\n" if what == "inconclusive" else
                        "As the blog's κ account predicts for κ′ < 1, it does not fall"
                        + (" (the control's κ′ is not below 1, so it does not test that)" if not r_side.startswith("< 1") else "")
                        + ".\n"))
    if NO_FLOOR in f:
        d = f[NO_FLOOR]
        lines.append(_against_main(d, f"**φ′ not rewarded** (w₂ = 0): Δφ′ = {fmt(d['d_pp'])}", "{}: ", {
            "down": "φ′ ends lower without its reward, so w₂·φ′ acts as a floor.\n",
            "up": "φ′ ends higher without its reward: no floor effect.\n",
            "equivalent": f"the same within ±{MARGIN:g} (TOST): no floor effect.\n"},
            "inconclusive, so no floor effect is measurable here.\n"))
    if STRONG_KL in f:
        d = f[STRONG_KL]
        lines.append(_against_main(d, f"**β × 10**: Δφ = {fmt(d['d_phi'])}, Δφ′ = {fmt(d['d_pp'])}",
                                   "Δφ′ differs by {} ", {
            "up": "(the stronger penalty keeps φ′ higher).\n",
            "down": "(the stronger penalty makes φ′ end lower).\n",
            "equivalent": f"(the same within ±{MARGIN:g}, TOST).\n"}, "(inconclusive).\n"))
    return "".join(lines)


# --- the section -----------------------------------------------------------------------------

def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"  # None: summary.json's NaN (e.g. one seed: no interval)


def _minutes(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def precision(runs: dict[str, Stored], reference_file: Path = REFERENCE) -> str:
    """What one logged value is made of, so a zero-width interval is read right; and the default
    pair's κ measured on many more reference samples (REFERENCE), when stored."""
    s = runs.get(MAIN) or next(iter(runs.values()))
    config = s.path / "config.yaml" if s.path is not None else None
    cfg = yaml.safe_load(config.read_text()) if config is not None and config.exists() else {}
    n = (cfg.get("task") or {}).get("prompts", 0) * ((cfg.get("policy") or {}).get("eval") or {}).get("samples", 0)
    text = ""
    if n:
        text += (f"Precision: a seed's φ and φ′ at a logged step are Monte Carlo means over {n} responses (task.prompts x "
                 f"policy.eval.samples), so an `all`-shaped φ′ moves in steps of 1/{n} = {1 / n:.4f} per seed; an "
                 f"interval of width 0 means every seed ended where it started, not a measured absence of effect. ")
    if reference_file.exists():
        ref = json.loads(reference_file.read_text())
        k = ref["kappa"]["phi_prime"]
        text += (f"The reference's κ′ of the default pair on {ref['samples']} responses "
                 f"(`python -m experiments.text_rewards`, docs/text-task.md): {k['kappa']:.3f} ± {k['kappa_se']:.3f} "
                 f"(κ(φ) {ref['kappa']['phi']['kappa']:.3f} ± {ref['kappa']['phi']['kappa_se']:.3f}); the runs' own "
                 "step-0 samples are too few to place it.")
    return text + "\n" if text else ""


def render(spec: dict, runs_dir: Path, out: Path) -> str:
    """The section's markdown; draws out/real_model.png when any run is stored."""
    names = list(spec["runs"])
    labels = spec.get("labels", {})
    label = lambda n: labels.get(n, n)  # noqa: E731
    head = ("## 10. The first real-model attempt: the blog's default pair (not decisive)\n\n"
            "Kept for the record: §9 says why it could not decide (3 seeds, a φ′ near its ceiling that φ's "
            f"tokens cannot lower) and replaces it. {spec['title']}. Configurations: `experiments/real_model.yaml`; trained by "
            "`python -m experiments.real_model run [--only NAME]` (one `python -m sim.run` per configuration, "
            "seeds one after another; not rerun by `python -m experiments.regenerate`, which re-renders this "
            "section from the stored results in `experiments/results/real_model/runs/`, as "
            "`python -m experiments.real_model report` does).\n\n")
    runs = load(runs_dir, names)
    if not runs:
        return head + ("No stored results yet: run `python -m experiments.real_model run`, then "
                       "`python -m experiments.real_model report`.\n")
    f = facts_of(runs)
    panels = [(label(n), s.steps_T, {k: s.metrics[k] for k in ("phi", "phi_prime")}) for n, s in runs.items()]
    seeds = sorted({len(s.seeds_N) for s in runs.values()})
    figures.rewards_panels(out / "real_model.png", panels,
                           f"SmolLM2-135M-Instruct: φ and φ′ (mean and 95% band over {'/'.join(map(str, seeds))} seeds)")
    missing = [n for n in names if n not in runs]
    cmd_rows = []
    for n in names:
        s = runs.get(n)
        info = s.info if s else {}
        summ = s.summary if s else {}
        stale = "overrides" in info and info["overrides"] != overrides(spec, n)  # stored with --extra, or an older yaml
        as_run = info.get("command", command(spec, n)) + (" (NOT real_model.yaml's configuration)" if stale else "")
        cmd_rows.append([label(n), f"`python -m experiments.real_model run --only {n}`", f"`{as_run}`",
                         "not run" if s is None else f"{len(s.seeds_N)}" + (f" ({s.n_diverged} diverged)" if s.n_diverged else ""),
                         "not run" if s is None else f"{int(s.steps_T[-1])}",
                         "n/a" if s is None else _minutes(info.get("wall_seconds")),
                         "n/a" if s is None else f"{summ.get('compile_seconds', math.nan):.0f} / {summ.get('run_seconds', math.nan):.0f}",
                         "n/a" if s is None else f"{summ.get('run_seconds', math.nan) / (int(s.steps_T[-1]) * (len(s.seeds_N) + s.n_diverged)):.1f}",
                         "n/a" if not info else f"{info['load_average']['start']:.1f} → {info['load_average']['end']:.1f}"])
    ref_rows, res_rows, quad_rows = [], [], []
    for n, s in runs.items():
        p0 = s.summary["points"][0]
        geo, ortho = p0.get("geometry", {}), (p0.get("orthogonality") or {}).get("reference") or {}
        ref_rows.append([label(n)] + [
            "n/a" if r not in geo else f"{geo[r]['mean']:.3f} ± {_num(geo[r]['mean_se'])}" for r in ("phi", "phi_prime")]
            + [_k(*kappa(s, "phi")), _k(*kappa(s)), kappa_side(*kappa(s)),
               "n/a" if ortho.get("corr") is None else f"{ortho['corr']:+.3f} ({ortho['samples']} samples)"])
        fn = f[n]
        res_rows.append([label(n), fmt(fn["d_phi"]), fmt(fn["d_pp"]), WORD[fn["v"]["d_pp"]], fmt(fn["d_spill"]),
                         f"{np.mean(s.metrics['kl'][-1]):.4f}" if "kl" in s.metrics else "n/a"])
        qs = fn["quadrants"]
        quad_rows.append([label(n)] + ["n/a" if qs is None else f"{qs['cells'][c]:.3f}" for c in QUAD_COLUMNS]
                         + ["n/a" if qs is None else f"{qs['tie_share']:.0%}",
                            "n/a" if fn["ineq"] is None else f"{fmt(fn['ineq'])} {WORD[fn['v']['ineq']]}"])
    return (
        head + "### What the numbers say\n\n" + verdict(f) + "\n" + precision(runs) + "\n"
        + ("Not run yet: " + ", ".join(f"`{n}`" for n in missing) + ".\n\n" if missing else "")
        + "![real model](real_model.png)\n\n"
        "### Runs\n\nWall time is the whole `sim.run` process (loading, compiling, training, analysis); train s / "
        "step is the training time (logged evaluations included) per step and seed; the load average says how "
        "busy the 2-core machine was.\n\n"
        + table(["run", "command", "as sim.run", "seeds", "steps", "wall (min)", "compile / train (s)", "train s / step", "load"], cmd_rows)
        + "\n### The reference (step 0's samples)\n\nMeans of φ and φ′ over the reference's sampled responses, their "
        "sampled tilt κ = C(+δ)/C(−δ) with its bootstrap standard error, and the correlation of φ and φ′.\n\n"
        + table(["run", "E_ref φ", "E_ref φ′", "κ(φ)", "κ′", "κ′ vs 1 (2 s.e.)", "corr(φ, φ′)"], ref_rows)
        + "\n### Changes over training\n\nΔ is end − start per seed; mean and 95% Student-t interval over seeds. "
        "`spill`: probability of one of φ's tokens at φ′'s positions. KL: exact per-token KL to the reference "
        "summed over the response, at the end.\n\n"
        + table(["run", "Δφ", "Δφ′", "φ′", "Δspill", "KL at end"], res_rows)
        + "\n### The quadrant table\n\nFrom the responses stored in samples.jsonl at every logged step after "
        "step 0, each compared with its prompt's other samples (its group's mean): the share of samples per cell "
        "(↑ above, ↓ below, ‖ a tie, at the mean: neither up nor down), the share of ties, and p(φ↑φ′↓) − "
        "p(φ↑φ′↑) among untied samples per seed with its 95% CI and verdict (`rises`: the blog's inequality "
        "holds; Holm over the runs). The batch table stored in summary.json by runs made before ties had cells "
        "of their own counts a tie as ↓, which makes the inequality hold by construction when most samples "
        "tie.\n\n"
        + table(["run"] + [_cell_name(c) for c in QUAD_COLUMNS] + ["tied", "p(ud) − p(uu) among untied"], quad_rows)
        + "\n")
