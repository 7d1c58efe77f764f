"""Flower ClientApp: rebuild the model and basis from the run config, check the fingerprint,
train on this node's partition, reply with what the method sends (for PRANC: alpha)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .basis import FingerprintMismatch
from .config import ExperimentConfig, config_from_dict, config_from_run_config, config_to_dict
from .data import TensorImageDataset, client_split, load_dataset, make_loader, partition_indices, subset
from .methods import Method, get_method
from .training import evaluate, make_optimizer, resolve_device, train_steps

APP_DIR = Path(__file__).resolve().parents[1]
MEMORY_KEY = "method-memory"

app = ClientApp()


@dataclass
class Node:
    """What a client process builds once and reuses across rounds (data, model, basis)."""
    cfg: ExperimentConfig
    method: Method
    model: torch.nn.Module
    fingerprint: str
    train: TensorImageDataset
    val: TensorImageDataset
    device: torch.device


@functools.lru_cache(maxsize=2)
def _build_node(config_json: str, partition_id: int, num_partitions: int) -> Node:
    cfg = config_from_dict(json.loads(config_json))
    device = resolve_device(cfg.train.device)
    bundle = load_dataset(cfg.data.dataset)
    train = subset(bundle.train, cfg.data.train_subset, cfg.seed)
    d = cfg.data
    parts = partition_indices(train.labels.numpy(), num_partitions, d.partition, cfg.seed,
                              d.dirichlet_alpha, d.classes_per_client)
    train_idx, val_idx = client_split(parts[partition_id], d.val_fraction, cfg.seed + partition_id)
    method = get_method(cfg)
    model = method.build_model(bundle, device)
    return Node(cfg, method, model, method.fingerprint(model), train.select(train_idx), train.select(val_idx), device)


def node_for(context: Context) -> Node:
    cfg = config_from_run_config(context.run_config, APP_DIR)
    return _build_node(json.dumps(config_to_dict(cfg), sort_keys=True),
                       int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))


def _start(msg: Message, context: Context) -> tuple[Node, dict[str, np.ndarray]]:
    """Check the fingerprint, then load the broadcast state into the model."""
    node = node_for(context)
    received = msg.content["config"].get("fingerprint")
    if received != node.fingerprint:
        raise FingerprintMismatch(f"server fingerprint {received!r} differs from this client's "
                                  f"{node.fingerprint!r}: both must run the same config")
    memory = {k: v.numpy() for k, v in context.state.get(MEMORY_KEY, ArrayRecord()).items()}
    return node, memory


@app.train()
def train(msg: Message, context: Context) -> Message:
    node, memory = _start(msg, context)
    cfg, fed = node.cfg, node.cfg.federation
    start = node.method.load_down(node.model, msg.content["arrays"], memory)
    optimizer = make_optimizer(node.model, cfg)
    server_round = int(msg.content["config"]["server-round"])
    losses = []
    for epoch in range(fed.local_epochs):
        loader = make_loader(node.train, cfg.train.batch_size, shuffle=True,
                             seed=cfg.seed + 1000 * server_round + epoch)
        loss, _ = train_steps(node.model, loader, optimizer, node.device, fed.local_steps)
        losses.append(loss)
    reply = node.method.encode_up(node.model, start, memory)
    if memory:
        context.state[MEMORY_KEY] = ArrayRecord({k: Array(v) for k, v in memory.items()})
    metrics = MetricRecord({"num-examples": len(node.train), "train-loss": float(np.mean(losses))})
    content = RecordDict({"arrays": reply, "metrics": metrics,
                          "config": ConfigRecord({"fingerprint": node.fingerprint})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_val(msg: Message, context: Context) -> Message:
    node, memory = _start(msg, context)
    node.method.load_down(node.model, msg.content["arrays"], memory)
    loss, accuracy = evaluate(node.model, make_loader(node.val, 1000, shuffle=False, seed=0), node.device)
    metrics = MetricRecord({"num-examples": max(len(node.val), 1), "val-loss": loss, "val-accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics, "config": ConfigRecord({"fingerprint": node.fingerprint})}),
                   reply_to=msg)

