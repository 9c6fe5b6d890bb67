"""`python -m sim.run [overrides]`: compose -> validate -> build -> train -> write.

The only module that knows Hydra. Outputs go to the Hydra run directory: provenance.json,
config.yaml, metrics.csv, summary.json and rewards.png.

Exit status: 0 success (or the directory already holds this completed run); 2 a user error
(bad configuration, or a run directory that must not be touched), one line on stderr, nothing
written; 3 the run finished and wrote everything, but some runs diverged (non-finite loss,
rewards or parameters) and were left out of the statistics; 130 interrupted (Ctrl-C), one line
naming the step a rerun resumes from. A multirun exits with its worst job's status, whichever
launcher ran the jobs (JobStatuses), naming each job whose runs diverged.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from sim.config import ConfigError, Experiment, parse

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def fail(message: str) -> None:
    print(f"sim: error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


def report(info: dict) -> int:
    """Warn about diverged runs (their outputs are complete); the exit status this run calls for."""
    diverged = info.get("diverged", [])
    if not diverged:
        return 0
    where = ", ".join(f"run {d['run']} (seed {d['seed']}) at step {d['step']}" for d in diverged[:5])
    more = f" and {len(diverged) - 5} more" if len(diverged) > 5 else ""
    print(f"sim: warning: {len(diverged)} of {info['n_runs']} runs diverged (non-finite loss, rewards or "
          f"parameters): {where}{more}; frozen there and left out of summary.json and rewards.png", file=sys.stderr)
    return EXIT_DIVERGED


# Exit statuses of the jobs this process ran; main() exits with the worst once Hydra returns, so
# that a diverged job of a multirun sweep does not stop the jobs after it.
_statuses: list[int] = []


def multirun_status(sweep_dir: Path) -> int:
    """After a multirun: name every job whose runs diverged (from its summary.json, wherever the
    launcher ran it) on stderr; EXIT_DIVERGED if any did, else 0."""
    import json

    worst = 0
    jobs = sorted(sweep_dir.glob("*/summary.json"), key=lambda p: (not p.parent.name.isdigit(), p.parent.name.zfill(9)))
    for path in jobs:
        info = json.loads(path.read_text())
        if info.get("n_diverged"):
            print(f"sim: multirun job {path.parent.name} ({' '.join(info.get('overrides', []))}): "
                  f"{info['n_diverged']} of {info['n_runs']} runs diverged (exit status {EXIT_DIVERGED}); "
                  f"see {path}", file=sys.stderr)
            worst = EXIT_DIVERGED
    return worst


class JobStatuses(Callback):
    """Hydra callback (conf/config.yaml): a launcher runs jobs in processes of its own (submitit),
    whose exit statuses never reach this one, so the multirun's status is read from the jobs' outputs."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        _statuses.append(multirun_status(Path(str(config.hydra.sweep.dir))))


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def hydra_main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        configure_runtime(plain)
        exp = parse(plain)
        from sim import experiment  # heavy imports (matplotlib) only once the config is valid

        hc = HydraConfig.get()
        info = experiment.run_experiment(exp, plain, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except ConfigError as e:
        fail(str(e))
    _statuses.append(report(info))


def configure_runtime(plain: dict) -> None:
    """JAX settings before anything computes: validation may already use JAX (a target kappa is
    solved for its competence), and the device count is fixed once a backend exists."""
    from sim import runtime

    settings = runtime.parse(plain)
    runtime.configure(settings.compilation_cache, settings.cpu_devices)
    if settings.distributed and not jax_distributed_ready():
        from sim.lm import sharding

        try:
            sharding.initialize_distributed()  # coordinator, process count and id from the launcher's environment
        except (ValueError, RuntimeError) as e:  # no coordinator found, or none answering
            raise ConfigError(f"runtime.distributed=true: cannot join JAX's distributed runtime "
                              f"({' '.join(str(e).split())}); start each process from a launcher that sets the "
                              "coordinator (SLURM, Open MPI), or pass runtime.distributed=false") from None


def jax_distributed_ready() -> bool:
    import jax

    return jax.distributed.is_initialized()


def validate(argv: list[str]) -> tuple[Experiment, dict, Path]:
    """Compose, resolve and parse the config exactly as a run would; any user error becomes a
    ConfigError of one line (unknown group, option or key, bad override syntax, bad value)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose("config", overrides=list(argv), return_hydra_config=True)
        run_dir = Path(str(cfg.hydra.run.dir))
        with open_dict(cfg):
            del cfg["hydra"]
        plain = OmegaConf.to_container(cfg, resolve=True)
    except MissingConfigException as e:
        group, _, option = (e.missing_cfg_file or "?/?").rpartition("/")
        raise ConfigError(f"{group}={option}: unknown option; allowed values are {', '.join(e.options or [])}")
    except OverrideParseException as e:
        raise ConfigError(f"{e.override}: cannot parse this override: {' '.join(e.message.split())}")
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        unknown = re.match(r"Could not override '([^']+)'", str(e))
        raise ConfigError(unknown_key(unknown.group(1), argv) if unknown else " ".join(str(e).split())) from None
    configure_runtime(plain)
    return parse(plain), plain, run_dir


def unknown_key(key: str, argv: list[str]) -> str:
    """Hydra's "Could not override 'a.b.c'" in the house format: the key, its value and the keys its
    section allows (read from the config composed without it), instead of a hint to add it with '+'."""
    from hydra import compose, initialize_config_dir

    value = next((a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] == key and "=" in a), None)
    rest = [a for a in argv if a.split("=", 1)[0] != key]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            section = OmegaConf.to_container(compose("config", overrides=rest), resolve=False)
    except Exception:  # another override is wrong too: Hydra's own text for this one
        return f"{key}: unknown key (to add a key the config does not have, write +{key}=...)"
    parts, where = key.split("."), []
    for part in parts[:-1]:  # down to the deepest section that exists
        if part in section and not isinstance(section[part], dict):
            return f"{key}={value}: {'.'.join(where + [part])} is a value, not a section"
        if part not in section:
            break
        section, where = section[part], where + [part]
    bad = ".".join(parts[:len(where) + 1])
    shown = f"{key}={value}" if bad == key and value is not None else bad
    return f"{shown}: unknown key; allowed keys here are {', '.join(sorted(str(k) for k in section))}"


# The run directory's locked lock file, open for this process's life (preflight with claim=True).
_claimed: list[int] = []


def preflight(argv: list[str], claim: bool = False) -> Experiment | None:
    """Validate before Hydra starts (and writes into the run directory): a bad config or a run
    directory that must not be touched stops here with one line; a completed run is reported.
    claim=True (the command line) then also creates the directory and takes its lock for the
    process's life (rundir.claim): an unwritable directory, or one another run holds, is refused
    here, before Hydra writes its .hydra/ there."""
    if any(a.startswith("-") for a in argv):  # --multirun, --cfg, --help ...: Hydra's own business
        return None
    try:
        exp, plain, run_dir = validate(argv)
        from sim.output import rundir

        holder = rundir.running(run_dir)  # first: a run in progress is named, whatever its config
        if holder:
            raise rundir.in_use(run_dir, holder)
        action = rundir.plan(run_dir, rundir.config_hash(plain), exp.resume, exp.overwrite)
        if action != "done":  # the files the config names, the machine, the packages (sim/preflight.py)
            from sim import preflight as inputs

            inputs.check(exp, plain)
        if claim and action != "done":
            _claimed.append(rundir.claim(run_dir, rundir.config_hash(plain)))
    except ConfigError as e:
        fail(str(e))
    if action == "done":
        import json

        print(f"sim: {run_dir} already holds this completed run; left alone (overwrite=true runs it again)",
              file=sys.stderr)
        sys.exit(report(json.loads((run_dir / "summary.json").read_text())))
    return exp


def main() -> None:
    """The command line: exits the process."""
    try:
        preflight(sys.argv[1:], claim=True)
        hydra_main()
    except KeyboardInterrupt as e:  # Ctrl-C: one line, not a traceback (sim.output.interrupt)
        from sim.output import interrupt

        print(interrupt.message(e), file=sys.stderr)
        _statuses.append(EXIT_INTERRUPTED)
    # Every output is written and closed by now: skip the interpreter's teardown, which spent
    # ~0.25 s of a warm default run destroying JAX's and XLA's objects (interleaved runs, README).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # `python -m sim.run` runs this file as __main__, and Hydra imports sim.run again to make the
    # JobStatuses callback: that copy holds the multirun's status
    statuses = _statuses + (sys.modules["sim.run"]._statuses if __name__ == "__main__" and "sim.run" in sys.modules
                            else [])
    os._exit(max(statuses, default=0))


if __name__ == "__main__":
    main()
