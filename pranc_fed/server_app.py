"""Flower ServerApp: build the initial model from the config, run the strategy with central
evaluation after every round (the strategy's RunRecorder writes rounds.csv, ledger.csv and the
checkpoint), then the final model and summary.json (results.py)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from . import atomic_write
from .cli import preflight
from .config import ConfigError, ExperimentConfig, config_from_dict, config_from_run_config, config_to_dict
from .data import DatasetError, load_configured, make_loader
from .loggers import MetricLoggers
from .methods import get_method
from .pranc import PrancModel
from .results import CHECKPOINT, Evaluation, RunRecorder, parameter_counts, save_results
from .strategy import MethodStrategy
from .topology import is_gossip
from .training import evaluate, federated_train_sets, resolve_device, test_loader

APP_DIR = Path(__file__).resolve().parents[1]

app = ServerApp()
log = logging.getLogger("pranc_fed.server")


def output_dir(cfg: ExperimentConfig) -> Path:
    """A relative out_dir resolves against the ServerApp's working folder, as any path a ServerApp opens
    does: the SuperLink's, which for `flwr run .`'s local SuperLink is the folder of the `flwr run` that
    started it. Flower tells the ServerApp nothing of the folder `flwr run` ran in, and its copy of the
    app (APP_DIR) moves with every change of the code, so a resumed run would not find its checkpoint."""
    return cfg.resolved_out_dir().resolve()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = checked_config(context)
    run_federated(grid, cfg, output_dir(cfg))


def checked_config(context: Context) -> ExperimentConfig:
    """The run's config after the CLI's pre-flight checks, which a bare `flwr run` never ran. A failure
    prints its one-line reason first: Flower follows it with a traceback and records the run as failed."""
    try:
        cfg = config_from_run_config(context.run_config, APP_DIR)
        preflight(cfg)
    except (ConfigError, DatasetError) as e:
        print(f"[pranc-fed] error: {e}", flush=True)
        raise
    return cfg


def run_federated(grid: Grid, cfg: ExperimentConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    trackers = MetricLoggers(cfg, out, step_key="round")  # first: a tracker that is not installed fails now
    started = time.perf_counter()
    device = resolve_device(cfg.train.device)
    bundle = load_configured(cfg.data)
    method = get_method(cfg)
    model = method.build_model(bundle, device)
    fingerprint = method.fingerprint(model)
    if is_gossip(cfg.federation.topology):
        from .gossip import GossipRelay  # decentralised: the server only relays (gossip.py)
        strategy = GossipRelay(cfg, method, method.state_of(model), fingerprint)
    elif cfg.secagg.enabled:
        from .secagg import SecureAggregation  # the server reads only the sum of masked updates (secagg.py)
        strategy = SecureAggregation(cfg, method, method.state_of(model), fingerprint)
    else:
        strategy = MethodStrategy(cfg, method, method.state_of(model), fingerprint)
    tests = test_loader(cfg, bundle)
    held_out = federated_train_sets(cfg, bundle)[1]
    validation = None if held_out is None else make_loader(held_out, 1000, shuffle=False, seed=cfg.seed)
    rows: list[dict] = _resume(cfg, strategy, out) if cfg.federation.resume else []
    started -= rows[-1]["wall_seconds"] if rows else 0
    atomic_write(out / "config.json", lambda f: f.write(json.dumps(config_to_dict(cfg), indent=2).encode()))
    print(f"[pranc-fed] {cfg.name}: {cfg.federation.method} on {cfg.model.arch}, {cfg.federation.num_clients} "
          f"clients, {cfg.federation.rounds} rounds, fingerprint {fingerprint}"
          + (f"; decentralised over topology {cfg.federation.topology} (the server only relays)"
             if is_gossip(cfg.federation.topology) else "")
          + (f"; resumed after round {rows[-1]['round']}" if rows else "") + f"; results in {out}", flush=True)
    if method.privacy.enabled:
        print(f"[pranc-fed] {method.privacy.describe(cfg.federation.rounds)}", flush=True)
    if cfg.secagg.enabled:
        print(f"[pranc-fed] secure aggregation: the server reads only each round's sum of masked updates, averaged "
              f"with equal weights; values clipped to +-{cfg.secagg.clip_range:g}", flush=True)

    def evaluate_state(state) -> Evaluation:
        """Central evaluation of a global state: test loss and accuracy, and the server's validation accuracy."""
        method.load_state(model, state)
        loss, accuracy = evaluate(model, tests, device)
        return Evaluation(loss, accuracy, None if validation is None else evaluate(model, validation, device)[1])

    recorder = RunRecorder(out, trackers, rows, started, cfg.federation.rounds)
    if not rows:  # round 0: the initial model, where accuracy-against-bytes curves start
        recorder.record(strategy, 0, evaluate_state(strategy.state))
    strategy.run(grid, rows[-1]["round"] + 1, cfg.federation.rounds, cfg.federation.round_timeout, evaluate_state,
                 recorder)
    trackers.close()

    method.load_state(model, strategy.state)
    summary = _summary(cfg, strategy, rows, model, fingerprint, time.perf_counter() - started)
    needed = math.ceil(cfg.federation.min_aggregated_share * cfg.federation.rounds)
    if summary["rounds_aggregated"] < needed:
        summary["failure"] = (f"only {summary['rounds_aggregated']} of {cfg.federation.rounds} rounds aggregated, fewer "
                              f"than federation.min_aggregated_share requires ({needed}); see 'replies' for why")
    summary = save_results(out, cfg, bundle, model, strategy.state, summary, rounds=cfg.federation.rounds)
    if "failure" in summary:
        print(f"[pranc-fed] run failed: {summary['failure']}; results in {out}", flush=True)
        raise RunFailed(summary["failure"])
    if "final_worst_accuracy" in summary:
        print(f"[pranc-fed] agents: mean test accuracy {summary['final_test_accuracy']:.4f}, worst "
              f"{summary['final_worst_accuracy']:.4f}; {summary['total_edge_bytes']:,} bytes over "
              f"{summary['edges']} edges ({summary['total_edge_bytes'] / max(summary['edges'], 1):,.0f} per edge)",
              flush=True)
    print(f"[pranc-fed] done: final test accuracy {summary['final_test_accuracy']:.4f}, "
          f"{summary['total_bytes']:,} bytes on the wire; results in {out}", flush=True)
    return summary


def _privacy_summary(privacy, rows) -> dict | None:
    """summary.json's privacy: the mechanism and the (epsilon, delta) spent after each round."""
    if not privacy.enabled:
        return None
    return {"mode": privacy.mode, "clipping_norm": privacy.clipping_norm, "noise_multiplier": privacy.noise_multiplier,
            "sample_rate": privacy.sample_rate, "delta": privacy.delta, "accountant": "opacus RDP",
            "epsilon": rows[-1]["epsilon"] if rows else None,
            "epsilon_per_round": [r["epsilon"] for r in rows if r["round"] > 0]}


class RunFailed(RuntimeError):
    """The run ended without enough aggregated rounds: its model is not a result."""


def check_resume(cfg: ExperimentConfig, out: Path) -> bool:
    """True when out holds a checkpoint that cfg can continue; ConfigError when it holds another run's."""
    if not (out / CHECKPOINT).is_file():
        return False
    try:
        saved = config_from_dict(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{out}/config.json cannot be read ({e}); it is needed to resume the run in {out}") from None
    if _without_resume(saved) != _without_resume(cfg):
        raise ConfigError(f"{out} holds a run of another config: resume it with the same config and overrides "
                          "(only federation.rounds may change)")
    return True


def _resume(cfg: ExperimentConfig, strategy: MethodStrategy, out: Path) -> list[dict]:
    """Restore the strategy from out's checkpoint; the rounds.csv rows so far ([] without a checkpoint)."""
    if not check_resume(cfg, out):
        print(f"[pranc-fed] {out} holds no checkpoint yet: starting from round 1", flush=True)
        return []
    with np.load(out / CHECKPOINT, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"]))
    strategy.restore(arrays, meta)
    return meta["rows"]


def _without_resume(cfg: ExperimentConfig) -> dict:
    """What must match to resume: everything but the flag, the folder (it may move), the rounds
    (more rounds extend a run) and where metrics are reported."""
    d = config_to_dict(cfg)
    d.pop("out_dir")
    d.pop("logging")
    d["federation"].pop("resume")
    d["federation"].pop("rounds")
    return d


def _summary(cfg, strategy, rows, model, fingerprint, wall) -> dict:
    counts = parameter_counts(strategy.method.network(model))
    accuracies = [r["test_accuracy"] for r in rows if r["round"] > 0]
    return {
        "method": cfg.federation.method, "name": cfg.name, "arch": cfg.model.arch, "dataset": cfg.data.dataset,
        "initial_test_accuracy": rows[0]["test_accuracy"] if rows and rows[0]["round"] == 0 else None,
        "final_test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies) if accuracies else None,
        "final_val_accuracy": rows[-1]["val_accuracy"] if rows else None,
        "total_up_bytes": sum(r["up_bytes"] for r in rows), "total_down_bytes": sum(r["down_bytes"] for r in rows),
        "total_bytes": sum(r["up_bytes"] + r["down_bytes"] for r in rows),
        "rounds": len(accuracies), "rounds_aggregated": sum(s.aggregated for s in strategy.rounds),
        "clients": cfg.federation.num_clients,
        "num_coeffs": cfg.pranc.num_coeffs if isinstance(model, PrancModel) else None,
        **counts, "dense_fp32_bytes_per_transfer": 4 * counts["param_count"],
        "fingerprint": fingerprint, "wall_seconds": round(wall, 3), "privacy": _privacy_summary(strategy.method.privacy, rows),
        **strategy.summary_extras(),
        "replies": [{"round": s.round, "sampled": s.sampled, "received": s.received, "dropped": s.dropped}
                    for s in strategy.rounds],
    }
