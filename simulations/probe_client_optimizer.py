"""In-process FedAvg of PRANC's alpha, for ranking client-optimiser choices before a real comparison.

    .venv/bin/python simulations/probe_client_optimizer.py NAME [K=5000] [lr=0.002] [persist=0|1] [R=12]

MNIST/LeNet, the 10 IID partitions of configs/mnist_lenet_long.yaml, every client every round, float32
alpha, plain averaging; persist=1 keeps each client's Adam state between rounds. Prints one JSON line
per round with the accuracy on the server's 5,000 held-out images. No Flower, no bytes: a probe only;
every figure in docs/results.md that comes from it says so.
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pranc_fed.config import load_config  # noqa: E402
from pranc_fed.data import client_split, load_dataset, make_loader, partition_indices  # noqa: E402
from pranc_fed.models import build_pranc  # noqa: E402
from pranc_fed.training import evaluate, federated_train_sets, train_steps  # noqa: E402

name, opts = sys.argv[1], dict(a.split("=") for a in sys.argv[2:])
K, lr, rounds = int(opts.get("K", 5000)), float(opts.get("lr", 0.002)), int(opts.get("R", 12))
persist = opts.get("persist", "0") == "1"
torch.set_num_threads(1)
cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mnist_lenet_long.yaml", [f"pranc.num_coeffs={K}"])
bundle = load_dataset(cfg.data.dataset)
train, val = federated_train_sets(cfg, bundle)
parts = partition_indices(train.labels.numpy(), 10, "iid", cfg.seed, 0.5, 2)
clients = [train.select(client_split(p, cfg.data.val_fraction, cfg.seed + i)[0]) for i, p in enumerate(parts)]
device = torch.device("cpu")
model = build_pranc(cfg, bundle, device)
alpha = model.alpha.detach().clone()
states = [None] * len(clients)
started = time.time()
for r in range(1, rounds + 1):
    deltas = []
    for c, data in enumerate(clients):
        with torch.no_grad():
            model.alpha.copy_(alpha)
        opt = torch.optim.Adam([model.alpha], lr=lr)
        if persist and states[c] is not None:
            opt.load_state_dict(states[c])
        train_steps(model, make_loader(data, cfg.train.batch_size, shuffle=True, seed=cfg.seed + 1000 * r), opt, device)
        states[c] = opt.state_dict() if persist else None
        deltas.append(model.alpha.detach() - alpha)
    alpha = alpha + torch.stack(deltas).mean(0)
    with torch.no_grad():
        model.alpha.copy_(alpha)
    loss, acc = evaluate(model, make_loader(val, 1000, shuffle=False, seed=0), device)
    print(json.dumps({"probe": name, "round": r, "val_accuracy": round(acc, 4), "val_loss": round(loss, 4),
                      "seconds": round(time.time() - started)}), flush=True)
