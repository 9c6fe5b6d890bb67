"""The preflight (sim/preflight.py) through the command line's validation path: every real-model
fault is refused in one line with exit 2 before Hydra writes, and the corrected command then runs
into the same directory. (Every fault is also drawn by the hostile-config property test in
tests/test_run.py; this file checks each once, and the process-level behaviour in a subprocess.)"""
import contextlib
import io
import subprocess
import sys

import pytest

from sim.run import preflight as run_preflight
from tests.faults import overrides, write_faults
from tests.test_run import _tree


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return write_faults(tmp_path_factory.mktemp("faults"))


def _refusal(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as refused:
        run_preflight(argv, claim=True)
    return refused.value.code, err.getvalue()


def test_each_real_model_fault_is_one_line_exit_2_nothing_written_and_the_corrected_rerun_is_accepted(
        faults, tmp_path, monkeypatch):
    from sim import run

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    good, cases = faults
    out = tmp_path / "run"
    for name, (changes, words) in cases.items():
        code, text = _refusal(overrides(changes) + [f"hydra.run.dir={out}"])
        assert code == 2 and text.startswith("sim: error: ") and text.count("\n") == 1, (name, text)
        assert words in text, (name, text)
        assert not out.exists(), name  # not a byte: not even the directory
    exp = run_preflight(overrides({"policy.checkpoint": good}) + [f"hydra.run.dir={out}"], claim=True)
    try:
        assert exp is not None and exp.static.lm.checkpoint == good
        assert [p.name for p in out.iterdir()] == [".sim.lock"]  # claimed, and nothing else
    finally:
        while run._claimed:
            import os
            os.close(run._claimed.pop())


def test_a_run_over_the_machines_memory_is_refused_before_anything_is_read_or_written(faults, tmp_path):
    """The memory estimate (sim/lm/memory.py) runs last, with the checkpoint's architecture and the
    built text task known: 200,000 fully fine-tuned runs of the tiny checkpoint (each its own float32
    weights and Adam moments) are refused in one line that gives the estimate and the machine's
    memory; nothing is written."""
    good, _ = faults
    out = tmp_path / "run"
    code, text = _refusal(overrides({"policy.checkpoint": good, "seeds": 200_000}) + [f"hydra.run.dir={out}"])
    assert code == 2 and len(text.splitlines()) == 1, text
    assert "needs about" in text and "this machine has" in text and not out.exists()


def test_faults_found_after_hydra_started_are_one_line_exit_2_and_write_nothing_in_a_process(faults, tmp_path):
    """`python -m sim.run` itself: a model_type outside FAMILIES (gpt2) used to write provenance.json, config.yaml, run.log
    and .hydra/ and then refuse after loading the model; runtime.distributed=true with no coordinator
    was a traceback. Both are one line and exit 2 now, and the directory is never created."""
    _, cases = faults
    for name in ("model_type gpt2", "no coordinator"):
        out = tmp_path / name.replace(" ", "_")
        proc = subprocess.run([sys.executable, "-m", "sim.run", *overrides(cases[name][0]), f"hydra.run.dir={out}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert cases[name][1] in err and not out.exists(), (name, err, _tree(out) if out.exists() else None)
