"""Server side: sample clients, validate every reply, aggregate, apply the server optimiser,
and keep a ledger of the bytes every message costs as Flower serialises it."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from . import aggregation, quoted
from .aggregation import ServerOptimizer
from .config import ExperimentConfig
from .methods import InvalidReply, Method, State
from .methods.base import record_bytes
from .results import LEDGER_FIELDS, Evaluation, RunRecorder

log = logging.getLogger("pranc_fed.strategy")

# The metrics a reply may carry, per phase; anything else is dropped with the reply.
# partition-id and worker-id come once per node and run, so ledger.csv can name the data partition
# and the machine behind a node id.
REPLY_METRICS = {"train": ("num-examples", "train-loss", "partition-id", "worker-id", "secagg-clipped"),
                 "secagg-keys": ("num-examples", "partition-id", "worker-id"),  # secagg.py's key exchange
                 "evaluate": ("num-examples", "val-loss", "val-accuracy", "partition-id", "worker-id"),
                 # an agent's message in decentralised mode (gossip.py): what it mixed and refused
                 "gossip": ("num-examples", "train-loss", "neighbours-mixed", "neighbours-dropped", "partition-id",
                            "worker-id")}
# A worker id is 56 bits naming a machine (client_app.worker_id) plus bit 63, which makes every id
# a 10-byte varint: a run's bytes do not depend on the machines it ran on.
WORKER_IDS = range(1 << 63, (1 << 63) + (1 << 56))


def worker_name(worker_id: int) -> str:
    """A worker id as ledger.csv writes it: the 14 hex digits its machine's Ray node id starts with."""
    return f"{worker_id - WORKER_IDS.start:014x}"


def check_integer(key: str, value, allowed: range) -> None:
    """Refuse a reply whose integer field `key` is not an int in `allowed`."""
    if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
        raise InvalidReply(f"{key} {value!r} is not an integer in [{allowed.start}, {allowed.stop - 1}]")


def content_size(content: RecordDict) -> int:
    """A lower bound of a message's serialised size, read without copying or decoding anything:
    its array data, record keys and text values."""
    size = 0
    for key, record in content.items():
        size += len(key)
        for name, value in record.items():
            values = value if isinstance(value, list) else [value]
            size += len(name) + sum(len(v.data) if isinstance(v, Array) else
                                    len(v) if isinstance(v, (str, bytes)) else 8 for v in values)
    return size


@dataclass
class RoundStats:
    round: int
    sampled: int = 0
    received: int = 0
    down_bytes: int = 0
    up_bytes: int = 0
    eval_down_bytes: int = 0
    eval_up_bytes: int = 0
    train_loss: float | None = None
    dropped: dict[str, str] = field(default_factory=dict)  # node id -> reason
    aggregated: bool = False


class MethodStrategy(FedAvg):
    """FedAvg-shaped strategy over any Method's state; see methods/base.py for the protocol."""

    def __init__(self, cfg: ExperimentConfig, method: Method, state: State, fingerprint: str):
        fed = cfg.federation
        super().__init__(fraction_train=fed.fraction_train, fraction_evaluate=1.0 if fed.client_eval else 0.0,
                         min_train_nodes=fed.min_train_clients, min_evaluate_nodes=fed.min_train_clients,
                         min_available_nodes=fed.min_train_clients)
        self.cfg, self.method, self.state, self.fingerprint = cfg, method, state, fingerprint
        self.optimizer = ServerOptimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum)
        self.rng = random.Random(cfg.seed)
        self.rounds: list[RoundStats] = []
        self.ledger: list[dict] = []  # one row per message: round, node, phase, direction, bytes
        self.partitions: dict[int, int] = {}  # node -> the data partition it said it holds (ledger_rows)
        self.workers: dict[int, int] = {}  # node -> the worker id of the machine that ran its first reply
        self.sent: list[Message] = []  # this phase's instructions (Flower sets their ids when it pushes them)
        self.server_memory: dict[str, np.ndarray] = {}  # the method's own server state (feedback, posteriors)
        self.node_periods: dict[int, int] = {}  # node -> the method's period its last accepted reply was in
        # No method's reply needs more than four float32 copies of the whole state.
        self.max_reply_bytes = 16 * sum(v.size for v in state.values()) + 65_536

    def run(self, grid: Grid, first_round: int, num_rounds: int, timeout: float,
            evaluate: Callable[[State], Evaluation], recorder: RunRecorder) -> None:
        """Flower's Strategy.start from any round (a resumed run starts after its checkpoint): after
        each round, evaluate(the global state), then the recorder writes the round down."""
        for server_round in range(first_round, num_rounds + 1):
            log.info("[ROUND %d/%d]", server_round, num_rounds)
            self.train_round(grid, server_round, timeout)
            replies = grid.send_and_receive(self.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(), grid),
                                            timeout=timeout)
            self.aggregate_evaluate(server_round, replies)
            recorder.record(self, server_round, evaluate(self.state))

    def train_round(self, grid: Grid, server_round: int, timeout: float) -> None:
        """Broadcast, train, aggregate (secagg.SecureAggregation masks this part)."""
        replies = grid.send_and_receive(self.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid),
                                        timeout=timeout)
        self.aggregate_train(server_round, replies)

    # Everything a resumed run needs, as arrays (exact, any dtype) and JSON.
    _SAVED_ARRAYS = {"state": "state", "memory": "server_memory"}

    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {f"{prefix}:{k}": np.asarray(v) for prefix, attr in self._SAVED_ARRAYS.items()
                  for k, v in getattr(self, attr).items()}
        arrays |= {f"optimizer-{moment}:{k}": np.asarray(v) for moment in ("m", "v")
                   for k, v in getattr(self.optimizer, moment).items()}
        version, internal, gauss = self.rng.getstate()
        meta = {"rng": [version, list(internal), gauss], "rounds": [dataclasses.asdict(r) for r in self.rounds],
                "ledger": self.ledger, "partitions": {str(k): v for k, v in self.partitions.items()},
                "workers": {str(k): v for k, v in self.workers.items()},
                "node_periods": {str(k): v for k, v in self.node_periods.items()},
                "method": self.method.checkpoint()}
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k.split(":", 1)[1]: v for k, v in arrays.items() if k.split(":", 1)[0] == prefix}
        for prefix, attr in self._SAVED_ARRAYS.items():
            setattr(self, attr, part(prefix))
        self.optimizer.m, self.optimizer.v = part("optimizer-m"), part("optimizer-v")
        version, internal, gauss = meta["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.rounds = [RoundStats(**r) for r in meta["rounds"]]
        self.ledger = meta["ledger"]
        self.partitions = {int(k): v for k, v in meta.get("partitions", {}).items()}  # none in older checkpoints
        self.workers = {int(k): v for k, v in meta.get("workers", {}).items()}
        self.node_periods = {int(k): v for k, v in meta["node_periods"].items()}
        self.method.restore(meta["method"])

    def _sample(self, grid: Grid, fraction: float) -> list[int]:
        """Seeded sampling over sorted node ids, so every method sees the same clients."""
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            log.info("waiting for nodes: %d connected, %d needed", len(nodes), self.min_available_nodes)
            time.sleep(1)
        size = min(len(nodes), max(int(len(nodes) * fraction), self.min_train_nodes))
        return sorted(self.rng.sample(nodes, size))

    def _broadcast(self, server_round: int, grid: Grid, fraction: float, phase: str, message_type: str,
                   nodes: list[int] | None = None, extra_config: dict | None = None) -> list[Message]:
        """The state to `nodes` (default: a sample of `fraction`), with extra_config's keys in every config."""
        nodes = self._sample(grid, fraction) if nodes is None else nodes
        arrays = self.method.encode_down(self.state, self.server_memory)
        config = ConfigRecord({"server-round": server_round, "fingerprint": self.fingerprint} | (extra_config or {}))
        stats = self.round_stats(server_round)
        self.sent, total = [], 0
        for node in nodes:
            # What this node lacks to rebuild the model (re-seeded PRANC's earlier periods), if anything.
            extra = self.method.catch_up(self.state, self.server_memory, self.node_periods.get(node, 0))
            content = RecordDict({"arrays": ArrayRecord(dict(arrays.items()) | extra) if extra else arrays,
                                  "config": config})
            size = record_bytes(content)
            total += size
            self.ledger.append({"round": server_round, "node": node, "phase": phase, "direction": "down", "bytes": size})
            self.sent.append(Message(content=content, message_type=message_type, dst_node_id=node))
        if phase == "train":  # added: secure aggregation's key exchange counts its own bytes first
            stats.sampled, stats.down_bytes = len(nodes), stats.down_bytes + total
        else:
            stats.eval_down_bytes = total
        return self.sent

    def round_stats(self, server_round: int) -> RoundStats:
        if not self.rounds or self.rounds[-1].round != server_round:
            self.rounds.append(RoundStats(server_round))
        return self.rounds[-1]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.state = self.method.begin_round(self.state, server_round, self.server_memory)
        return self._broadcast(server_round, grid, self.fraction_train, "train", MessageType.TRAIN)

    def _check_reply(self, msg: Message, phase: str) -> tuple[int, MetricRecord]:
        """Validate everything but the arrays; returns (num-examples, metrics)."""
        if msg.has_error():
            raise InvalidReply(f"client error: {quoted(msg.error.reason)}")
        content = msg.content
        required = [("metrics", MetricRecord), ("config", ConfigRecord)]
        for key, kind in required + ([("arrays", ArrayRecord)] if phase != "evaluate" else []):
            if not isinstance(content.get(key), kind):
                raise InvalidReply(f"missing {kind.__name__} {key!r}")
        if set(content["config"].keys()) != {"fingerprint"}:
            raise InvalidReply(f"config keys {quoted(sorted(content['config'].keys()))}, expected ['fingerprint']")
        received = content["config"].get("fingerprint")
        if received != self.fingerprint:
            raise InvalidReply(f"fingerprint {quoted(received)} differs from the server's {self.fingerprint!r}")
        metrics = content["metrics"]
        for key, value in metrics.items():
            if key not in REPLY_METRICS[phase]:
                raise InvalidReply(f"unexpected metric {quoted(key)}; known: {', '.join(REPLY_METRICS[phase])}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise InvalidReply(f"metric {key!r} is {quoted(value)}, not a finite number")
        examples = metrics.get("num-examples")
        check_integer("num-examples", examples, range(1, self.cfg.federation.max_num_examples + 1))
        for key, allowed in (("partition-id", range(self.cfg.federation.num_clients)), ("worker-id", WORKER_IDS)):
            if key in metrics:
                check_integer(key, metrics[key], allowed)
        return examples, metrics

    def _receive(self, server_round: int, replies: Iterable[Message], phase: str):
        """Yield (node, num-examples, metrics, arrays) of replies that pass the checks; log and count the rest."""
        stats = self.round_stats(server_round)
        # An error reply made by the SuperLink (e.g. "node unavailable" after a node died) comes
        # from the SuperLink's own id: name the node the instruction went to instead.
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self.sent if m.metadata.message_id}
        silent = set(sent_to.values())
        for msg in replies:
            node = sent_to.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            silent.discard(node)
            size = 0 if msg.has_error() else content_size(msg.content)
            oversized = size > self.max_reply_bytes  # then refused before any of it is re-serialised or decoded
            size = size if oversized else size and record_bytes(msg.content)
            self.ledger.append({"round": server_round, "node": node, "phase": phase, "direction": "up", "bytes": size})
            if phase == "evaluate":
                stats.eval_up_bytes += size
            else:
                stats.up_bytes += size
            if oversized:
                self._drop(server_round, phase, node, InvalidReply(
                    f"reply of about {size:,} bytes, more than the {self.max_reply_bytes:,} any reply of this method needs"))
                continue
            try:
                examples, metrics = self._check_reply(msg, phase)
            except Exception as e:  # noqa: BLE001 - whatever a reply holds, it is dropped, never the run
                self._drop(server_round, phase, node, e)
            else:
                if "partition-id" in metrics:
                    self.partitions[node] = int(metrics["partition-id"])
                if "worker-id" in metrics:
                    self.workers[node] = int(metrics["worker-id"])
                yield node, examples, metrics, msg.content.get("arrays")
        for node in sorted(silent):
            self._drop(server_round, phase, node, InvalidReply(
                f"no reply within federation.round_timeout ({self.cfg.federation.round_timeout:g} s)"))

    def ledger_rows(self) -> list[dict]:
        """ledger.csv: every message, with the data partition and the worker (the machine) of its node
        where the node has named them (in its first reply, so earlier rows of that node get them too)."""
        return [row | {"partition": self.partitions.get(row["node"], ""),
                       "worker": worker_name(self.workers[row["node"]]) if row["node"] in self.workers else ""}
                for row in self.ledger]

    # What the RunRecorder asks besides the round stats; the decentralised relay (gossip.py) adds its own.
    def round_extras(self, server_round: int, evaluation: Evaluation) -> dict:
        """rounds.csv columns beyond results.ROUND_FIELDS, for this round."""
        return {}

    def round_fields(self) -> list[str]:
        return []

    def tables(self) -> dict[str, tuple[list[dict], list[str]]]:
        """The CSV files rewritten after every round: name -> (rows, columns)."""
        return {"ledger.csv": (self.ledger_rows(), LEDGER_FIELDS)}

    def summary_extras(self) -> dict:
        return {}

    def _drop(self, server_round: int, phase: str, node: int, reason: Exception) -> None:
        text = str(reason) if isinstance(reason, InvalidReply) else f"{type(reason).__name__}: {quoted(str(reason))}"
        log.warning("round %d: dropped %s reply of node %s: %s", server_round, phase, node, text)
        self.round_stats(server_round).dropped[str(node)] = text
        self.node_periods.pop(node, None)  # it may have lost its state: catch it up from the start

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        stats = self.round_stats(server_round)
        fed = self.cfg.federation
        valid = []  # (node, num-examples, train-loss, delta)
        for node, examples, metrics, arrays in self._receive(server_round, replies, "train"):
            try:
                valid.append((node, examples, float(metrics.get("train-loss", float("nan"))),
                              self.method.decode_up(arrays, self.state)))
            except Exception as e:  # noqa: BLE001 - a reply the method cannot decode is dropped, never the run
                self._drop(server_round, "train", node, e)
        bounded, refused = aggregation.bound_norms([d for *_, d in valid], fed.norm_bound, fed.norm_factor)
        for i, reason in refused.items():
            self._drop(server_round, "train", valid[i][0], InvalidReply(reason))
        kept = [i for i in range(len(valid)) if i not in refused]
        deltas = [bounded[i] for i in kept]
        for i in kept:
            self.node_periods[valid[i][0]] = self.method.period(self.state)
        weights = aggregation.client_weights([valid[i][1] for i in kept], fed.client_weighting, fed.weight_cap)
        losses = [valid[i][2] for i in kept]
        stats.received = len(deltas)
        if len(deltas) < self.cfg.federation.min_train_clients:
            log.warning("round %d: %d valid replies, fewer than federation.min_train_clients=%d; global model kept",
                        server_round, len(deltas), self.cfg.federation.min_train_clients)
            return None, None
        new = self.method.aggregate(self.state, deltas, weights, self.optimizer, self.server_memory)
        self.state = {k: v.astype(np.float32) for k, v in new.items()}
        stats.aggregated = True
        stats.train_loss = float(np.dot(weights / weights.sum(), losses))
        # Flower's contract: the aggregated arrays, here the exact global state. Not an encoding, which
        # would spend a stochastic-rounding draw that belongs to the next broadcast.
        return ArrayRecord({k: Array(v) for k, v in self.state.items()}), MetricRecord({"train-loss": stats.train_loss})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if not self.cfg.federation.client_eval:
            self.sent = []  # no evaluation instructions: none can time out
            return []
        return self._broadcast(server_round, grid, 1.0, "evaluate", MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        results = [(n, m) for _, n, m, _ in self._receive(server_round, replies, "evaluate")]
        if not results:
            return None
        total = sum(n for n, _ in results)
        return MetricRecord({key: sum(n * float(m.get(key, 0.0)) for n, m in results) / total
                             for key in ("val-accuracy", "val-loss")})
