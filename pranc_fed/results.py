"""What a run leaves in its folder. After every federated round (RunRecorder, driven by the strategy):
rounds.csv, ledger.csv and checkpoint.npz. At the end of any run: the trained model and summary.json,
written the same way by `pranc-fed train` (centralized.py) and the ServerApp (server_app.py)."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from torch import nn

from . import atomic_write
from .config import ExperimentConfig
from .data import DatasetBundle
from .models import count_parameters, model_args
from .pranc import PrancModel

if TYPE_CHECKING:
    from .loggers import MetricLoggers
    from .strategy import MethodStrategy

CHECKPOINT = "checkpoint.npz"  # the server's state after the last complete round (--resume)
LEDGER_FIELDS = ["round", "node", "partition", "worker", "phase", "direction", "bytes"]
ROUND_FIELDS = ["round", "clients", "received", "dropped", "up_bytes", "down_bytes", "cum_up_bytes",
                "cum_down_bytes", "cum_bytes", "train_loss", "val_accuracy", "test_accuracy", "test_loss", "epsilon", "delta", "wall_seconds"]


@dataclass(frozen=True)
class Evaluation:
    """The server's central evaluation of the global model after a round."""
    test_loss: float
    test_accuracy: float
    val_accuracy: float | None


class RunRecorder:
    """After every round: a row of rounds.csv (bytes and replies from the strategy's round stats, the
    evaluation), ledger.csv (one row per message) and checkpoint.npz (the strategy's whole state plus
    the rows, for --resume), each file replaced atomically; the trackers of logging.report_to get the
    same row, and the console a progress line."""

    def __init__(self, out: Path, trackers: MetricLoggers, rows: list[dict], started: float, total_rounds: int):
        self.out, self.trackers, self.rows, self.started, self.total_rounds = out, trackers, rows, started, total_rounds

    def record(self, strategy: MethodStrategy, server_round: int, evaluation: Evaluation) -> dict:
        row = _round_row(strategy, server_round, evaluation, self.rows, time.perf_counter() - self.started)
        self.rows.append(row)
        atomic_write(self.out / "rounds.csv", lambda f: _write_csv(f, self.rows, ROUND_FIELDS + strategy.round_fields()))
        self.trackers.log(row)
        for name, (table, fields) in strategy.tables().items():
            atomic_write(self.out / name, lambda f: _write_csv(f, table, fields))
        arrays, meta = strategy.checkpoint()
        meta_json = json.dumps(meta | {"rows": self.rows})
        atomic_write(self.out / CHECKPOINT, lambda f: np.savez(f, **arrays, meta=np.array(meta_json)))
        print(f"[pranc-fed] round {server_round}/{self.total_rounds}  clients {row['received']}/{row['clients']}"
              f"  up {row['up_bytes']:,} B  down {row['down_bytes']:,} B  total {row['cum_bytes']:,} B"
              f"  test acc {evaluation.test_accuracy:.4f}  loss {evaluation.test_loss:.4f}"
              + ("" if row["epsilon"] is None else f"  epsilon {row['epsilon']:.3f} (delta {row['delta']:g})")
              + (f"  worst agent {row['worst_accuracy']:.4f}  consensus {row['consensus_distance']:.4g}"
                 f"  {row['bytes_per_agent']:,.0f} B/agent over edges"
                 if row.get("worst_accuracy") is not None and row.get("consensus_distance") is not None else "")
              + f"  {row['wall_seconds']:.0f}s",
              flush=True)
        return row


def _round_row(strategy: MethodStrategy, server_round: int, evaluation: Evaluation, rows: list[dict],
               wall: float) -> dict:
    """Round 0 is the initial model: nothing sent yet, so where every curve starts."""
    row = {"round": server_round, "clients": 0, "received": 0, "dropped": 0, "up_bytes": 0, "down_bytes": 0,
           "train_loss": None}
    if server_round > 0:
        stats = strategy.round_stats(server_round)  # a round that sent nothing still gets its (empty) stats
        row |= {"clients": stats.sampled, "received": stats.received, "dropped": len(stats.dropped),
                "up_bytes": stats.up_bytes + stats.eval_up_bytes, "down_bytes": stats.down_bytes + stats.eval_down_bytes,
                "train_loss": stats.train_loss}
    cum_up = (rows[-1]["cum_up_bytes"] if rows else 0) + row["up_bytes"]
    cum_down = (rows[-1]["cum_down_bytes"] if rows else 0) + row["down_bytes"]
    row |= strategy.round_extras(server_round, evaluation)
    privacy = strategy.method.privacy  # epsilon spent so far (empty without DP): an upper bound, every round counted
    return row | {"cum_up_bytes": cum_up, "cum_down_bytes": cum_down, "cum_bytes": cum_up + cum_down,
                  "val_accuracy": evaluation.val_accuracy, "test_accuracy": evaluation.test_accuracy,
                  "test_loss": evaluation.test_loss, "epsilon": privacy.epsilon(server_round),
                  "delta": privacy.delta if privacy.enabled else None, "wall_seconds": round(wall, 3)}


def _write_csv(f: BinaryIO, rows: list[dict], fields: list[str]) -> None:
    text = io.TextIOWrapper(f, newline="", encoding="utf-8")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    text.flush()
    text.detach()


def parameter_counts(network: nn.Module) -> dict[str, int]:
    """The summary's parameter counts of the plain network a model stands for (models.count_parameters)."""
    covered, local = count_parameters(network)
    return {"param_count": covered + local, "covered_param_count": covered, "local_param_count": local}


def save_results(out: Path, cfg: ExperimentConfig, bundle: DatasetBundle, model: nn.Module,
                 dense_state: dict[str, np.ndarray], summary: dict, **metadata) -> dict:
    """Save the trained model, then write summary.json (summary plus the model file); returns what it holds.
    A PrancModel goes to model.pranc (the seed and alpha, with the build arguments and preprocessing that
    `pranc-fed evaluate` needs; metadata joins the config's name in its header); any other model's
    dense_state goes to model.npz (no pickle)."""
    if isinstance(model, PrancModel):
        model_file = out / "model.pranc"
        # A loader of the user's own is named, so that predict can say it cannot make such inputs from images.
        dataset = {"dataset": bundle.source} if bundle.user_code else {}
        model.save(model_file, cfg.pranc.alpha_dtype, model_args(bundle), bundle.preprocessing.to_dict(),
                   {"config": cfg.name} | dataset | metadata)
    else:
        model_file = out / "model.npz"
        np.savez(model_file, **dense_state)
    summary = summary | {"model_file": str(model_file), "model_file_bytes": model_file.stat().st_size}
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return summary
