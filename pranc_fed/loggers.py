"""Metrics trackers (logging.report_to): the rows of rounds.csv, or of `pranc-fed train`'s epochs,
also go to TensorBoard (OUT/tensorboard), Weights & Biases (OUT/wandb) or MLflow (OUT/mlflow.db).
rounds.csv and summary.json stay the record: a tracker that fails is dropped with one warning and
the run goes on."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

from .config import ConfigError, ExperimentConfig, config_to_dict


class TensorBoardLogger:
    def __init__(self, cfg: ExperimentConfig, out: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a run may be watched, or killed, mid-way

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, cfg: ExperimentConfig, out: Path):
        import wandb
        self.run = wandb.init(project=cfg.logging.project, name=cfg.name, dir=str(out), config=config_to_dict(cfg))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    def __init__(self, cfg: ExperimentConfig, out: Path):
        import mlflow
        self.mlflow = mlflow
        if "MLFLOW_TRACKING_URI" not in os.environ:  # keep the run's files together, as TensorBoard's are
            # SQLite, MLflow's own default: MLflow 3 refuses a folder of files (./mlruns) unless opted in
            mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow.db').resolve()}")
        mlflow.set_experiment(cfg.logging.project)
        mlflow.start_run(run_name=cfg.name)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


def check_installed(cfg: ExperimentConfig) -> list[str]:
    """The trackers logging.report_to names, once each; a ConfigError if one is not installed."""
    names = list(dict.fromkeys(cfg.logging.report_to))
    missing = [name for name in names if importlib.util.find_spec(name) is None]  # each is its package's name
    if missing:
        raise ConfigError(f"logging.report_to asks for {', '.join(missing)}, which is not installed: "
                          f"pip install {' '.join(missing)}")
    return names


class MetricLoggers:
    """The trackers of logging.report_to, fed one row per round (or epoch); step_key names the row's
    step column, and every other number in the row becomes a scalar of that name."""

    def __init__(self, cfg: ExperimentConfig, out: Path, step_key: str):
        names = check_installed(cfg)
        self.step_key, self.trackers = step_key, {}
        for name in names:
            tracker = self._guard(name, TRACKERS[name], cfg, out)
            if tracker is not None:
                self.trackers[name] = tracker

    def log(self, row: dict) -> None:
        metrics = {k: v for k, v in row.items()
                   if k != self.step_key and isinstance(v, (int, float))}  # None: a column this run lacks
        for name, tracker in list(self.trackers.items()):
            self._guard(name, tracker.log, metrics, row[self.step_key])

    def close(self) -> None:
        for name, tracker in list(self.trackers.items()):
            self._guard(name, tracker.close)
        self.trackers.clear()

    def _guard(self, name: str, call, *args):
        """call(*args), or None after a warning if it raises; the tracker is dropped, so it warns once
        and never stops the run."""
        try:
            return call(*args)
        except Exception as e:  # W&B alone raises a dozen kinds (login, network, quota)
            self.trackers.pop(name, None)
            warnings.warn(f"{name} logging failed and is off for the rest of this run ({type(e).__name__}: {e}); "
                          "rounds.csv and summary.json are unaffected", RuntimeWarning)
            return None
