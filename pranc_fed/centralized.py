"""`pranc-fed train`: PRANC (alpha + local params) or the dense model trained on one machine, on the
whole training set (data.train_subset of it), with the loop of training.py."""

from __future__ import annotations

import time
from pathlib import Path

from .config import ExperimentConfig
from .data import load_configured, make_loader, subset
from .loggers import MetricLoggers
from .models import build_dense, build_pranc
from .pranc import PrancModel
from .results import parameter_counts, save_results
from .training import evaluate, make_optimizer, resolve_device, test_loader, train_steps


def train_centralized(cfg: ExperimentConfig, out_dir: Path, log=print) -> dict:
    """`pranc-fed train`: PRANC (alpha + local params) or the dense model on the whole train set."""
    trackers = MetricLoggers(cfg, out_dir, step_key="epoch")  # first: a tracker that is not installed fails now
    device = resolve_device(cfg.train.device)
    bundle = load_configured(cfg.data)
    train = bundle.train if cfg.data.train_subset is None else subset(bundle.train, cfg.data.train_subset, cfg.seed)
    started = time.perf_counter()
    model = build_pranc(cfg, bundle, device) if cfg.train.mode == "pranc" else build_dense(cfg, bundle, device)
    optimizer = make_optimizer(model, cfg)
    tests = test_loader(cfg, bundle)
    history, best = [], 0.0
    log(f"training {cfg.model.arch} ({cfg.train.mode}) on {len(train)} examples, device {device}")
    for epoch in range(1, cfg.train.epochs + 1):
        loader = make_loader(train, cfg.train.batch_size, shuffle=True, seed=cfg.seed + epoch)
        train_loss, _ = train_steps(model, loader, optimizer, device, desc=f"epoch {epoch}/{cfg.train.epochs}")
        test_loss, test_acc = evaluate(model, tests, device)
        best = max(best, test_acc)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_acc,
                        "wall_seconds": time.perf_counter() - started})
        trackers.log(history[-1])
        log(f"epoch {epoch}/{cfg.train.epochs}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
            f"test acc {test_acc:.4f}  {history[-1]['wall_seconds']:.0f}s")
    trackers.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "mode": cfg.train.mode, "arch": cfg.model.arch, "dataset": cfg.data.dataset,
        "final_test_accuracy": history[-1]["test_accuracy"], "best_test_accuracy": best,
        "epochs": cfg.train.epochs, "num_coeffs": cfg.pranc.num_coeffs if cfg.train.mode == "pranc" else None,
        **parameter_counts(model.module if isinstance(model, PrancModel) else model),
        "wall_seconds": time.perf_counter() - started, "device": str(device), "history": history,
    }
    dense_state = {k: v.cpu().numpy() for k, v in model.state_dict().items()}
    summary = save_results(out_dir, cfg, bundle, model, dense_state, summary)
    log(f"wrote {out_dir / 'summary.json'}")
    return summary
