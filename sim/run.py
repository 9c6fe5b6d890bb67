"""`python -m sim.run [overrides]`: compose -> validate -> build -> train -> write.

The only module that knows Hydra. Outputs go to the Hydra run directory: config.yaml,
metrics.csv, summary.json and rewards.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sim.config import ConfigError, parse, parse_runtime

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def fail(message: str) -> None:
    print(f"sim: error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def hydra_main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    from sim import runtime

    try:
        # JAX settings first: validation may already compute with JAX (a target kappa is solved
        # for its competence), and the device count is fixed once a backend exists.
        settings = parse_runtime(plain)
        runtime.configure(settings.compilation_cache, settings.cpu_devices)
        exp = parse(plain)
    except ConfigError as e:
        fail(str(e))
    from sim import experiment  # heavy imports (matplotlib) only once the config is valid

    experiment.run_experiment(exp, plain, Path(HydraConfig.get().runtime.output_dir))


def preflight(argv: list[str]) -> None:
    """Compose the config once before Hydra does, to turn composition errors (unknown group,
    option or key, bad override syntax) into one line instead of Hydra's multi-line report."""
    if any(a.startswith("-") for a in argv):  # --multirun, --cfg, --help ...: Hydra's own business
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in argv if not a.startswith("hydra.")]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            compose("config", overrides=overrides)
    except MissingConfigException as e:
        group, _, option = (e.missing_cfg_file or "?/?").rpartition("/")
        fail(f"{group}={option}: unknown option; allowed values are {', '.join(e.options or [])}")
    except (HydraException, OmegaConfBaseException) as e:
        fail(" ".join(str(e).split()))


def main() -> None:
    preflight(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
