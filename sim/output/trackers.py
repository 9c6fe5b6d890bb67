"""Experiment trackers: the logged rows of every run, streamed as the run goes to TensorBoard,
Weights & Biases and MLflow (`logger=[tensorboard,wandb,mlflow]`, any of them; docs/trackers.md).

metrics.csv stays the source of truth: a tracker gets the same float32 rows after they are
written there, under TRL's metric names where TRL has one (`tracker_name`), and a tracker that
fails (disk full, a server gone) is warned about once and dropped while the run goes on. Each
writer is an optional extra, imported only when a run asks for it; a missing one is refused
when the config is parsed, before anything is written.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from sim.config_values import ConfigError, choice, lookup

# kind -> (the module it imports, the pip extra that installs it)
PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow")}
KINDS = tuple(PACKAGES)
KEYS = {"tensorboard": set(), "wandb": {"project", "entity", "mode"}, "mlflow": {"tracking_uri", "experiment"}}
WANDB_MODES = ("offline", "online")

# sim's batch statistics under the names TRL's GRPOTrainer logs (docs/outputs.md has the table).
TRL_NAMES = {
    "phi_sampled": "rewards/phi/mean", "phi_std_sampled": "rewards/phi/std",
    "phi_prime_sampled": "rewards/phi_prime/mean", "phi_prime_std_sampled": "rewards/phi_prime/std",
    "reward_sampled": "reward", "reward_std_sampled": "reward_std", "frac_reward_zero_std": "frac_reward_zero_std",
    "kl_sampled": "kl", "entropy_sampled": "entropy", "clip_frac": "clip_ratio/region_mean",
    "loss": "loss", "grad_norm": "grad_norm",
}
# sim's expectations under the current policy (exact, or Monte Carlo with standard errors): TRL's
# names above are batch statistics, so these go under policy/ (`reward` and `kl` would clash)
_POLICY = ("phi", "phi_prime", "reward", "kl", "entropy", "spill")
POLICY_NAMES = {name: f"policy/{name}" for base in _POLICY for name in (base, f"{base}_se")}


def tracker_name(name: str) -> str:
    """The name a metrics.csv column has in the trackers."""
    return TRL_NAMES.get(name) or POLICY_NAMES.get(name) or name


def parse_logger(cfg: dict) -> dict[str, dict]:
    """`logger`'s trackers (kind -> options, in KINDS order; {} for none), checked: a bad option or
    a tracker whose package is not installed is one ConfigError, before anything is written."""
    section = cfg.get("logger") or {}
    out = {}
    for kind in KINDS:
        if kind not in section:
            continue
        options = dict(section[kind] or {})
        if kind == "wandb":
            choice(cfg, "logger.wandb.mode", WANDB_MODES)
            _text(cfg, "logger.wandb.project")
            _text(cfg, "logger.wandb.entity", nullable=True)
        if kind == "mlflow":
            _text(cfg, "logger.mlflow.experiment")
            _text(cfg, "logger.mlflow.tracking_uri", nullable=True)
        module, extra = PACKAGES[kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger={kind}: needs the {module} package (pip install -e \".[{extra}]\")")
        out[kind] = options
    return out


def _text(cfg: dict, key: str, nullable: bool = False) -> None:
    v = lookup(cfg, key)
    if not (isinstance(v, str) and v) and not (nullable and v is None):
        raise ConfigError(f"{key}={v!r}: must be a non-empty name{' or null' if nullable else ''}")


def shown(logger: dict) -> str:
    """`logger` as a user types it: one kind, or a list."""
    return next(iter(logger)) if len(logger) == 1 else f"[{','.join(logger)}]"


def flat_config(plain: dict, prefix: str = "") -> dict:
    """The config's leaves as `a.b.c` -> value, with lists as text (HParams holds scalars and text)."""
    out = {}
    for key, value in plain.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_config(value, name + ".")
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _scalar(x):
    x = np.asarray(x).item()
    return x if isinstance(x, (int, float, str, bool)) else str(x)


def run_values(columns: dict[str, np.ndarray], r: int) -> dict:
    """Run r's own values: its run number, seed, sweep point and swept values."""
    return {k: _scalar(v[r]) for k, v in columns.items()}


def _new_rows(rows: dict[str, np.ndarray], written: int):
    """(row index, {tracker name: [R] values}) of the rows after the first `written`."""
    total = len(next(iter(rows.values())))
    for t in range(written, total):
        yield t, {tracker_name(name): x[t] for name, x in rows.items()}


class TensorBoard:
    """One tensorboardX SummaryWriter per run, in <run dir>/tensorboard/run_NNNN."""

    def __init__(self, out: Path, options: dict, plain_cfg: dict, columns: dict[str, np.ndarray],
                 steps_T: np.ndarray, rows_done: int = 0):
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        # NaN is a value here, as in metrics.csv (batch statistics at step 0): not a warning per scalar
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        self.steps_T = steps_T
        config = flat_config(plain_cfg)
        self.writers = []
        for r in range(len(columns["run"])):
            # purge_step: a resumed run rewrites its rows from the checkpoint on; TensorBoard drops
            # the earlier process's events at and after that step (it may have written past it)
            purge = int(steps_T[rows_done]) + 1 if rows_done else None
            writer = SummaryWriter(str(Path(out) / "tensorboard" / f"run_{r:04d}"), purge_step=purge,
                                   flush_secs=3600)
            for summary in hparams(config | run_values(columns, r), {}):
                writer.file_writer.add_summary(summary)
            self.writers.append(writer)
        self.written = rows_done + 1 if rows_done else 0  # rows up to the checkpoint are already there

    def log(self, rows: dict[str, np.ndarray]) -> None:
        """rows: name -> [rows so far, R], as metrics.csv receives them."""
        for t, named in _new_rows(rows, self.written):
            for r, writer in enumerate(self.writers):
                for name, x_R in named.items():  # NaN too (batch statistics at step 0), as in metrics.csv
                    writer.add_scalar(name, float(x_R[r]), int(self.steps_T[t]))
            self.written = t + 1
        for writer in self.writers:
            writer.flush()

    def finish(self, out: Path) -> None:
        """The figures stay PNG files in the run dir: TensorBoard holds the numbers."""

    def close(self, ok: bool) -> None:
        for writer in self.writers:
            writer.close()


class WandB:
    """One W&B run per training run (`run_NNNN`, grouped by the run dir's name, the config with the
    run's seed and swept values), and at the end one more, job_type `summary`, holding the figures
    and summary.json. Offline, everything is in <run dir>/wandb/offline-run-*/ for `wandb sync`.
    A resumed run opens new W&B runs and logs every row again (offline runs cannot be resumed)."""

    def __init__(self, out: Path, options: dict, plain_cfg: dict, columns: dict[str, np.ndarray],
                 steps_T: np.ndarray, rows_done: int = 0):
        import wandb

        self.wandb, self.steps_T, self.written, self.plain_cfg = wandb, steps_T, 0, plain_cfg
        self.init = dict(project=options["project"], entity=options.get("entity"), mode=options["mode"],
                         dir=str(out), group=Path(out).resolve().name, reinit="create_new",
                         # no console capture, system-stats sampler or code copy: the rows are all it needs
                         settings=wandb.Settings(console="off", x_disable_stats=True, save_code=False, silent=True))
        self.runs = [wandb.init(name=f"run_{r:04d}", job_type="train",
                                config=plain_cfg | run_values(columns, r), **self.init)
                     for r in range(len(columns["run"]))]

    def log(self, rows: dict[str, np.ndarray]) -> None:
        for t, named in _new_rows(rows, self.written):
            for r, run in enumerate(self.runs):
                run.log({name: float(x_R[r]) for name, x_R in named.items()}, step=int(self.steps_T[t]))
            self.written = t + 1

    def finish(self, out: Path) -> None:
        run = self.wandb.init(name="summary", job_type="summary", config=self.plain_cfg, **self.init)
        self.runs.append(run)
        figures = {f"figures/{png.stem}": self.wandb.Image(str(png)) for png in sorted(Path(out).glob("*.png"))}
        if figures:  # plots=false: none
            run.log(figures)
        # a copy in the run's own files (a path outside it is symlinked there, with a warning)
        shutil.copy(Path(out) / "summary.json", Path(run.dir) / "summary.json")
        run.save(str(Path(run.dir) / "summary.json"), base_path=run.dir, policy="now")

    def close(self, ok: bool) -> None:
        for run in self.runs:
            run.finish(exit_code=0 if ok else 1)


class MLflow:
    """A parent MLflow run (the run dir: its config as params, then the figures and summary.json as
    artifacts) with one nested run per training run (`run_NNNN`: the config and the run's own
    values as params, every logged metric at its step). The default store is <run dir>/mlruns.
    A resumed run opens new MLflow runs and logs every row again."""

    BATCH = 1000  # MLflow's most metrics per log_batch (and 100 params)

    def __init__(self, out: Path, options: dict, plain_cfg: dict, columns: dict[str, np.ndarray],
                 steps_T: np.ndarray, rows_done: int = 0):
        from mlflow.tracking import MlflowClient

        uri = options.get("tracking_uri") or (Path(out) / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses a file store unless told it is wanted: a run dir's own mlruns/ needs
            # no database (sqlalchemy, alembic) or server; a user who has one passes its URI
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.steps_T, self.written = MlflowClient(tracking_uri=uri), steps_T, 0
        found = self.client.get_experiment_by_name(options["experiment"])
        experiment = found.experiment_id if found else self.client.create_experiment(options["experiment"])
        config = flat_config(plain_cfg)
        self.parent = self.client.create_run(experiment, run_name=Path(out).resolve().name,
                                             tags={"sim.run_dir": str(Path(out).resolve())}).info.run_id
        self._params(self.parent, config)
        self.runs = []
        for r in range(len(columns["run"])):
            run = self.client.create_run(experiment, run_name=f"run_{r:04d}",
                                         tags={"mlflow.parentRunId": self.parent}).info.run_id
            self._params(run, config | run_values(columns, r))
            self.runs.append(run)

    def _params(self, run: str, values: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in values.items()]  # 6000: MLflow's longest value
        for i in range(0, len(params), 100):
            self.client.log_batch(run, params=params[i:i + 100])

    def log(self, rows: dict[str, np.ndarray]) -> None:
        from mlflow.entities import Metric

        metrics, stamp = [[] for _ in self.runs], int(time.time() * 1000)
        for t, named in _new_rows(rows, self.written):
            for r, batch in enumerate(metrics):
                batch += [Metric(name, float(x_R[r]), stamp, int(self.steps_T[t])) for name, x_R in named.items()]
            self.written = t + 1
        for run, batch in zip(self.runs, metrics):
            for i in range(0, len(batch), self.BATCH):
                self.client.log_batch(run, metrics=batch[i:i + self.BATCH])

    def finish(self, out: Path) -> None:
        for path in sorted(Path(out).glob("*.png")) + [Path(out) / "summary.json", Path(out) / "config.yaml"]:
            self.client.log_artifact(self.parent, str(path))

    def close(self, ok: bool) -> None:
        for run in self.runs + [self.parent]:
            self.client.set_terminated(run, "FINISHED" if ok else "FAILED")


OPENERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def _warn(kind: str, what: str, e: Exception) -> None:
    from tqdm import tqdm  # its write: on a line of its own, above the progress bar of the training

    tqdm.write(f"sim: warning: logger={kind} failed {what} ({type(e).__name__}: {e}); it logs nothing more in this "
               "run, which goes on (metrics.csv has every row)", file=sys.stderr)


class Trackers:
    """The open trackers, each called in turn; one that raises is warned about once and dropped."""

    def __init__(self, opened: dict):
        self.opened, self.finished = opened, False

    def _each(self, method: str, *args) -> None:
        for kind, tracker in list(self.opened.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001  (any failure of a tracker: the run must go on)
                del self.opened[kind]
                _warn(kind, f"in {method}", e)
                try:
                    tracker.close(False)
                except Exception:  # noqa: BLE001  (already warned; a broken writer may fail to close)
                    pass

    def log(self, rows: dict[str, np.ndarray]) -> None:
        self._each("log", rows)

    def finish(self, out: Path) -> None:
        """After summary.json and the figures are written: they go to the trackers that hold files."""
        self._each("finish", out)
        self.finished = True

    def close(self) -> None:
        self._each("close", self.finished)


def open_trackers(logger: dict[str, dict], out: Path, plain_cfg: dict, columns: dict, steps_T: np.ndarray,
                  rows_done: int = 0) -> Trackers | None:
    """The trackers `logger` asks for (parse_logger), open in `out`; None for none. One that fails
    to open (a server gone) is warned about and left out: the run goes on without it."""
    if not logger:
        return None
    opened = {}
    for kind, options in logger.items():
        try:
            opened[kind] = OPENERS[kind](out, options, plain_cfg, columns, steps_T, rows_done)
        except Exception as e:  # noqa: BLE001
            _warn(kind, "to open", e)
    return Trackers(opened)
