"""Flower ServerApp: build the initial model from the config, run the strategy with central
evaluation after every round, write rounds.csv, summary.json, ledger.csv and the final model."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from .config import ExperimentConfig, config_from_run_config, config_to_dict
from .data import load_dataset
from .methods import get_method
from .pranc import PrancModel
from .strategy import PrancFedStrategy
from .data import make_loader
from .training import evaluate, federated_train_sets, model_args, resolve_device, test_loader

APP_DIR = Path(__file__).resolve().parents[1]
ROUND_FIELDS = ["round", "clients", "received", "dropped", "up_bytes", "down_bytes", "cum_up_bytes",
                "cum_down_bytes", "cum_bytes", "train_loss", "val_accuracy", "test_accuracy", "test_loss", "wall_seconds"]

app = ServerApp()
log = logging.getLogger("pranc_fed.server")


def output_dir(cfg: ExperimentConfig) -> Path:
    """Relative out_dir resolves against the app folder: the server process's cwd is Flower's choice."""
    out = Path(cfg.resolved_out_dir())
    return out if out.is_absolute() else APP_DIR / out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(context.run_config, APP_DIR)
    run_federated(grid, cfg, output_dir(cfg))


def run_federated(grid: Grid, cfg: ExperimentConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = resolve_device(cfg.train.device)
    bundle = load_dataset(cfg.data.dataset)
    method = get_method(cfg)
    model = method.build_model(bundle, device)
    fingerprint = method.fingerprint(model)
    strategy = PrancFedStrategy(cfg, method, method.initial_state(model), fingerprint)
    tests = test_loader(cfg, bundle)
    held_out = federated_train_sets(cfg, bundle)[1]
    validation = None if held_out is None else make_loader(held_out, 1000, shuffle=False, seed=cfg.seed)
    rows: list[dict] = []
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    print(f"[pranc-fed] {cfg.name}: {cfg.federation.method} on {cfg.model.arch}, {cfg.federation.num_clients} "
          f"clients, {cfg.federation.rounds} rounds, fingerprint {fingerprint}", flush=True)

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        method.load_state(model, strategy.state)
        loss, accuracy = evaluate(model, tests, device)
        if server_round > 0:
            val_accuracy = None if validation is None else evaluate(model, validation, device)[1]
            rows.append(_round_row(strategy, server_round, loss, accuracy, val_accuracy, rows,
                                   time.perf_counter() - started))
            _write_csv(out / "rounds.csv", rows, ROUND_FIELDS)
            r = rows[-1]
            print(f"[pranc-fed] round {server_round}/{cfg.federation.rounds}  clients {r['received']}/{r['clients']}"
                  f"  up {r['up_bytes']:,} B  down {r['down_bytes']:,} B  total {r['cum_bytes']:,} B"
                  f"  test acc {accuracy:.4f}  loss {loss:.4f}  {r['wall_seconds']:.0f}s", flush=True)
        return MetricRecord({"test-accuracy": accuracy, "test-loss": loss})

    strategy.start(grid=grid, initial_arrays=method.encode_down(strategy.state), num_rounds=cfg.federation.rounds,
                   timeout=cfg.federation.round_timeout, evaluate_fn=central_evaluation)

    _write_csv(out / "ledger.csv", strategy.ledger, ["round", "node", "phase", "direction", "bytes"])
    model_file = _save_model(cfg, method, strategy, model, bundle, out)
    summary = _summary(cfg, strategy, rows, model, fingerprint, model_file, time.perf_counter() - started)
    needed = math.ceil(cfg.federation.min_aggregated_share * cfg.federation.rounds)
    if summary["rounds_aggregated"] < needed:
        summary["failure"] = (f"only {summary['rounds_aggregated']} of {cfg.federation.rounds} rounds aggregated, fewer "
                              f"than federation.min_aggregated_share requires ({needed}); see 'replies' for why")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if "failure" in summary:
        print(f"[pranc-fed] run failed: {summary['failure']}; results in {out}", flush=True)
        raise RunFailed(summary["failure"])
    print(f"[pranc-fed] done: final test accuracy {summary['final_test_accuracy']:.4f}, "
          f"{summary['total_bytes']:,} bytes on the wire; results in {out}", flush=True)
    return summary


class RunFailed(RuntimeError):
    """The run ended without enough aggregated rounds: its model is not a result."""


def _round_row(strategy: PrancFedStrategy, server_round: int, loss: float, accuracy: float,
               val_accuracy: float | None, rows: list[dict], wall: float) -> dict:
    stats = strategy.round_stats(server_round)  # a round that sent nothing still gets its (empty) stats
    up = stats.up_bytes + stats.eval_up_bytes
    down = stats.down_bytes + stats.eval_down_bytes
    cum_up = (rows[-1]["cum_up_bytes"] if rows else 0) + up
    cum_down = (rows[-1]["cum_down_bytes"] if rows else 0) + down
    return {"round": server_round, "clients": stats.sampled, "received": stats.received,
            "dropped": len(stats.dropped), "up_bytes": up, "down_bytes": down,
            "cum_up_bytes": cum_up, "cum_down_bytes": cum_down, "cum_bytes": cum_up + cum_down,
            "train_loss": stats.train_loss, "val_accuracy": val_accuracy, "test_accuracy": accuracy, "test_loss": loss,
            "wall_seconds": round(wall, 3)}


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _save_model(cfg, method, strategy, model, bundle, out: Path) -> Path:
    """PRANC: a .pranc file (seed + alpha); dense methods: an .npz of the state (no pickle)."""
    method.load_state(model, strategy.state)
    if isinstance(model, PrancModel):
        path = out / "model.pranc"
        model.save(path, cfg.pranc.alpha_dtype, model_args(bundle), bundle.preprocessing.to_dict(),
                   {"config": cfg.name, "rounds": cfg.federation.rounds})
        return path
    path = out / "model.npz"
    np.savez(path, **strategy.state)
    return path


def _summary(cfg, strategy, rows, model, fingerprint, model_file, wall) -> dict:
    from .models import count_parameters
    covered, local = count_parameters(strategy.method.network(model))
    accuracies = [r["test_accuracy"] for r in rows]
    return {
        "method": cfg.federation.method, "name": cfg.name, "arch": cfg.model.arch, "dataset": cfg.data.dataset,
        "final_test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies) if accuracies else None,
        "final_val_accuracy": rows[-1]["val_accuracy"] if rows else None,
        "total_up_bytes": sum(r["up_bytes"] for r in rows), "total_down_bytes": sum(r["down_bytes"] for r in rows),
        "total_bytes": sum(r["up_bytes"] + r["down_bytes"] for r in rows),
        "rounds": len(rows), "rounds_aggregated": sum(s.aggregated for s in strategy.rounds),
        "clients": cfg.federation.num_clients,
        "num_coeffs": cfg.pranc.num_coeffs if isinstance(model, PrancModel) else None,
        "param_count": covered + local, "covered_param_count": covered, "local_param_count": local,
        "dense_fp32_bytes_per_transfer": 4 * (covered + local),
        "fingerprint": fingerprint, "model_file": str(model_file), "model_file_bytes": model_file.stat().st_size,
        "wall_seconds": round(wall, 3),
        "replies": [{"round": s.round, "sampled": s.sampled, "received": s.received, "dropped": s.dropped}
                    for s in strategy.rounds],
    }
