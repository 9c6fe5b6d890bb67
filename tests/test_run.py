"""The command line as a user meets it: `python -m sim.run` in a subprocess, and its validation
path (`preflight`) in-process for the generated hostile configurations."""
import contextlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sim.config import Experiment, parse
from sim.analysis.diagnostics import CELLS
from sim.experiment import run_experiment
from sim.run import CONF_DIR, preflight
from sim.rl.sweep import expand
from sim.rl.train import EXACT_METRICS, KAPPA_METRICS, make_train, run_keys
from tests.conftest import SMALL, compose_plain


def sim_run(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "sim.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_end_to_end_writes_all_outputs(tmp_path):
    out = tmp_path / "run"
    proc = sim_run(*SMALL, "plots=true", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "metrics.csv", "summary.json", "rewards.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["points"][0]["metrics"]["phi"]["n_seeds"] == 4
    assert "phi" in proc.stdout and "step" in proc.stderr  # result line and progress bar


def test_pretrained_end_to_end_on_a_tiny_checkpoint(tmp_path):
    """task=text policy=pretrained (LoRA, the default) on a tiny random HF checkpoint
    (tests/lm/tiny.py), 2 of 3 training prompts drawn per step and 2 held out: the usual outputs
    plus samples.jsonl (the held-out prompts' responses alone), with phi, phi_prime, KL, the
    reference's sampled kappa and the quadrant table in summary.json."""
    from tests.lm.tiny import write_tiny

    ckpt = write_tiny(tmp_path / "ckpt")["hf_dir"]
    out = tmp_path / "run"
    P, E, G, N, seeds, steps, samples = 3, 2, 4, 6, 2, 2, 2
    # phi_prime is a text reward (a host function of the decoded tokens 3-5), trained like a token rule
    proc = sim_run("task=text", "policy=pretrained", f"policy.checkpoint={ckpt}", f"task.prompts={P}",
                   "task.prompts_per_step=2", f"task.eval_prompts={E}",
                   f"task.new_tokens={N}", "task.phi.positions={start:0,stop:3}", "task.phi_prime.positions={start:3,stop:6}",
                   "~task.phi_prime.rule", "+task.phi_prime.text=no_digits",
                   f"algo.group_size={G}", f"seeds={seeds}", f"steps={steps}", "log_every=1", "optim.lr=0.01",
                   f"policy.eval.samples={samples}", "plots=true", f"hydra.run.dir={out}", cwd=tmp_path,
                   timeout=900)  # ~35 s of CPU (compiling a real model's step); a loaded machine stretches it
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "provenance.json", "metrics.csv", "summary.json", "rewards.png", "samples.jsonl"):
        assert (out / name).stat().st_size > 0, name
    point = json.loads((out / "summary.json").read_text())["points"][0]
    m = point["metrics"]
    assert m["kl"]["start"] == 0 and m["kl"]["end"] > 0 and m["phi"]["n_seeds"] == seeds
    assert {"phi", "phi_prime", "entropy", "phi_se", "kl_sampled", "quad_frac_ud", "adv_share_phi"} <= set(m)
    assert not any(k.startswith("kappa") for k in m)  # the toy's factorised kappa is not logged for a real model
    assert set(point["geometry"]["phi"]["tilt"]) == {"kappa", "kappa_se"}
    assert point["geometry"]["samples_per_prompt"] == seeds * samples
    assert set(point["quadrants"]["cells"]) == set(CELLS)  # ties in their own cells
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == (steps + 1) * seeds * E * samples
    assert [x["step"] for x in lines[::seeds * E * samples]] == [0, 1, 2]
    assert {x["prompt_index"] for x in lines} == {P, P + 1} and all(isinstance(x["response"], str) for x in lines)
    assert all(abs(x["phi"] * 3 - round(x["phi"] * 3)) < 1e-6 and x["phi_prime"] in (0, 1) for x in lines)  # k/3
    ref = [x for x in lines if x["step"] == 0]  # the reference's responses: E[phi] as the summary says
    assert np.mean([x["phi"] for x in ref]) == pytest.approx(point["geometry"]["phi"]["mean"])


def test_pretrained_end_to_end_on_a_tiny_qwen2_checkpoint(tmp_path):
    """The same command on a tiny Qwen2 (q/k/v biases, untied head, rope theta 1e6, Qwen2's
    tokenizer), 2 seeds x 2 steps of the smallest valid text task: it trains (KL moves off 0)."""
    from tests.faults import overrides
    from tests.lm.tiny import write_tiny_qwen2

    ckpt = write_tiny_qwen2(tmp_path / "ckpt")["hf_dir"]
    out = tmp_path / "run"
    proc = sim_run(*overrides({"policy.checkpoint": str(ckpt), "seeds": "2", "steps": "2", "optim.lr": "0.01"}),
                   f"hydra.run.dir={out}", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "summary.json").read_text())["points"][0]["metrics"]
    assert m["phi"]["n_seeds"] == 2 and m["kl"]["start"] == 0 and m["kl"]["end"] > 0
    assert (out / "samples.jsonl").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["policy=cnn"], "policy=cnn: unknown option; allowed values are"),
    (["algo=ppo"], "algo=ppo: unknown option; allowed values are"),
    (["foo=1"], "foo"),
    (["optim.lr=-1"], "optim.lr=-1: must be a finite number > 0"),
    (["algo.group_size=1"], "algo.group_size=1: must be an integer >= 2"),
    (["policy=pretrained"], "policy.kind=pretrained: needs a text task (task=text)"),
    (["task.prompts=[4,8]"], "task.prompts=[4, 8]: static keys cannot be swept in-process; use -m"),
    (["optim.lr=${oops}"], "oops"),
    (["steps=[1,"], "steps=[1,"),
])
def test_bad_input_is_one_line_no_traceback_nonzero_exit(tmp_path, args, message):
    proc = sim_run(*args, f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("args, message", [
    (["algo.kl.bta=0.1"], "algo.kl.bta=0.1: unknown key; allowed keys here are beta, estimator, placement"),
    (["policy=lowrank", "policy.widht=3"], "policy.widht=3: unknown key; allowed keys here are kind, overlap, width"),
    (["seedz=1"], "seedz=1: unknown key; allowed keys here are algo, analysis, batch_invariant,"),
    (["bogus.x=1"], "bogus: unknown key; allowed keys here are algo,"),
    (["algo.kl.beta.x=1"], "algo.kl.beta.x=1: algo.kl.beta is a value, not a section"),
])
def test_an_unknown_key_names_the_keys_its_section_allows_not_hydras_plus_hint(tmp_path, args, message):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as refused:
        preflight(args + [f"hydra.run.dir={tmp_path / 'x'}"])
    text = err.getvalue()
    assert refused.value.code == 2 and text.count("\n") == 1 and "+" not in text, text
    assert text.startswith(f"sim: error: {message}"), text


# 20 chunks of 5 steps, each followed by a checkpoint: long enough to be killed in the middle.
KILLABLE = ["seeds=4", "steps=100", "log_every=5", "task.prompts=4", "plots=false", "chunk_steps=5",
            "checkpoint_seconds=0"]


def _first_checkpoint(out, proc, timeout=240.0):
    """Poll until orbax has renamed a finished checkpoint into place (its name is its step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p.name for p in (out / "checkpoints").glob("*") if p.name.isdigit()]
        if done:
            return done
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint appeared (exit status {proc.poll()})")


def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_metrics(tmp_path):
    out = tmp_path / "run"
    # bit-identical numbers need the same device count: the CLI's is pinned to this process's
    killable = KILLABLE + [f"runtime.cpu_devices={jax.device_count()}"]
    args = [*killable, f"hydra.run.dir={out}"]
    with open(tmp_path / "first.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sim.run", *args], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            _first_checkpoint(out, proc)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists()
    streamed = (out / "metrics.csv").read_text().splitlines()
    assert len(streamed) >= 1 + 2 * 4  # header, step 0 and the first chunk's rows of the 4 runs, at least

    resumed = sim_run(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    step = int(re.search(r"resuming the interrupted run in .* from step (\d+)", resumed.stderr).group(1))
    assert 0 < step < 100

    # the same configuration, uninterrupted, in this process (no checkpoints needed: not part of the hash)
    plain = compose_plain(killable + ["checkpoint_seconds=null"])
    reference = run_experiment(parse(plain), plain, tmp_path / "reference")
    assert (out / "metrics.csv").read_bytes() == (tmp_path / "reference" / "metrics.csv").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["points"] == json.loads(json.dumps(reference["points"]))
    assert summary["config_hash"] == reference["config_hash"] and not (out / "checkpoints").exists()

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    err = io.StringIO()  # the same command once more (its validation path, in-process): reported, left alone
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as again:
        preflight(args)
    assert again.value.code == 0 and "already holds this completed run" in err.getvalue()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_diverged_runs_give_exit_status_3_after_every_output_is_written(tmp_path):
    """w_phi = 3e38 is a valid float32, but a group's rewards sum past the float32 maximum, so every
    run's GRPO advantages (and loss) are non-finite at step 1: all 4 runs are frozen and flagged."""
    out = tmp_path / "run"
    proc = sim_run(*SMALL, "plots=true", "task.phi.weight=3e38", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "sim: warning: 4 of 4 runs diverged" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_diverged"] == 4 and {d["step"] for d in summary["diverged"]} == {1}
    assert summary["points"][0]["metrics"]["phi"]["n_seeds"] == 0
    assert (out / "rewards.png").stat().st_size > 0 and not (out / "checkpoints").exists()


def test_a_run_directory_of_another_configuration_is_refused_before_hydra_writes(tmp_path):
    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)
    (out / "provenance.json").write_text(json.dumps({"config_hash": "0123456789abcdef"}))
    (out / ".hydra" / "overrides.yaml").write_text("- seeds=99\n")
    proc = sim_run(*SMALL, f"hydra.run.dir={out}", cwd=tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "holds a run of another configuration (config_hash 0123456789abcdef" in err
    assert (out / ".hydra" / "overrides.yaml").read_text() == "- seeds=99\n"
    assert sorted(p.name for p in out.iterdir()) == [".hydra", "provenance.json"]


# --- Hostile configurations (hypothesis) -------------------------------------------------------
# Each example is a list of overrides, some drawn from values that are valid for their key and
# some from values that are invalid whatever the other overrides say. It goes through the real
# entry point's validation (`preflight`: Hydra compose + resolve + config.parse + the run
# directory check). It must be accepted, or refused with exit status 2 and one line on stderr;
# any other exception is a traceback and fails the test. An example holding an invalid value
# must be refused.

_WORD = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6).map(lambda s: "x" + s)  # never a keyword
_NOT_A_NUMBER = st.sampled_from(["'5'", "[1,2]", "{a:1}", "true", "${oops}", "[]"]) | _WORD


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def _ints(lo, hi=10**6):
    return st.integers(lo, hi).map(str), (st.integers(-10**6, lo - 1).map(str) | st.floats(0.5, 99.5).map(_num)
                                         | _NOT_A_NUMBER)


def _floats(lo, *, lo_open=False, hi=None, hi_open=False, inf_ok=False):
    """Valid: [lo, hi] (ends open as asked; no hi: up to 1e6, and inf if inf_ok). Invalid: the rest."""
    top = 1e6 if hi is None else hi
    ok = st.floats(lo, top, exclude_min=lo_open, exclude_max=hi_open and hi is not None).map(_num)
    below = st.floats(-1e6, lo).filter(lambda x: x < lo or (lo_open and x == lo))
    bad = below.map(_num) | st.sampled_from(["nan", "-inf"]) | _NOT_A_NUMBER
    if hi is not None:
        bad |= st.floats(hi, 1e6).filter(lambda x: x > hi or (hi_open and x == hi)).map(_num) | st.just("inf")
    elif not inf_ok:
        bad |= st.just("inf")
    return (ok | st.just("inf")) if inf_ok else ok, bad


def _competence():
    """Valid: strictly inside (0, 1) in float32 and not subnormal; the float64 values that round
    out of it (5e-324, 0.99999999) are invalid."""
    tiny, below_one = float(np.finfo(np.float32).tiny), float(np.nextafter(np.float32(1), np.float32(0)))
    ok, bad = _floats(0, lo_open=True, hi=1, hi_open=True)
    return st.floats(tiny, below_one).map(_num), bad | st.sampled_from(["5e-324", "1e-40", "0.99999999"])


def _choice(allowed):
    return st.sampled_from(allowed), _WORD | st.sampled_from(["1", "[a]", "null"])


def _bool():
    return st.sampled_from(["true", "false"]), st.sampled_from(["1", "0", "'true'", "yes", "null", "[true]"])


def _int_list(hi):
    ok = st.lists(st.integers(0, hi - 1), min_size=1, max_size=3, unique=True).map(lambda v: f"[{','.join(map(str, v))}]")
    bad = st.sampled_from(["[]", "[-1]", "[0,0]", "[a]", "[1.5]", "3", "[[1]]", "{a:1}", "xyz"])
    return ok, bad


GROUPS = {group: sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")) for group in ("policy", "algo", "task")}
KEYS = {  # key -> (valid values, invalid values) as Hydra override text
    "seeds": _ints(1), "seed": _ints(0), "steps": _ints(1), "log_every": _ints(1),
    "task.prompts": _ints(1), "task.length": _ints(2, 50), "task.vocab": _ints(4, 50), "task.seed": _ints(0),
    "policy.width": _ints(1), "algo.group_size": _ints(2, 64),
    "chunk_steps": (st.sampled_from(["null", "10", "20", "200"]),
                    st.integers(-1000, 0).map(str) | st.floats(0.5, 99.5).map(_num) | _NOT_A_NUMBER),
    "checkpoint_seconds": (_floats(0)[0] | st.just("null"), _floats(0)[1]),
    "task.phi.weight": _floats(0), "task.phi_prime.weight": _floats(0),
    "task.phi.competence": _competence(), "task.phi_prime.competence": _competence(),
    "task.competence_spread": _floats(0), "policy.overlap": _floats(0, hi=1),
    "algo.kl.beta": _floats(0), "optim.lr": _floats(0, lo_open=True), "algo.std_eps": _floats(0),
    "optim.max_grad_norm": (_floats(0, lo_open=True, inf_ok=True)[0] | st.just("null"),
                            _floats(0, lo_open=True, inf_ok=True)[1]),
    "optim.name": _choice(["adam", "sgd"]), "algo.kl.estimator": _choice(["k1", "k2", "k3", "exact"]),
    "algo.kl.placement": _choice(["loss", "reward"]),
    "algo.mode": _choice(["sampled", "exact"]), "algo.loss.kind": _choice(["pg", "clip"]),
    "algo.loss.aggregation": _choice(["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                      "seq_mean_token_sum_norm"]),
    "algo.loss.epochs": _ints(1, 8), "algo.loss.eps_low": _floats(0, hi=1),
    "algo.loss.eps_high": (_floats(0, inf_ok=True)[0] | st.just("null"), _floats(0, inf_ok=True)[1]),
    "algo.loss.entropy_coef": _floats(0), "task.phi.shape": _choice(["mean", "all"]),
    "task.phi_prime.shape": _choice(["mean", "all"]),
    "algo.advantage": _choice(GROUPS["algo"]),
    "plots": _bool(), "resume": _bool(), "overwrite": _bool(),
    "runtime.cpu_devices": (st.integers(1, 64).map(str) | st.just("auto"), _ints(1)[1]),
    "task.phi.positions": _int_list(4), "task.phi_prime.positions": _int_list(8),
    "task.phi.good_tokens": _int_list(4), "task.phi_prime.good_tokens": _int_list(16),
}
ALWAYS_BAD = ["+foo=1", "foo=1", "+task.bar=2", "+algo.kl.gamma=0.1", "task.phi.weights=4", "~optim.lr",
              "~steps", "steps=[1,", "optim.lr=)", "=3", "steps", "optim.lr=${nope}", "task=5", "optim=5",
              "policy=cnn", "algo=ppo", "task=xyz", "seeds=${task.phi}", "+seeds=3", "task.phi=1",
              "optim.lr=1e400", "task.phi.weight=1" + "0" * 400, "task.phi.weight=1e39", "task.phi.competence=1e-40",
              "task.phi_prime.competence=0.99999999"]


@st.composite
def hostile_overrides(draw) -> tuple[list[str], bool]:
    """(overrides, must_fail): up to 4 key overrides, maybe a group choice and, in hostile
    examples (2 in 3), invalid values and overrides that are wrong in themselves."""
    hostile = draw(st.integers(0, 2)) > 0
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=4, unique=True))
    overrides, must_fail = [], False
    for key in keys:
        bad = hostile and draw(st.booleans())
        overrides.append(f"{key}={draw(KEYS[key][bad])}")
        must_fail |= bad
    if draw(st.booleans()):
        group = draw(st.sampled_from(sorted(GROUPS)))
        overrides.append(f"{group}={draw(st.sampled_from(GROUPS[group]))}")
    if hostile and (not must_fail or draw(st.booleans())):
        overrides.append(draw(st.sampled_from(ALWAYS_BAD)))
        must_fail = True
    return draw(st.permutations(overrides)), must_fail


def test_hostile_configs_are_accepted_or_refused_in_one_line(tmp_path):
    seen = Counter()
    nowhere = tmp_path / "never-created"

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(hostile_overrides())
    def check(case):
        overrides, must_fail = case
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                exp = preflight(overrides + [f"hydra.run.dir={nowhere}"])
                code = 0
            except SystemExit as e:
                code = e.code
        text = err.getvalue()
        if code == 0:
            assert isinstance(exp, Experiment) and text == "", (overrides, text)
            assert not must_fail, f"accepted an invalid override: {overrides}"
        else:
            assert code == 2 and text.startswith("sim: error: ") and text.count("\n") == 1, (overrides, text)
        seen["refused" if code else "accepted"] += 1
        seen["refused, invalid value"] += bool(code and must_fail)

    check()
    print(f"\nhostile configs: {dict(seen)}")
    assert not nowhere.exists()
    assert seen["refused"] + seen["accepted"] >= 200 and seen["refused, invalid value"] >= 100, seen
    assert seen["accepted"] >= 30, seen


def test_hostile_real_model_faults_are_refused_in_one_line_touching_nothing(tmp_path, monkeypatch):
    """The property test's real-model half: a tiny `task=text policy=pretrained` config with one
    fault drawn from tests/faults.py (a damaged or foreign checkpoint, a wrong tensor shape, a bad
    prompts file, a rule matching no token or every token, a context too short, a mesh, a missing
    tracker or coordinator), in a random order with valid overrides of other keys, through the
    command line's path (claim=True): exit 2, one line naming the fault, the directory never created."""
    from tests.faults import VALID, overrides, write_faults

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    good, faults = write_faults(tmp_path / "faults")
    extra = {"seed": KEYS["seed"][0], "optim.lr": KEYS["optim.lr"][0], "algo.kl.beta": KEYS["algo.kl.beta"][0],
             "task.phi.weight": KEYS["task.phi.weight"][0]}
    seen = Counter()

    @settings(max_examples=len(faults), deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(faults)), st.lists(st.sampled_from(sorted(extra)), max_size=2, unique=True)
           .flatmap(lambda keys: st.tuples(*[extra[k].map(lambda v, k=k: f"{k}={v}") for k in keys])), st.randoms())
    def check(name, valid, rng):
        changes, words = faults[name]
        argv = overrides(changes) + list(valid)
        rng.shuffle(argv)
        out = tmp_path / "run"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as refused:
            preflight(argv + [f"hydra.run.dir={out}"], claim=True)
        text = err.getvalue()
        assert refused.value.code == 2 and text.startswith("sim: error: ") and text.count("\n") == 1, (argv, text)
        assert words in text and "Traceback" not in text, (name, text)
        assert not out.exists(), name
        seen[name] += 1

    for name in faults:  # every fault at least once, in VALID's order; the drawn examples shuffle and add keys
        check = example(name, (), random.Random(0))(check)
    check()
    assert set(seen) == set(faults) and sum(seen.values()) >= 2 * len(faults), seen
    assert VALID["task"] == "text"


# A few valid small configs run end to end. Only hparams values vary (the shapes are SMALL's), so
# they all share one compiled program with the other tests.
VALID_SMALL = {key: KEYS[key][0] for key in ("task.phi.weight", "task.phi_prime.weight", "task.phi.competence",
                                             "task.phi_prime.competence", "task.competence_spread", "policy.overlap",
                                             "algo.kl.beta", "optim.lr", "optim.max_grad_norm", "seed")}


@st.composite
def valid_small_overrides(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(sorted(VALID_SMALL)), min_size=1, max_size=5, unique=True))
    return [f"{k}={draw(VALID_SMALL[k])}" for k in keys]


def test_valid_small_configs_run_and_every_run_is_finite_or_flagged(tmp_path):
    ran = []

    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(valid_small_overrides())
    def check(overrides):
        exp = preflight(SMALL + overrides + [f"hydra.run.dir={tmp_path / 'never-created'}"])
        batch = expand(exp)
        res = make_train(exp.static)(batch.hparams_R, run_keys(batch.seeds_R))
        healthy_R = res.diverged_at_step_R < 0
        for name in EXACT_METRICS + KAPPA_METRICS:
            x = res.metrics[name][:, healthy_R]
            if name.startswith("kappa_"):
                # kappa = C(+delta) / C(-delta) is a ratio of costs that may be infinite by
                # definition: +inf once E[R] + delta is out of reach, NaN (undefined) when neither
                # move is reachable from a policy that float32 has made deterministic (lr >= 1
                # here). Only -inf would be wrong.
                assert not np.any(x == -np.inf), (overrides, name)
                continue
            assert np.all(np.isfinite(x)), (overrides, name)
        assert np.all(res.diverged_at_step_R[~healthy_R] >= 1)
        ran.append(overrides)

    check()
    assert len(ran) >= 8


def _unwritable(tmp_path):
    """A run directory that this user cannot create: under a read-only folder, or for root (whom
    permissions do not stop) under /sys, which is read-only to everyone."""
    if os.geteuid() == 0:
        out = Path("/sys/sim-unwritable/run")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        out = tmp_path / "ro" / "run"
    try:
        out.mkdir(parents=True)
    except OSError:
        return out
    pytest.skip(f"{out} is writable here")


def _refused(argv) -> str:
    """preflight as the command line runs it before Hydra (claim=True): it must refuse; its one line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as refused:
        preflight(argv, claim=True)
    text = err.getvalue()
    assert refused.value.code == 2 and text.count("\n") == 1 and "Traceback" not in text, text
    return text.strip()


def test_an_unwritable_run_directory_is_one_line_and_exit_2_before_hydra(tmp_path):
    out = _unwritable(tmp_path)
    err = _refused(SMALL + [f"hydra.run.dir={out}"])
    assert err.startswith(f"sim: error: hydra.run.dir={out}: cannot write there (") and not out.exists(), err


def _tree(root):
    """Every file under `root` with its bytes and mtime: to show that nothing was touched."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# Holds a run directory's lock as a running `sim.run` does (rundir.claim), until killed.
HOLD_LOCK = ("import sys; from pathlib import Path; from sim.output import rundir; "
             "rundir.claim(Path(sys.argv[1]), 'feedc0de00000000'); print('held', flush=True); sys.stdin.read()")


def test_a_second_run_in_a_directory_in_use_is_refused_and_touches_nothing_and_a_crash_frees_it(tmp_path):
    from sim.output import rundir

    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)  # what the running one (another config) has written so far
    (out / ".hydra" / "config.yaml").write_text("seeds: 99\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=Path(__file__).parent.parent,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = _tree(out)
        err = _refused(SMALL + [f"hydra.run.dir={out}"])  # what `python -m sim.run` does before Hydra starts
        assert re.search(rf"in use by a running sim \(pid {holder.pid} on .*, started .* UTC, config_hash "
                         r"feedc0de00000000\); wait for it to end", err), err
        assert _tree(out) == before  # not a byte of the other run (nor of its lock file) changed
    finally:
        holder.kill()  # SIGKILL: a crash, which the OS releases the lock of
        holder.wait()
    assert rundir.running(out) is None
    os.close(rundir.claim(out, "0123"))


def test_ctrl_c_is_one_line_exit_130_a_table_of_whole_chunks_and_a_checkpoint_to_resume_from(tmp_path):
    """SIGINT to a running `python -m sim.run` that holds the directory's lock (no checkpoint would
    fall due for an hour): it writes one on the way out, at the step its metrics.csv ends on."""
    from sim.output import rundir

    out = tmp_path / "run"
    args = ["seeds=2", "steps=100000", "log_every=5", "chunk_steps=5", "task.prompts=4", "plots=false",
            "checkpoint_seconds=3600", f"hydra.run.dir={out}"]
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sim.run", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:  # until 3 chunks are in the table
                if (out / "metrics.csv").exists() and (out / "metrics.csv").read_bytes().count(b"\n") > 1 + 2 * 3:
                    break
                time.sleep(0.02)
            assert re.match(rf"pid {proc.pid} on ", rundir.running(out) or ""), "the run does not hold its lock"
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "err").read_text()
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    step = int(re.fullmatch(r"sim: interrupted at step (\d+); rerun the same command to resume", last).group(1))
    table = (out / "metrics.csv").read_bytes()
    assert step > 0 and table.endswith(b"\n") and table.count(b"\n") == 1 + 2 * (step // 5 + 1), (step, table[-300:])
    assert [p.name for p in (out / "checkpoints").iterdir()] == [str(step)]
    assert rundir.running(out) is None and not (out / "summary.json").exists()


def test_hostile_configs_in_hostile_run_directories_are_refused_in_one_line_touching_nothing(tmp_path):
    """The hostile configurations above, each aimed (claim=True, as the command line does) at a run
    directory drawn from: unwritable; holding a finished run of another configuration; holding a
    run in progress (its lock held, as a running sim.run holds it). Every one is refused with exit
    status 2 and one line, and no byte (nor mtime) of the other runs changes. The one exception:
    a valid config with overwrite=true may replace the finished run of another configuration."""
    from sim import run
    from sim.output import rundir

    def other_run(out, cfg_hash):
        (out / ".hydra").mkdir(parents=True)
        (out / ".hydra" / "config.yaml").write_text("seeds: 99\n")
        (out / "provenance.json").write_text(json.dumps({"config_hash": cfg_hash}))
        (out / "metrics.csv").write_text("run,step\n0,0\n")

    dirs = {"unwritable": _unwritable(tmp_path), "another config": tmp_path / "other", "in progress": tmp_path / "busy"}
    other_run(dirs["another config"], "0123456789abcdef")
    other_run(dirs["in progress"], "feedc0de00000000")
    held = rundir.claim(dirs["in progress"], "feedc0de00000000")
    trees = {name: _tree(d) for name, d in dirs.items() if d.exists()}
    seen = Counter()

    valid = st.lists(st.sampled_from(sorted(KEYS)), max_size=3, unique=True).flatmap(
        lambda keys: st.tuples(*[KEYS[k][0].map(lambda v, k=k: f"{k}={v}") for k in keys]))

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(hostile_overrides() | valid.map(lambda o: (list(o), False)), st.sampled_from(sorted(dirs)))
    def check(case, fault):
        overrides, must_fail = case
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                preflight(overrides + [f"hydra.run.dir={dirs[fault]}"], claim=True)
                code = 0
            except SystemExit as e:
                code = e.code
        while run._claimed:  # what an accepted example claimed (a new .sim.lock, no byte of the run)
            os.close(run._claimed.pop())
        text = err.getvalue()
        if code == 0:
            assert fault == "another config" and "overwrite=true" in overrides and not must_fail, (overrides, fault)
            (dirs[fault] / rundir.LOCK_FILE).unlink()
        else:
            assert code == 2 and text.startswith("sim: error: ") and text.count("\n") == 1, (overrides, fault, text)
        assert {name: _tree(d) for name, d in dirs.items() if d.exists()} == trees, (overrides, fault)
        seen[(fault, "refused" if code else "accepted")] += 1
        seen[(fault, "refused for the directory")] += bool(code and f"hydra.run.dir={dirs[fault]}:" in text)

    try:
        check()
    finally:
        os.close(held)
    print(f"\nhostile configs in hostile directories: {dict(seen)}")
    assert not dirs["unwritable"].exists()
    for fault in dirs:  # each fault was met by valid configurations, and refused for itself
        assert seen[(fault, "refused for the directory")] >= 3, seen
