"""Decentralised learning (federation.topology != star): agents on a graph (topology.py) train their
own state and average it with their neighbours'; no node averages for everyone.

A round of `gossip_steps` S exchanges; in each, every agent i

    mixes   x_i <- x_i + combine(0, m_j - x_i for the neighbours j it heard from)   (weights w_ij, self 1 - sum)
    trains  (first exchange of the round only) from x_i, on its own data
    sends   m_i = encode_down(x_i)  to every neighbour: the method's coded state (PRANC: K alpha values through
            pranc.downlink_codec, with the sender's error-feedback residual in its Flower state)

so what agent i mixes in an exchange is what its neighbours sent in the one before (the previous round's
last exchange, for the first). combine is federation.aggregation with the weights of federation.mixing
(mean: Metropolis-Hastings gossip); federation.norm_bound bounds each neighbour's pull before it,
against a median over the agent's own zero pull and its neighbours' (clip: self-centred clipped gossip;
aggregation=median: the coordinate median of the agent and its neighbours). A neighbour that stays silent
(churn, not sampled by fraction_train) or whose message the receiver refuses (InvalidReply: keys, dtype,
shape, size, finiteness, as any reply) is left out and its weight goes to the agent's own: the weights
still sum to one, and nobody waits for it.

Transport: Flower has no peer-to-peer messages, so the ServerApp runs GossipRelay, which only forwards
each agent's message to its neighbours (it sees every message, as a relay does; it never averages).
ledger.csv counts what really crossed Flower; edges.csv counts, per edge, the message as a peer would
send it: the sender's arrays plus the envelope {server-round, fingerprint}, the same bytes a star
broadcast to one client costs. Each agent's state lives in its Flower state (context.state), so the
same app runs as a simulation and on real SuperNodes.

Evaluation: the relay decodes every message it forwards anyway, so after each round it evaluates each
agent's last message on the central test set (agents need no test data, and no bytes are spent):
rounds.csv gets the mean (test_accuracy) and worst agent accuracy and the consensus distance
sqrt(mean_i |x_i - mean_j x_j|^2) over the whole state (PRANC: alpha and any norm parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from . import aggregation
from .config import ExperimentConfig, FederationConfig
from .methods import InvalidReply, Method, State
from .methods.base import record_bytes
from .results import Evaluation, RunRecorder
from .strategy import MethodStrategy, content_size
from .topology import build_graph, mixing_weights

log = logging.getLogger("pranc_fed.gossip")

GOSSIP_ACTION = "train.gossip"  # the ClientApp's handler of an exchange (client_app.gossip)
NEIGHBOUR_PREFIX = "from-"  # a forwarded message's record: from-<partition of its sender>
EDGE_FIELDS = ["round", "step", "src", "dst", "bytes"]
AGENT_FIELDS = ["round", "partition", "node", "test_accuracy", "test_loss"]
ROUND_EXTRAS = ["agents", "worst_accuracy", "best_accuracy", "consensus_distance", "edge_bytes",
                "bytes_per_agent", "cum_edge_bytes"]


# ---------------------------------------------------------------- the agent's side

def read_neighbour(method: Method, record, like: State, max_bytes: int) -> State:
    """A forwarded neighbour message as the state it stands for; InvalidReply on anything malformed."""
    if not isinstance(record, ArrayRecord):
        raise InvalidReply(f"expected an ArrayRecord, got {type(record).__name__}")
    if (size := content_size(RecordDict({"arrays": record}))) > max_bytes:
        raise InvalidReply(f"message of about {size:,} bytes, more than the {max_bytes:,} any message needs")
    return method.decode_down(record, like)


def mix(own: State, received: list[tuple[float, State]], fed: FederationConfig) -> State:
    """The agent's state after mixing what it accepted (module docstring); `received` is (w_ij, x_j)."""
    if not received:
        return own
    zero = {k: np.zeros_like(v) for k, v in own.items()}
    pulls = [zero] + [{k: x[k] - v for k, v in own.items()} for _, x in received]
    bounded, refused = aggregation.bound_norms(pulls, fed.norm_bound, fed.norm_factor)
    kept = [i for i in range(1, len(pulls)) if i not in refused]
    weights = [received[i - 1][0] for i in kept]
    combined = aggregation.combine([bounded[0]] + [bounded[i] for i in kept],
                                   np.asarray([max(0.0, 1.0 - sum(weights))] + weights), fed.aggregation,
                                   fed.trim_fraction, fed.krum_byzantine, fed.krum_select)
    return {k: (v + combined[k]).astype(np.float32) for k, v in own.items()}


def check_weights(neighbours, weights, num_agents: int) -> list[tuple[int, float]]:
    """The (neighbour, weight) pairs of an exchange, refused unless they can be mixing weights."""
    if not isinstance(neighbours, list) or not isinstance(weights, list) or len(neighbours) != len(weights):
        raise InvalidReply("an exchange must list as many neighbours as weights")
    pairs = list(zip(neighbours, weights))
    if any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < num_agents for j in neighbours) or \
            len(set(neighbours)) != len(neighbours):
        raise InvalidReply(f"neighbours {neighbours!r} are not distinct agents in 0..{num_agents - 1}")
    if any(not isinstance(w, float) or not 0 <= w <= 1 for w in weights) or sum(weights) > 1 + 1e-9:
        raise InvalidReply(f"weights {weights!r} are not mixing weights (each in [0, 1], summing to at most 1)")
    return pairs


# ---------------------------------------------------------------- the relay

class GossipRelay(MethodStrategy):
    """The ServerApp's strategy when federation.topology != star: it forwards messages, never averages."""

    def __init__(self, cfg: ExperimentConfig, method: Method, state: State, fingerprint: str):
        super().__init__(cfg, method, state, fingerprint)
        fed = cfg.federation
        self.initial = state
        self.graph = build_graph(fed.topology, fed.num_clients, fed.degree, cfg.seed)
        self.weights = mixing_weights(self.graph, fed.mixing)
        self.published: dict[int, ArrayRecord] = {}  # partition -> its message of the last exchange
        self.agent_states: dict[int, State] = {}  # partition -> the state that message decodes to
        self.edges: list[dict] = []  # one row per edge and message: what a peer-to-peer network would carry
        self.agent_rows: list[dict] = []  # one row per agent and round: its central test accuracy
        self.extras: dict[int, dict] = {}  # round -> ROUND_EXTRAS

    def run(self, grid: Grid, first_round: int, num_rounds: int, timeout: float,
            evaluate: Callable[[State], Evaluation], recorder: RunRecorder) -> None:
        steps = self.cfg.federation.gossip_steps
        for server_round in range(first_round, num_rounds + 1):
            log.info("[ROUND %d/%d] gossip", server_round, num_rounds)
            nodes = self._sample(grid, self.fraction_train)
            self.round_stats(server_round).sampled = len(nodes)
            for step in range(1, steps + 1):
                self.sent = [self._forward(server_round, step, node) for node in nodes]
                self._collect(server_round, step, grid.send_and_receive(self.sent, timeout=timeout))
            recorder.record(self, server_round, self._evaluate_agents(server_round, evaluate))

    def _forward(self, server_round: int, step: int, node: int) -> Message:
        """The node's instruction: its neighbours' messages of the last exchange, with their weights."""
        part = self.partitions.get(node)  # unknown until the node's first reply: no neighbours yet
        heard = [j for j in sorted(self.graph[part]) if j in self.published] if part is not None else []
        content = RecordDict({"config": ConfigRecord({
            "server-round": server_round, "fingerprint": self.fingerprint, "step": step, "train": step == 1,
            "neighbours": heard, "weights": [self.weights[part][j] for j in heard]})})
        for j in heard:
            content[f"{NEIGHBOUR_PREFIX}{j}"] = self.published[j]
        size = record_bytes(content)
        self.ledger.append({"round": server_round, "node": node, "phase": "gossip", "direction": "down", "bytes": size})
        self.round_stats(server_round).down_bytes += size
        return Message(content=content, message_type=GOSSIP_ACTION, dst_node_id=node)

    def _collect(self, server_round: int, step: int, replies: Iterable[Message]) -> None:
        stats = self.round_stats(server_round)
        published, states, losses = {}, {}, []
        for node, examples, metrics, arrays in self._receive(server_round, replies, "gossip"):
            part = self.partitions.get(node)
            try:
                if part is None:
                    raise InvalidReply("the node never said which data partition (agent) it is")
                states[part] = self.method.decode_down(arrays, self.initial)
            except Exception as e:  # noqa: BLE001 - a message nobody can decode is dropped, never the run
                self._drop(server_round, "gossip", node, e)
                continue
            published[part] = arrays
            if "train-loss" in metrics:
                losses.append((examples, float(metrics["train-loss"])))
            # As a peer would send it: the arrays and the envelope, once to each neighbour.
            size = record_bytes(RecordDict({"arrays": arrays, "config": ConfigRecord(
                {"server-round": server_round, "fingerprint": self.fingerprint})}))
            self.edges += [{"round": server_round, "step": step, "src": part, "dst": j, "bytes": size}
                           for j in sorted(self.graph[part])]
        self.published, self.agent_states = published, states  # a silent agent is skipped next exchange
        stats.received = len(published)
        stats.aggregated = len(published) >= self.cfg.federation.min_train_clients
        if losses:
            n = np.array([e for e, _ in losses], dtype=np.float64)
            stats.train_loss = float(np.dot(n / n.sum(), [loss for _, loss in losses]))

    def _evaluate_agents(self, server_round: int, evaluate: Callable[[State], Evaluation]) -> Evaluation:
        """Every agent's last message on the central test set; the round's mean, worst and spread."""
        node_of = {p: n for n, p in self.partitions.items()}
        results = {}
        for part, state in sorted(self.agent_states.items()):
            results[part] = evaluate(state)
            self.agent_rows.append({"round": server_round, "partition": part, "node": node_of.get(part, ""),
                                    "test_accuracy": results[part].test_accuracy,
                                    "test_loss": results[part].test_loss})
        if self.agent_states:  # the saved model: the lowest-numbered agent's, never an average
            self.state = self.agent_states[min(self.agent_states)]
        edge_bytes = sum(e["bytes"] for e in self.edges if e["round"] == server_round)
        accuracies = [r.test_accuracy for r in results.values()]
        self.extras[server_round] = {
            "agents": len(results), "worst_accuracy": min(accuracies, default=None),
            "best_accuracy": max(accuracies, default=None),
            "consensus_distance": consensus_distance(list(self.agent_states.values())),
            "edge_bytes": edge_bytes, "bytes_per_agent": edge_bytes / self.cfg.federation.num_clients,
            "cum_edge_bytes": self._cum_edge_bytes(server_round - 1) + edge_bytes}
        if not results:
            return evaluate(self.state)
        vals = [r.val_accuracy for r in results.values() if r.val_accuracy is not None]
        return Evaluation(float(np.mean([r.test_loss for r in results.values()])), float(np.mean(accuracies)),
                          float(np.mean(vals)) if vals else None)

    def _cum_edge_bytes(self, server_round: int) -> int:
        return self.extras.get(server_round, {}).get("cum_edge_bytes", 0)

    # ---------------------------------------------------------------- what the recorder asks

    def round_extras(self, server_round: int, evaluation: Evaluation) -> dict:
        if server_round in self.extras:
            return self.extras[server_round]
        # Round 0 (every agent starts from the shared initial model) and rounds in which nobody spoke.
        return {"agents": 0 if server_round else self.cfg.federation.num_clients,
                "worst_accuracy": evaluation.test_accuracy, "best_accuracy": evaluation.test_accuracy,
                "consensus_distance": 0.0 if server_round == 0 else None, "edge_bytes": 0, "bytes_per_agent": 0.0,
                "cum_edge_bytes": self._cum_edge_bytes(server_round - 1)}

    def round_fields(self) -> list[str]:
        return ROUND_EXTRAS

    def tables(self) -> dict[str, tuple[list[dict], list[str]]]:
        return super().tables() | {"edges.csv": (self.edges, EDGE_FIELDS), "agents.csv": (self.agent_rows, AGENT_FIELDS)}

    def summary_extras(self) -> dict:
        last = self.extras[max(self.extras)] if self.extras else {}
        return {"topology": self.cfg.federation.topology, "edges": sum(len(g) for g in self.graph) // 2,
                "gossip_steps": self.cfg.federation.gossip_steps,
                "final_worst_accuracy": last.get("worst_accuracy"),
                "final_consensus_distance": last.get("consensus_distance"),
                "total_edge_bytes": sum(e["bytes"] for e in self.edges),
                "saved_model": "the last message of the lowest-numbered agent that spoke (no node averages)"}


def consensus_distance(states: list[State]) -> float | None:
    """sqrt(mean_i |x_i - mean_j x_j|^2) over every key: 0 when all agents agree."""
    if not states:
        return None
    flat = np.stack([aggregation.flatten(s).astype(np.float64) for s in states])
    return float(np.sqrt(np.mean(np.sum(np.square(flat - flat.mean(axis=0)), axis=1))))
