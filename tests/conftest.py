"""Shared pytest settings and helpers."""

import shlex

import torch
from flwr.app import Context, RecordDict

from pranc_fed.config import load_config
from pranc_fed.data import load_dataset
from pranc_fed.methods import get_method


def pytest_configure(config):
    config.addinivalue_line("markers", "deploy: starts real SuperLink/SuperNode processes on loopback "
                                       "(slow; select with -m deploy, skip with -m 'not deploy')")
    config.addinivalue_line("markers", "slow: a real Flower simulation of a minute or more on a loaded CPU "
                                       "(runs by default; skip with -m 'not slow')")


# Overrides for tests whose checks read alpha as plain float32 values (bytes = K x 4 + envelope, the
# test-only ClientApp's attacks and dumps): the default config codes it in fewer bits.
FLOAT32_ALPHA = ["pranc.uplink_codec=float32", "pranc.downlink_codec=float32"]


class InProcessGrid:
    """A Grid that hands each message to the real ClientApp handler of its message type (handlers: type ->
    function), in this process. Nodes in `offline` never answer (churn); on_reply(msg, reply) may change
    or drop (None) a reply."""

    def __init__(self, run_config: dict, n: int, handlers: dict):
        self.run_config, self.handlers, self.offline = run_config, handlers, set()
        self.contexts = {100 + p: Context(run_id=1, node_id=100 + p, node_config={"partition-id": p, "num-partitions": n},
                                          state=RecordDict(), run_config=run_config) for p in range(n)}
        self.on_reply = lambda msg, reply: reply
        self.count = 0

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            self.count += 1
            msg.metadata.__dict__["_message_id"] = f"m{self.count}"  # Flower sets it when it pushes a message
            handler = self.handlers[msg.metadata.message_type]
            if msg.metadata.dst_node_id not in self.offline:
                reply = self.on_reply(msg, handler(msg, self.contexts[msg.metadata.dst_node_id]))
                if reply is not None:
                    replies.append(reply)
        return replies


def build(config_file: str | None, settings: list[str]):
    """(cfg, method, model on the CPU) of config_file + settings."""
    cfg = load_config(config_file, settings)
    method = get_method(cfg)
    return cfg, method, method.build_model(load_dataset(cfg.data.dataset), torch.device("cpu"))


def in_process_federation(strategy_class, config_file: str, settings: list[str], n: int, handlers: dict):
    """A server strategy of strategy_class and an InProcessGrid of n clients, both from config_file + settings."""
    cfg, method, model = build(config_file, settings)
    strategy = strategy_class(cfg, method, method.state_of(model), method.fingerprint(model))
    return strategy, InProcessGrid({"config-file": config_file, "overrides": shlex.join(settings)}, n, handlers)
