"""`pranc-fed train`: PRANC (alpha + local params) or the dense model trained on one machine, on the
whole training set (data.train_subset of it), with the loop of training.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import ExperimentConfig
from .data import load_dataset, make_loader, subset
from .models import build_dense, build_pranc, count_parameters, model_args
from .pranc import PrancModel
from .training import evaluate, make_optimizer, resolve_device, test_loader, train_steps


def train_centralized(cfg: ExperimentConfig, out_dir: Path, log=print) -> dict:
    """`pranc-fed train`: PRANC (alpha + local params) or the dense model on the whole train set."""
    device = resolve_device(cfg.train.device)
    bundle = load_dataset(cfg.data.dataset)
    train = bundle.train if cfg.data.train_subset is None else subset(bundle.train, cfg.data.train_subset, cfg.seed)
    started = time.perf_counter()
    model = build_pranc(cfg, bundle, device) if cfg.train.mode == "pranc" else build_dense(cfg, bundle, device)
    optimizer = make_optimizer(model, cfg)
    tests = test_loader(cfg, bundle)
    history, best = [], 0.0
    log(f"training {cfg.model.arch} ({cfg.train.mode}) on {len(train)} examples, device {device}")
    for epoch in range(1, cfg.train.epochs + 1):
        loader = make_loader(train, cfg.train.batch_size, shuffle=True, seed=cfg.seed + epoch)
        train_loss, _ = train_steps(model, loader, optimizer, device)
        test_loss, test_acc = evaluate(model, tests, device)
        best = max(best, test_acc)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_acc,
                        "wall_seconds": time.perf_counter() - started})
        log(f"epoch {epoch}/{cfg.train.epochs}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
            f"test acc {test_acc:.4f}  {history[-1]['wall_seconds']:.0f}s")
    out_dir.mkdir(parents=True, exist_ok=True)
    covered, local = count_parameters(model.module if isinstance(model, PrancModel) else model)
    summary = {
        "mode": cfg.train.mode, "arch": cfg.model.arch, "dataset": cfg.data.dataset,
        "final_test_accuracy": history[-1]["test_accuracy"], "best_test_accuracy": best,
        "epochs": cfg.train.epochs, "num_coeffs": cfg.pranc.num_coeffs if cfg.train.mode == "pranc" else None,
        "param_count": covered + local, "covered_param_count": covered, "local_param_count": local,
        "wall_seconds": time.perf_counter() - started, "device": str(device), "history": history,
    }
    if isinstance(model, PrancModel):
        path = out_dir / "model.pranc"
        summary["model_file"] = str(path)
        summary["model_file_bytes"] = model.save(path, cfg.pranc.alpha_dtype, model_args(bundle),
                                                 bundle.preprocessing.to_dict(), {"config": cfg.name})
    else:
        torch.save(model.state_dict(), out_dir / "model.pt")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"wrote {out_dir / 'summary.json'}")
    return summary

