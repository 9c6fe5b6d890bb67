"""Runtime settings act in a fresh process (the JAX backend starts once per process)."""
import json
import subprocess
import sys

from sim.runtime import cpu_device_count

PROBE = """
import json, sys, jax
from sim import runtime
runtime.configure(sys.argv[1], sys.argv[2])
print(json.dumps({"devices": len(jax.devices()), "cache": jax.config.jax_compilation_cache_dir}))
"""


def probe(cache, devices, env=None):
    out = subprocess.run([sys.executable, "-c", PROBE, cache, devices], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout)


def test_configure_sets_devices_and_cache(tmp_path):
    got = probe(str(tmp_path / "xla"), "3")
    assert got == {"devices": 3, "cache": str(tmp_path / "xla")}


def test_auto_devices_follow_the_environment_or_the_cores(monkeypatch):
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "5")
    assert cpu_device_count("auto") == 5
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES")
    assert cpu_device_count("auto") >= 1 and cpu_device_count(2) == 2


def test_xla_flags_are_added_once_and_a_user_setting_wins(monkeypatch):
    from sim.runtime import XLA_OPT_FLAG, set_xla_flags
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    set_xla_flags()
    set_xla_flags()
    import os
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {XLA_OPT_FLAG}=1"
    monkeypatch.setenv("XLA_FLAGS", f"{XLA_OPT_FLAG}=2")
    set_xla_flags()
    assert os.environ["XLA_FLAGS"] == f"{XLA_OPT_FLAG}=2"
