"""sim/rl/programs.py: the runs of a batch laid out over the local devices (padded to a multiple of
them) give the numbers they give on one device."""
import numpy as np


SHARDED = """
import json, sys
from sim import runtime
runtime.configure(None, int(sys.argv[1]))
from tests.conftest import experiment, SMALL
from sim.rl.sweep import expand
from sim.rl.train import make_train, run_keys
exp = experiment(SMALL + ["seeds=3", "batch_invariant=true"])
b = expand(exp)
res = make_train(exp.static)(b.hparams_R, run_keys(b.seeds_R))
print(json.dumps({k: v.tolist() for k, v in res.metrics.items() if k in ("phi", "phi_prime", "kl", "loss")}))
"""


def test_sharding_over_devices_does_not_change_the_numbers():
    """3 runs on 1 device vs on 2 devices (padded to 4): with batch_invariant=true each run's
    metrics must agree. The two processes run at once (a backend's device count is fixed)."""
    import json, subprocess, sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[2])
    procs = [subprocess.Popen([sys.executable, "-c", SHARDED, str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=root) for n in (1, 2)]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout))
    for k in outs[0]:
        np.testing.assert_allclose(np.array(outs[0][k], float), np.array(outs[1][k], float), rtol=1e-5, atol=1e-6)
