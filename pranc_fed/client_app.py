"""Flower ClientApp: rebuild the model and basis from the run config, check the fingerprint,
train on this node's partition, reply with what the method sends (for PRANC: alpha)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from .basis import FingerprintMismatch
from .config import ExperimentConfig, config_from_dict, config_from_run_config, config_to_dict
from .data import TensorImageDataset, client_split, load_configured, make_loader, partition_indices
from . import gossip as gossip_mode
from . import secagg
from .methods import InvalidReply, Method, State, get_method
from .methods.base import keep_optimizer, restore_optimizer
from .strategy import WORKER_IDS
from .training import evaluate, federated_train_sets, resolve_device, train_steps

APP_DIR = Path(__file__).resolve().parents[1]
MEMORY_KEY = "method-memory"
IDENTITY_SENT_KEY = "identity-sent"
AGENT_STATE_KEY = "agent-state"  # decentralised mode: the agent's own exact state, kept between exchanges

app = ClientApp()


@dataclass
class Node:
    """What a client trains with: the model (and its basis) is built once per process and shared by
    every partition the process serves, since each round overwrites its state; data is per partition."""
    cfg: ExperimentConfig
    method: Method
    model: torch.nn.Module
    fingerprint: str
    device: torch.device
    initial: State  # the model's state as built, the same on every party: where every agent starts
    train: TensorImageDataset
    val: TensorImageDataset


@functools.lru_cache(maxsize=1)
def _model(config_json: str) -> tuple[ExperimentConfig, Method, torch.nn.Module, torch.device, State]:
    cfg = config_from_dict(json.loads(config_json))
    device = resolve_device(cfg.train.device)
    method = get_method(cfg)
    model = method.build_model(load_configured(cfg.data), device)
    return cfg, method, model, device, {k: v.copy() for k, v in method.state_of(model).items()}


@functools.lru_cache(maxsize=64)
def _partition(config_json: str, partition_id: int, num_partitions: int) -> tuple[TensorImageDataset, TensorImageDataset]:
    cfg = config_from_dict(json.loads(config_json))
    d = cfg.data
    train, _ = federated_train_sets(cfg, load_configured(d))
    parts = partition_indices(train.labels.numpy(), num_partitions, d.partition, cfg.seed,
                              d.dirichlet_alpha, d.classes_per_client)
    train_idx, val_idx = client_split(parts[partition_id], d.val_fraction, cfg.seed + partition_id)
    return train.select(train_idx), train.select(val_idx)


def node_for(context: Context) -> Node:
    config_json = json.dumps(config_to_dict(config_from_run_config(context.run_config, APP_DIR)), sort_keys=True)
    cfg, method, model, device, initial = _model(config_json)
    partitions = int(context.node_config["num-partitions"])
    if partitions != cfg.federation.num_clients:
        # Flower's own count (flwr run's default is 2 simulated SuperNodes) would split the data
        # otherwise than the config, the summary and the comparison say.
        raise ValueError(f"this SuperNode holds partition {context.node_config['partition-id']} of {partitions} but "
                         f"federation.num_clients is {cfg.federation.num_clients}: start "
                         f"{cfg.federation.num_clients} SuperNodes (flwr run . --federation-config "
                         f"'num-supernodes={cfg.federation.num_clients}', or pranc-fed simulate) or set "
                         f"federation.num_clients={partitions}")
    train, val = _partition(config_json, int(context.node_config["partition-id"]), partitions)
    return Node(cfg, method, model, method.fingerprint(model), device, initial, train, val)


def _start(msg: Message, context: Context) -> tuple[Node, dict[str, np.ndarray]]:
    """Check the fingerprint, then load the broadcast state into the model."""
    node = node_for(context)
    # Start cost (simulations/deploy_scale.py): shown only with FLWR_LOG_LEVEL=DEBUG.
    log(logging.DEBUG, "[pranc-fed] ClientApp %d ready", os.getpid())
    received = msg.content["config"].get("fingerprint")
    if received != node.fingerprint:
        raise FingerprintMismatch(f"server fingerprint {received!r} differs from this client's "
                                  f"{node.fingerprint!r}: both must run the same config")
    memory = {k: v.numpy() for k, v in context.state.get(MEMORY_KEY, ArrayRecord()).items()}
    return node, memory


def worker_id() -> int:
    """This machine as a metric (strategy.WORKER_IDS): under Ray (a simulation's clients run in Ray
    actors) the first 56 bits of the Ray node's id, elsewhere 56 bits of a hash of the host name."""
    ray = sys.modules.get("ray")  # loaded in Ray's actors; a SuperNode's ClientApp never imports it
    if ray is not None and ray.is_initialized():
        bits = int(ray.get_runtime_context().get_node_id()[:14], 16)
    else:
        bits = int.from_bytes(hashlib.blake2b(socket.gethostname().encode(), digest_size=7).digest(), "big")
    return WORKER_IDS.start + bits


def _metrics(context: Context, values: dict[str, int | float]) -> MetricRecord:
    """A reply's metrics; a node's first reply of a run also says which data partition it holds and
    which machine runs it, so the server's ledger can name them (a Flower node id says neither)."""
    if IDENTITY_SENT_KEY not in context.state:
        context.state[IDENTITY_SENT_KEY] = ConfigRecord({"sent": True})
        values = values | {"partition-id": int(context.node_config["partition-id"]), "worker-id": worker_id()}
    return MetricRecord(values)


@app.train()
def train(msg: Message, context: Context) -> Message:
    node, memory = _start(msg, context)
    start = node.method.load_down(node.model, msg.content["arrays"], memory)
    loss = _train_locally(node, int(msg.content["config"]["server-round"]), memory)
    if node.method.privacy.local:
        node.method.privatize_update(node.model, start)
    values: dict[str, int | float] = {"num-examples": len(node.train), "train-loss": loss}
    keys = msg.content["config"].get(secagg.KEYS_CONFIG)
    if keys is None:
        reply = node.method.encode_up(node.model, start, memory)
    else:  # secure aggregation: the update, masked (secagg.py); no codec, no error feedback
        reply, values["secagg-clipped"] = secagg.masked_reply(node.method, node.method.update(node.model, start),
                                                              context, list(keys), node.cfg.secagg.clip_range)
    _keep(context, MEMORY_KEY, memory)
    metrics = _metrics(context, values)
    content = RecordDict({"arrays": reply, "metrics": metrics,
                          "config": ConfigRecord({"fingerprint": node.fingerprint})})
    return Message(content=content, reply_to=msg)


def _train_locally(node: Node, server_round: int, memory: dict[str, np.ndarray]) -> float:
    """federation.local_epochs of training of node.model from what it holds; the mean loss. The
    optimiser starts afresh unless federation.keep_client_optimizer (then its state lives in memory)."""
    cfg, fed = node.cfg, node.cfg.federation
    optimizer = node.method.make_optimizer(node.model)
    if fed.keep_client_optimizer:
        restore_optimizer(optimizer, memory)
    losses = []
    for epoch in range(fed.local_epochs):
        loader = make_loader(node.train, cfg.train.batch_size, shuffle=True,
                             seed=cfg.seed + 1000 * server_round + epoch)
        loss, _ = train_steps(node.model, loader, optimizer, node.device, fed.local_steps)
        losses.append(loss)
    if fed.keep_client_optimizer:
        keep_optimizer(optimizer, memory)
    return float(np.mean(losses))


def _keep(context: Context, key: str, arrays: dict[str, np.ndarray]) -> None:
    if arrays:
        context.state[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


@app.train("gossip")
def gossip(msg: Message, context: Context) -> Message:
    """One exchange of decentralised mode (pranc_fed/gossip.py): mix the neighbours' messages this
    agent accepts, train on the round's first exchange, reply the coded state for the neighbours."""
    node, memory = _start(msg, context)
    config = msg.content["config"]
    own = {k: v.numpy() for k, v in context.state[AGENT_STATE_KEY].items()} \
        if AGENT_STATE_KEY in context.state else node.initial
    pairs = gossip_mode.check_weights(config.get("neighbours"), config.get("weights"), node.cfg.federation.num_clients)
    received, dropped = [], 0
    max_bytes = 16 * sum(v.size for v in own.values()) + 65_536  # as the server's cap on a reply
    for j, weight in pairs:
        try:
            received.append((weight, gossip_mode.read_neighbour(
                node.method, msg.content.get(f"{gossip_mode.NEIGHBOUR_PREFIX}{j}"), own, max_bytes)))
        except (InvalidReply, ValueError, TypeError) as e:  # a bad neighbour is left out, never mixed
            dropped += 1
            log(logging.WARNING, f"[pranc-fed] agent {context.node_config['partition-id']}: dropped the message "
                                 f"of neighbour {j}: {e}")
    state = gossip_mode.mix(own, received, node.cfg.federation)
    values: dict[str, int | float] = {"num-examples": len(node.train), "neighbours-mixed": len(received),
                                      "neighbours-dropped": dropped}
    if config.get("train") is True:
        node.method.load_state(node.model, state)
        values["train-loss"] = _train_locally(node, int(config["server-round"]), memory)
        state = node.method.state_of(node.model)
    reply = node.method.encode_down(state, memory)  # the sender's error-feedback residual lives in memory
    _keep(context, AGENT_STATE_KEY, state)
    _keep(context, MEMORY_KEY, memory)
    content = RecordDict({"arrays": reply, "metrics": _metrics(context, values),
                          "config": ConfigRecord({"fingerprint": node.fingerprint})})
    return Message(content=content, reply_to=msg)


@app.query(secagg.KEYS_ACTION)
def secagg_keys(msg: Message, context: Context) -> Message:
    """Secure aggregation's first exchange of a round: a fresh public key (secagg.py)."""
    node, _ = _start(msg, context)
    content = RecordDict({"arrays": secagg.public_key_reply(context),
                          "metrics": _metrics(context, {"num-examples": len(node.train)}),
                          "config": ConfigRecord({"fingerprint": node.fingerprint})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_val(msg: Message, context: Context) -> Message:
    node, memory = _start(msg, context)
    node.method.load_down(node.model, msg.content["arrays"], memory)
    loss, accuracy = evaluate(node.model, make_loader(node.val, 1000, shuffle=False, seed=0), node.device)
    metrics = _metrics(context, {"num-examples": max(len(node.val), 1), "val-loss": loss, "val-accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics, "config": ConfigRecord({"fingerprint": node.fingerprint})}),
                   reply_to=msg)

