"""The training loop, evaluation and their data loaders: shared by `pranc-fed train`, the Flower
client and the server's central evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

import torch
from torch import nn
from tqdm import tqdm

from .config import ExperimentConfig
from .data import DatasetBundle, TensorImageDataset, hold_out, make_loader, subset
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
                max_steps: int | None = None, desc: str = "train", bar_file: TextIO | None = None) -> tuple[float, int]:
    """One pass over loader (or max_steps batches); returns (mean loss, examples seen). A progress bar
    goes to bar_file (stderr) only when it is a terminal, so Flower's client logs stay as they are."""
    model.train()
    total_loss, seen = 0.0, 0
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    with tqdm(total=steps, desc=desc, unit="batch", file=bar_file, disable=None, leave=False) as bar:
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
            bar.set_postfix_str(f"loss {total_loss / seen:.4f}", refresh=False)
            bar.update()
    return total_loss / max(seen, 1), seen


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str,
             progress: Callable[[int], None] | None = None) -> tuple[float, float]:
    """(mean loss, accuracy); progress(examples so far) after each batch. A PrancModel expands theta
    once, not once per batch."""
    net = model.materialize() if isinstance(model, PrancModel) else model
    net.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = net(x)
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if progress is not None:
            progress(seen)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def test_loader(cfg: ExperimentConfig, bundle: DatasetBundle, batch_size: int = 1000):
    test = bundle.test if cfg.data.test_subset is None else subset(bundle.test, cfg.data.test_subset, cfg.seed)
    return make_loader(test, batch_size, shuffle=False, seed=cfg.seed)


def federated_train_sets(cfg: ExperimentConfig, bundle: DatasetBundle) -> tuple[TensorImageDataset, TensorImageDataset | None]:
    """(what the clients partition, the server's validation set): data.train_subset of the training set,
    less the data.server_val_size examples the server holds out. Clients and server draw the same split."""
    d = cfg.data
    return hold_out(subset(bundle.train, d.train_subset, cfg.seed), d.server_val_size, cfg.seed + 1)
