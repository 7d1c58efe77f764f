"""Decentralised mode (federation.topology != star): graphs and mixing weights, the agents' mix, the
relay's per-edge ledger, churn, refused neighbour messages, and one real Flower simulation."""

import csv
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pranc_fed import client_app
from pranc_fed.config import ConfigError, load_config
from pranc_fed.gossip import GOSSIP_ACTION, GossipRelay, consensus_distance, mix
from pranc_fed.methods.base import record_bytes, to_array
from pranc_fed.results import Evaluation
from pranc_fed.runner import simulate
from pranc_fed.strategy import MethodStrategy
from pranc_fed.topology import TopologyError, build_graph, mixing_matrix, spectral_gap

from .conftest import build, in_process_federation

K = 64


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


# ---------------------------------------------------------------- graphs and weights

@pytest.mark.parametrize("topology,n", [("ring", 10), ("ring", 3), ("torus", 9), ("torus", 12),
                                        ("random_regular", 10), ("random_regular", 50), ("complete", 5)])
@pytest.mark.parametrize("rule", ["metropolis", "max_degree"])
def test_mixing_matrix_is_symmetric_doubly_stochastic_and_mixes(topology, n, rule):
    graph = build_graph(topology, n, degree=4, seed=3)
    w = mixing_matrix(graph, rule)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=0), 1, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-12)
    np.testing.assert_array_equal(w, w.T)
    assert ((w > 0) == (np.eye(n, dtype=bool) | np.array([[j in graph[i] for j in range(n)] for i in range(n)]))).all() \
        or rule == "max_degree"  # max_degree can give a zero self weight on the most connected agents
    assert spectral_gap(w) > 1e-3  # connected: repeated mixing reaches consensus
    if topology == "random_regular":
        assert {len(nbrs) for nbrs in graph} == {4}


def test_graph_files_edge_list_and_adjacency_matrix_give_the_same_graph(tmp_path):
    edges = tmp_path / "edges.txt"
    edges.write_text("# a ring of 4\n0 1\n1 2\n2,3\n3 0  # wraps\n")
    matrix = tmp_path / "adjacency.txt"
    matrix.write_text("0 1 0 1\n1 0 1 0\n0 1 0 1\n1 0 1 0\n")
    assert build_graph(str(edges), 4) == build_graph(str(matrix), 4) == build_graph("ring", 4)


@pytest.mark.parametrize("text,n,expected", [
    ("0 1\n1 5\n", 4, "outside 0..3"), ("0 0\n", 2, "self-loop"), ("0 1\n2 3\n", 4, "cannot reach agent 0"),
    ("0 1 2\n", 4, "expected an edge"), ("0 x\n", 2, "integers"), ("0 1\n0 0\n", 2, "symmetric"),
])
def test_a_bad_graph_file_gets_a_one_line_error(tmp_path, text, n, expected):
    path = tmp_path / "graph.txt"
    path.write_text(text)
    with pytest.raises(TopologyError, match=expected) as info:
        build_graph(str(path), n)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides,expected", [
    (["federation.topology=rng"], "is not allowed; choose one of star, ring"),
    (["federation.topology=ring", "federation.method=fedpm"], "cannot gossip"),
    (["federation.topology=ring", "federation.server_optimizer=adam"], "no server optimiser"),
    (["federation.topology=ring", "federation.resume=true"], "cannot resume"),
    (["federation.topology=ring", "pranc.reseed_period=2"], "reseed_period=0"),
])
def test_a_config_decentralised_mode_cannot_run_is_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_config("configs/mnist_lenet_ring.yaml", overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("topology,n,expected", [("torus", 10, "rows x cols"), ("random_regular", 5, "even"),
                                                 ("missing/graph.txt", 4, "nor a readable file")])
def test_a_graph_that_cannot_be_built_is_refused_before_the_run(topology, n, expected):
    from pranc_fed.cli import preflight
    cfg = load_config("configs/mnist_lenet_ring.yaml", [f"federation.topology={topology}", f"federation.num_clients={n}",
                                                        "federation.degree=3"])
    with pytest.raises(ConfigError, match=expected):
        preflight(cfg)


# ---------------------------------------------------------------- the agents' mix

def _method(*overrides):
    return build("configs/mnist_lenet_ring.yaml", [f"pranc.num_coeffs={K}", *overrides])


@pytest.mark.parametrize("codec", ["float32", "float16"])
def test_agents_that_only_gossip_reach_the_mean_of_their_alphas(codec):
    """No training: every exchange each agent codes its alpha (encode_down, with its error feedback),
    decodes its neighbours' (decode_down) and mixes; the alphas converge to their initial mean."""
    cfg, method, model = _method(f"pranc.downlink_codec={codec}")
    graph = build_graph("ring", 10)
    w = mixing_matrix(graph)
    like = method.state_of(model)
    rng = np.random.default_rng(0)
    states = [{k: (v + rng.normal(0, 1, v.shape)).astype(np.float32) for k, v in like.items()} for _ in range(10)]
    memories = [{} for _ in range(10)]
    mean = np.mean([s["alpha"] for s in states], axis=0)
    start = consensus_distance(states)
    for _ in range(300):
        sent = [method.decode_down(method.encode_down(s, m), like) for s, m in zip(states, memories)]
        states = [mix(states[i], [(w[i, j], sent[j]) for j in sorted(graph[i])], cfg.federation) for i in range(10)]
    assert consensus_distance(states) < 1e-3 * start
    tolerance = 1e-4 if codec == "float32" else 2e-3  # fp16 rounding, fed back, moves the mean a little
    np.testing.assert_allclose(np.mean([s["alpha"] for s in states], axis=0), mean, atol=tolerance)
    for s in states:
        np.testing.assert_allclose(s["alpha"], mean, atol=10 * tolerance)


def test_missing_neighbours_give_their_weight_to_the_agent_itself():
    cfg, method, model = _method()
    own = {"alpha": np.zeros(K, np.float32)}
    heard = {"alpha": np.ones(K, np.float32)}
    np.testing.assert_allclose(mix(own, [(1 / 3, heard)], cfg.federation)["alpha"], 1 / 3)  # not 1/2: renormalised
    assert mix(own, [], cfg.federation) is own


@pytest.mark.parametrize("rule", [["federation.aggregation=median"], ["federation.norm_bound=clip"]])
def test_a_robust_mix_resists_one_wild_neighbour_and_the_mean_does_not(rule):
    cfg, _, _ = _method()
    robust, _, _ = _method(*rule)
    own, good, wild = ({"alpha": np.full(K, v, np.float32)} for v in (0.0, 0.1, 1000.0))
    received = [(1 / 3, good), (1 / 3, wild)]
    assert np.abs(mix(own, received, cfg.federation)["alpha"]).max() > 300
    assert np.abs(mix(own, received, robust.federation)["alpha"]).max() < 0.35


# ---------------------------------------------------------------- the relay with real agents, in process

def _relay(n: int, *overrides):
    settings = [f"federation.num_clients={n}", f"pranc.num_coeffs={K}", "data.train_subset=600", "train.batch_size=64",
                "federation.local_steps=1", "federation.min_train_clients=1", *overrides]
    return in_process_federation(GossipRelay, "configs/mnist_lenet_ring.yaml", settings, n,
                                 {GOSSIP_ACTION: client_app.gossip})


class _Recorder:
    def __init__(self):
        self.rounds = []

    def record(self, strategy, server_round, evaluation):
        self.rounds.append((server_round, evaluation, strategy.round_extras(server_round, evaluation)))


def _run(relay, grid, rounds, first=1):
    recorder = _Recorder()
    relay.run(grid, first, rounds, 10, lambda state: Evaluation(0.0, float(state["alpha"].sum()), None), recorder)
    return recorder


def test_per_edge_bytes_are_the_codec_arrays_plus_the_envelope_of_a_broadcast():
    relay, grid = _relay(4, "pranc.downlink_codec=int8")
    _run(relay, grid, 2)
    edges = relay.edges
    assert {(e["src"], e["dst"]) for e in edges if e["round"] == 2} == {(i, j) for i in range(4) for j in relay.graph[i]}
    star = MethodStrategy(relay.cfg, relay.method, relay.initial, relay.fingerprint)
    for e in edges:
        state = relay.agent_states[e["src"]] if e["round"] == 2 else None
        if state is None:
            continue
        # What the star would broadcast to one client holding that state: the same bytes.
        arrays = relay.method.encode_down(state)
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 2, "fingerprint": star.fingerprint})})
        assert e["bytes"] == record_bytes(content)
        codec_bytes = sum(len(a.data) for a in arrays.values())
        assert codec_bytes == K + 4 * -(-K // 256)  # int8 values plus one float32 scale per block
        assert 0 < e["bytes"] - codec_bytes < 250  # the envelope: keys, dtypes, shapes, round, fingerprint
    per_agent = relay.extras[2]["bytes_per_agent"]
    assert per_agent == sum(e["bytes"] for e in edges if e["round"] == 2) / 4


def test_a_dropped_agent_does_not_stall_its_neighbours_who_renormalise():
    relay, grid = _relay(4)
    recorder = _run(relay, grid, 1)
    node_of = {p: n for n, p in relay.partitions.items()}
    grid.offline = {node_of[0]}  # agent 0 misses round 2
    recorder = _run(relay, grid, 2, first=2)
    assert sorted(relay.agent_states) == [1, 2, 3]  # the others went on without waiting for it
    assert relay.rounds[-1].received == 3 and str(node_of[0]) in relay.rounds[-1].dropped
    assert recorder.rounds[-1][2]["agents"] == 3
    grid.offline = set()
    forwarded = relay._forward(3, 1, node_of[1])
    assert forwarded.content["config"]["neighbours"] == [2]  # agent 0 said nothing last exchange: left out
    reply = client_app.gossip(forwarded, grid.contexts[node_of[1]])
    assert reply.content["metrics"]["neighbours-mixed"] == 1
    _run(relay, grid, 3, first=3)  # and it rejoins
    assert sorted(relay.agent_states) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", ["nan", "shape", "dtype", "not-a-record", "oversize"])
def test_a_bad_neighbour_message_is_dropped_by_the_receiver_and_never_mixed(bad):
    relay, grid = _relay(3)
    _run(relay, grid, 1)
    node_of = {p: n for n, p in relay.partitions.items()}
    msg = relay._forward(2, 1, node_of[0])
    msg.content["config"]["train"] = False  # mixing alone, so the result can be checked exactly
    good = relay.published[1]
    if bad == "nan":
        broken = ArrayRecord({"alpha": to_array(np.full(K, np.nan, np.float32))})
    elif bad == "shape":
        broken = ArrayRecord({"alpha": to_array(np.zeros(K + 1, np.float32))})
    elif bad == "dtype":
        broken = ArrayRecord({"alpha": to_array(np.zeros(K, np.float64))})
    elif bad == "oversize":
        broken = ArrayRecord({"alpha": to_array(np.zeros(K, np.float32)), "junk": Array(np.zeros(10**6, np.float32))})
    if bad == "not-a-record":
        msg.content["from-2"] = ConfigRecord({"alpha": 1.0})
    else:
        msg.content["from-2"] = broken
    context = grid.contexts[node_of[0]]
    own = {k: v.numpy() for k, v in context.state[client_app.AGENT_STATE_KEY].items()}
    reply = client_app.gossip(msg, context)
    assert (reply.content["metrics"]["neighbours-mixed"], reply.content["metrics"]["neighbours-dropped"]) == (1, 1)
    weight = relay.weights[0][1]
    expected = (1 - weight) * own["alpha"] + weight * relay.method.decode_down(good, relay.initial)["alpha"]
    mixed = context.state[client_app.AGENT_STATE_KEY]["alpha"].numpy()
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-7)


def test_mixing_weights_that_cannot_be_weights_fail_the_exchange_not_the_agent_state():
    relay, grid = _relay(3)
    _run(relay, grid, 1)
    node = next(iter(grid.contexts))
    msg = relay._forward(2, 1, node)
    msg.content["config"]["weights"] = [0.9, 0.9]
    from pranc_fed.methods import InvalidReply
    before = dict(grid.contexts[node].state[client_app.AGENT_STATE_KEY].items())
    with pytest.raises(InvalidReply, match="not mixing weights"):
        client_app.gossip(msg, grid.contexts[node])
    assert dict(grid.contexts[node].state[client_app.AGENT_STATE_KEY].items()) == before


# ---------------------------------------------------------------- one real Flower simulation

def test_ring_simulation_end_to_end(tmp_path):
    overrides = ["federation.rounds=2", "federation.num_clients=3", "pranc.num_coeffs=200", "data.train_subset=1500",
                 "data.test_subset=300", "train.batch_size=64", "pranc.alpha_lr=0.03"]
    cfg = load_config("configs/mnist_lenet_ring.yaml", overrides)
    assert simulate("configs/mnist_lenet_ring.yaml", overrides, cfg, tmp_path)
    rows = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["consensus_distance"]) == 0  # every agent starts from the same model
    for r in rows[1:]:
        assert int(r["agents"]) == 3 and float(r["worst_accuracy"]) <= float(r["test_accuracy"])
        assert float(r["consensus_distance"]) > 0  # they trained on different data
    edges = list(csv.DictReader((tmp_path / "edges.csv").open()))
    assert len(edges) == 2 * 3 * 2  # rounds x agents x ring neighbours (a ring of 3 is a triangle)
    assert {int(e["bytes"]) for e in edges} <= set(range(200 * 4, 200 * 4 + 250))  # alpha plus the envelope
    assert sum(int(e["bytes"]) for e in edges) == sum(int(r["edge_bytes"]) for r in rows)
    agents = list(csv.DictReader((tmp_path / "agents.csv").open()))
    assert sorted({a["partition"] for a in agents}) == ["0", "1", "2"]
    assert float(rows[-1]["worst_accuracy"]) == min(float(a["test_accuracy"]) for a in agents if a["round"] == "2")
    assert float(rows[-1]["test_accuracy"]) > 0.2  # the agents learn: twice chance
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["topology"] == "ring" and summary["total_edge_bytes"] == sum(int(e["bytes"]) for e in edges)
    assert summary["final_worst_accuracy"] == float(rows[-1]["worst_accuracy"])


def test_the_gossip_study_scores_only_honest_agents_and_gives_intervals_over_seeds(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
    from gossip_study import ATTACKER, honest_accuracy, seeds_table
    rows = [{"round": r, "partition": p, "node": 100 + p, "test_accuracy": acc, "test_loss": 1.0}
            for r, accs in ((1, [0.5, 0.4, 0.3]), (2, [0.01, 0.7, 0.6])) for p, acc in enumerate(accs)]
    with (tmp_path / "agents.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert ATTACKER == [0]
    assert honest_accuracy(tmp_path) == pytest.approx((0.65, 0.6))  # round 2, agent 0's lie left out
    row = {"mean_accuracy": 0.7, "worst_accuracy": 0.5, "consensus_distance": ""}
    lines = seeds_table({"once": {0: row}, "twice": {0: row, 1: row | {"mean_accuracy": 0.8}}})
    assert [line.split(" | ")[0] for line in lines if line.startswith("| ")] == ["| run", "| twice"]
    # mean 75, half-width t(0.975, 1) x sd / sqrt(2) = 12.706 x 0.0707 / 1.414; a star has no consensus distance
    assert lines[-1] == "| twice | 0 1 | 75.00 ± 63.53 | 50.00 ± 0.00 | - |"
