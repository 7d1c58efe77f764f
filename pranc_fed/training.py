"""Model construction, the local training loop and evaluation: shared by `pranc-fed train`,
the Flower client and the server's central evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from .basis import covered_segments, make_blocks
from .config import ConfigError, ExperimentConfig
from .data import DatasetBundle, TensorImageDataset, hold_out, load_dataset, make_loader, subset
from .models import build_dense, build_model, build_pranc, count_parameters, model_args
from .pranc import PrancModel


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but no CUDA device is available; use auto or cpu")
    return device


def make_optimizer(model: nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """Adam, as the official PRANC code uses: alpha at pranc.alpha_lr, every other weight at train.lr."""
    t = cfg.train
    if isinstance(model, PrancModel):
        groups = [{"params": [model.alpha], "lr": cfg.pranc.alpha_lr}]
        if model.local_parameters():
            groups.append({"params": model.local_parameters(), "lr": t.lr})
        return torch.optim.Adam(groups, weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def train_steps(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                max_steps: int | None = None) -> tuple[float, int]:
    """One pass over loader (or max_steps batches); returns (mean loss, examples seen)."""
    model.train()
    total_loss, seen = 0.0, 0
    for step, (x, y) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        seen += len(y)
    return total_loss / max(seen, 1), seen


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    """(mean loss, accuracy). A PrancModel expands theta once, not once per batch."""
    net = model.materialize() if isinstance(model, PrancModel) else model
    net.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = net(x)
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def test_loader(cfg: ExperimentConfig, bundle: DatasetBundle, batch_size: int = 1000):
    test = bundle.test if cfg.data.test_subset is None else subset(bundle.test, cfg.data.test_subset, cfg.seed)
    return make_loader(test, batch_size, shuffle=False, seed=cfg.seed)


def preflight(cfg: ExperimentConfig, centralised: bool = False) -> None:
    """What would otherwise fail inside a run, minutes later and only in its log, checked before any
    process starts: the dataset, the device, the architecture and its input shape, and the size of
    the basis (of train.mode when centralised, else of federation.method). Each failure is a one-line
    ConfigError (DatasetError for the data)."""
    bundle = load_dataset(cfg.data.dataset)
    try:
        resolve_device(cfg.train.device)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    try:
        with torch.device("meta"):
            module = build_model(cfg.model.arch, **model_args(bundle))
    except ValueError as e:
        raise ConfigError(f"model.arch: {e}") from None
    shape = bundle.preprocessing.input_shape
    try:
        with torch.device("meta"):
            module(torch.empty(2, *shape))
    except RuntimeError as e:
        raise ConfigError(f"model.arch {cfg.model.arch!r} cannot take the {'x'.join(map(str, shape))} images of "
                          f"{cfg.data.dataset!r} ({str(e).splitlines()[0]}); pick an architecture for this input "
                          "(`pranc-fed models` lists them)") from None
    if (cfg.train.mode if centralised else cfg.federation.method) == "pranc":
        p = cfg.pranc
        try:
            values = sum((b.row1 - b.row0) * (b.col1 - b.col0)
                         for b in make_blocks(covered_segments(module), p.num_coeffs, p.layout))
        except ValueError as e:
            raise ConfigError(f"pranc: {e}") from None
        gib = values * 4 / 2**30
        if gib > p.max_basis_gb:
            raise ConfigError(f"the basis of {cfg.model.arch} at K={p.num_coeffs} ({p.layout}) holds {values:,} values "
                              f"({gib:,.1f} GiB in float32), more than pranc.max_basis_gb={p.max_basis_gb:g}: every "
                              "step would stream it; use pranc.layout=per_layer, a smaller pranc.num_coeffs, or raise "
                              "the limit (pranc.cache=disk keeps one copy on disk)")


def federated_train_sets(cfg: ExperimentConfig, bundle: DatasetBundle) -> tuple[TensorImageDataset, TensorImageDataset | None]:
    """(what the clients partition, the server's validation set): data.train_subset of the training set,
    less the data.server_val_size examples the server holds out. Clients and server draw the same split."""
    d = cfg.data
    return hold_out(subset(bundle.train, d.train_subset, cfg.seed), d.server_val_size, cfg.seed + 1)


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

