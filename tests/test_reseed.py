"""Re-seeded PRANC (pranc.reseed_period): exact folds, catch-up of a late client, and P = rounds
equal to the fixed basis. Rounds run in-process through the real strategy and method code, with a
seeded random step standing in for local training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pranc_fed.basis import Basis, period_seed
from pranc_fed.config import load_config
from pranc_fed.data import load_dataset
from pranc_fed.methods import get_method
from pranc_fed.models import build_model
from pranc_fed.pranc import PrancModel
from pranc_fed.strategy import MethodStrategy

K = 64


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def test_fold_is_exact_and_independent_of_cache_and_chunking() -> None:
    module = build_model("lenet")
    alpha = torch.from_numpy(np.random.default_rng(0).standard_normal(K).astype(np.float32))
    cached = Basis.for_module(module, K, 5, "lenet", cache="memory")
    streamed = Basis.for_module(module, K, 5, "lenet", cache="none", budget_mb=0.05)
    folded = cached.fold(alpha)
    assert torch.equal(folded, streamed.fold(alpha))
    expected = (cached.theta0.double() + cached.matrix().double() @ alpha.double()).float()
    assert torch.equal(folded, expected)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(Basis.for_module(module, K, 5, "lenet", cache="none").fold(alpha), folded)
    finally:
        torch.set_num_threads(threads)


def test_a_model_advances_into_the_next_period_and_replays_its_history() -> None:
    torch.manual_seed(0)
    model = PrancModel(build_model("lenet"), K, seed=9, arch="lenet", cache="memory")
    a0 = torch.linspace(-1, 1, K)
    theta_before = model.basis.expand(a0)
    model.advance(a0)
    assert model.basis.seed == period_seed(9, 1) and model.alpha.abs().sum() == 0
    assert torch.equal(model.basis.theta0, Basis.for_module(build_model("lenet"), K, 9, "lenet", cache="none").fold(a0))
    torch.testing.assert_close(model.basis.theta0, theta_before)  # the fold is the same model
    other = PrancModel(build_model("lenet"), K, seed=9, arch="lenet", cache="none")
    other.sync_history(np.stack([h.numpy() for h in model.history]))
    assert torch.equal(other.basis.theta0, model.basis.theta0) and other.fingerprint == model.fingerprint


class Grid:
    def __init__(self):
        self.nodes: list[int] = []

    def get_node_ids(self):
        return self.nodes


def run(rounds: int, participation, *overrides: str):
    """Rounds of the real strategy with in-process clients; participation[r] = the nodes of round r + 1.
    Returns the strategy, the server's model after loading the final state, and the clients."""
    cfg = load_config(None, [f"pranc.num_coeffs={K}", "federation.min_train_clients=1", "pranc.cache=memory",
                             *overrides])
    method = get_method(cfg)
    bundle = load_dataset("mnist")
    server_model = method.build_model(bundle, torch.device("cpu"))
    strategy = MethodStrategy(cfg, method, method.state_of(server_model), method.fingerprint(server_model))
    strategy.min_train_nodes = strategy.min_available_nodes = 1
    clients = {}
    grid = Grid()
    for r in range(1, rounds + 1):
        grid.nodes = sorted(participation[r - 1])
        replies = []
        for msg in strategy.configure_train(r, None, None, grid):
            node = msg.metadata.dst_node_id
            if node not in clients:  # a separate process in a real run: its own method, model and memory
                m = get_method(cfg)
                clients[node] = (m, m.build_model(bundle, torch.device("cpu")), {})
            m, model, memory = clients[node]
            start = m.load_down(model, msg.content["arrays"], memory)
            step = np.random.default_rng([node, r]).standard_normal(K).astype(np.float32) * 0.05
            with torch.no_grad():
                model.alpha.add_(torch.from_numpy(step))
            content = RecordDict({"arrays": m.encode_up(model, start, memory),
                                  "metrics": MetricRecord({"num-examples": 100, "train-loss": 1.0}),
                                  "config": ConfigRecord({"fingerprint": strategy.fingerprint})})
            instruction = Message(content=RecordDict({}), dst_node_id=node, message_type=MessageType.TRAIN)
            replies.append(Message(content=content, reply_to=instruction))
        arrays, _ = strategy.aggregate_train(r, replies)
        assert arrays is not None, strategy.rounds[-1].dropped
    method.load_state(server_model, strategy.state)
    return strategy, server_model, clients


@pytest.mark.parametrize("codec", ["float32", "int8"])
def test_a_client_joining_late_rebuilds_exactly_the_servers_model(codec: str) -> None:
    everyone_but_3 = [{1, 2}] * 4 + [{1, 2, 3}]
    strategy, server_model, clients = run(5, everyone_but_3, "pranc.reseed_period=2",
                                          f"pranc.downlink_codec={codec}", f"pranc.uplink_codec={codec}")
    assert len(strategy.state["history"]) == 2  # folds at the starts of rounds 3 and 5
    m, late, memory = clients[3]
    assert len(late.history) == 2 and late.fingerprint == server_model.fingerprint
    assert torch.equal(late.basis.theta0, server_model.basis.theta0)
    for node in (1, 2):
        assert torch.equal(clients[node][1].basis.theta0, server_model.basis.theta0)
    # round 5: nodes 1 and 2 (who hold fold0) got fold1 only; node 3 got both, and the ledger counts them
    down = {row["node"]: row["bytes"] for row in strategy.ledger if row["round"] == 5 and row["direction"] == "down"}
    one_fold = 4 * K if codec == "float32" else K + 4  # data bytes; each array adds ~30 B of key, dtype, shape
    assert 0 < down[3] - down[1] - one_fold <= 70
    round4 = {row["node"]: row["bytes"] for row in strategy.ledger if row["round"] == 4 and row["direction"] == "down"}
    assert abs(down[1] - round4[1]) <= 70  # a period's start sends the fold in place of the all-zero alpha


def test_a_period_as_long_as_the_run_is_the_fixed_basis() -> None:
    nodes = [{1, 2}] * 3
    fixed, fixed_model, _ = run(3, nodes)
    once, once_model, _ = run(3, nodes, "pranc.reseed_period=3")
    np.testing.assert_array_equal(fixed.state["alpha"], once.state["alpha"])
    assert len(once.state["history"]) == 0
    assert torch.equal(fixed_model.basis.expand(fixed_model.alpha), once_model.basis.expand(once_model.alpha))


def test_a_reply_from_another_period_is_dropped() -> None:
    strategy, _, clients = run(3, [{1, 2}] * 3, "pranc.reseed_period=2")
    m, model, memory = clients[1]
    stale = m.encode_up(model, m.state_of(model) | {"alpha": np.zeros(K, np.float32)}, {})
    stale["period"] = m.encode_down({"alpha": np.zeros(K, np.float32), "history": np.zeros((0, K), np.float32)})["period"]
    content = RecordDict({"arrays": stale, "metrics": MetricRecord({"num-examples": 100, "train-loss": 1.0}),
                          "config": ConfigRecord({"fingerprint": strategy.fingerprint})})
    before = strategy.state["alpha"].copy()
    strategy.aggregate_train(4, [Message(content=content, reply_to=Message(
        content=RecordDict({}), dst_node_id=1, message_type=MessageType.TRAIN))])
    assert "period" in strategy.rounds[-1].dropped["1"]
    np.testing.assert_array_equal(strategy.state["alpha"], before)


def test_a_reseeded_model_file_round_trips(tmp_path) -> None:
    _, server_model, _ = run(3, [{1, 2}] * 3, "pranc.reseed_period=1")
    path = tmp_path / "m.pranc"
    server_model.save(path)
    back = PrancModel.load(path)
    assert len(back.history) == 2 and back.fingerprint == server_model.fingerprint
    assert torch.equal(back.basis.expand(back.alpha), server_model.basis.expand(server_model.alpha))
