"""The Flower app's server side: reply validation, aggregation, server optimisers, byte ledger,
and one real Flower simulation end to end."""

import csv
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pranc_fed.codecs import make_codec
from pranc_fed.config import load_config
from pranc_fed.methods.base import record_bytes, to_array
from pranc_fed.runner import simulate
from pranc_fed.strategy import MethodStrategy

from .conftest import FLOAT32_ALPHA, build

K = 64


def make_strategy(*overrides):
    cfg, method, model = build(None, [f"pranc.num_coeffs={K}", "federation.min_train_clients=1", *overrides])
    return MethodStrategy(cfg, method, method.state_of(model), method.fingerprint(model)), model


@pytest.fixture(autouse=True)
def task_identity():
    # Messages outside a Flower process need an identity to carry.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def instruction(node: int) -> Message:
    return Message(content=RecordDict({}), dst_node_id=node, message_type=MessageType.TRAIN)


def reply(node: int, strategy, alpha, examples=100, fingerprint=None, arrays=None) -> Message:
    if arrays is None:
        encoded = strategy.method.up.encode("alpha", np.asarray(alpha, np.float32), np.random.default_rng(0))
        arrays = ArrayRecord({k: to_array(v) for k, v in encoded.items()})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples, "train-loss": 1.0}),
                          "config": ConfigRecord({"fingerprint": fingerprint or strategy.fingerprint})})
    return Message(content=content, reply_to=instruction(node))


def test_weighted_average_of_alphas():
    strategy, _ = make_strategy()
    a, b = np.full(K, 1.0, np.float32), np.full(K, 4.0, np.float32)
    strategy.aggregate_train(1, [reply(1, strategy, a, 100), reply(2, strategy, b, 300)])
    np.testing.assert_allclose(strategy.state["alpha"], 0.25 * a + 0.75 * b, rtol=1e-6)


@pytest.mark.parametrize("bad", ["fingerprint", "nan", "inf", "length", "dtype", "keys", "examples", "error", "stype"])
def test_bad_reply_is_dropped_and_leaves_global_model_unchanged(bad):
    strategy, _ = make_strategy()
    good = np.full(K, 2.0, np.float32)
    alpha = good.copy()
    kwargs = {}
    if bad == "fingerprint":
        kwargs["fingerprint"] = strategy.fingerprint.replace(":s0:", ":s1:")
    elif bad in ("nan", "inf"):
        alpha[3] = np.nan if bad == "nan" else np.inf
    elif bad == "length":
        kwargs["arrays"] = ArrayRecord({"alpha": to_array(np.zeros(K + 1, np.float32))})
    elif bad == "dtype":
        kwargs["arrays"] = ArrayRecord({"alpha": to_array(np.zeros(K, np.float64))})
    elif bad == "keys":
        kwargs["arrays"] = ArrayRecord({"beta": Array(np.zeros(K, np.float32))})
    elif bad == "examples":
        kwargs["examples"] = 10 ** 12
    elif bad == "stype":
        kwargs["arrays"] = ArrayRecord({"alpha": Array(np.zeros(K, np.float32))})  # .npy, not raw
    bad_reply = (Message(Error(code=0, reason="client crashed"), reply_to=instruction(2)) if bad == "error"
                 else reply(2, strategy, alpha, **kwargs))
    strategy.aggregate_train(1, [reply(1, strategy, good), bad_reply])
    np.testing.assert_array_equal(strategy.state["alpha"], good)  # only the good reply counts
    assert list(strategy.rounds[-1].dropped) == ["2"] and strategy.rounds[-1].received == 1


def test_too_few_valid_replies_keep_the_global_model():
    strategy, _ = make_strategy("federation.min_train_clients=2")
    before = strategy.state["alpha"].copy()
    arrays, _ = strategy.aggregate_train(1, [reply(1, strategy, np.ones(K, np.float32))])
    assert arrays is None
    np.testing.assert_array_equal(strategy.state["alpha"], before)


@pytest.mark.parametrize("dtype,value_bytes", [("float32", 4), ("float16", 2)])
def test_up_bytes_are_alpha_values_plus_fixed_overhead(dtype, value_bytes):
    """Documented overhead: a reply costs K * value_bytes plus a fixed envelope (keys, dtype, shape,
    metrics, fingerprint) of the same size whatever K and dtype; measured from the serialised record."""
    sizes = {}
    for k in (64, 640):
        strategy, _ = make_strategy(f"pranc.num_coeffs={k}", f"pranc.uplink_codec={dtype}",
                                    f"pranc.downlink_codec={dtype}")
        msg = reply(1, strategy, np.zeros(k, np.float32))
        sizes[k] = record_bytes(msg.content)
        strategy.aggregate_train(1, [msg])
        assert strategy.rounds[-1].up_bytes == sizes[k]
    # Protobuf length and shape fields are varints: they grow by a byte or two with K.
    assert 0 <= sizes[640] - sizes[64] - (640 - 64) * value_bytes <= 4
    assert sizes[64] - 64 * value_bytes < 400


def test_simulation_end_to_end(tmp_path):
    overrides = ["federation.rounds=2", "federation.num_clients=3", "pranc.num_coeffs=200", *FLOAT32_ALPHA,
                 "data.train_subset=1500", "data.test_subset=500", "train.batch_size=64", "pranc.alpha_lr=0.03"]
    cfg = load_config("configs/mnist_lenet.yaml", overrides)
    assert simulate("configs/mnist_lenet.yaml", overrides, cfg, tmp_path)
    rows = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]  # round 0: the initial model, before any bytes
    assert (rows[0]["cum_bytes"], rows[0]["clients"], rows[0]["train_loss"]) == ("0", "0", "")
    rows = rows[1:]
    for r in rows:
        assert int(r["clients"]) == 3 and int(r["received"]) == 3
        up_per_client = int(r["up_bytes"]) / 3
        assert 200 * 4 < up_per_client < 200 * 4 + 400  # alpha plus the envelope, never the weights
    accuracies = [float(r["test_accuracy"]) for r in rows]
    assert accuracies[-1] > max(0.2, accuracies[0])  # learning: twice chance, and rising
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total_up_bytes"] == sum(int(r["up_bytes"]) for r in rows)
    assert summary["dense_fp32_bytes_per_transfer"] == 4 * 44426
    assert (tmp_path / "model.pranc").stat().st_size < 2000
    ledger = list(csv.DictReader((tmp_path / "ledger.csv").open()))
    assert len(ledger) == 2 * 3 * 2  # rounds x clients x directions
    partition_of = {row["node"]: row["partition"] for row in ledger}
    assert sorted(partition_of.values()) == ["0", "1", "2"] and all(row["partition"] != "" for row in ledger)
    assert {len(row["worker"]) for row in ledger} == {14}  # every node named the machine it ran on


def test_a_malformed_quantised_reply_is_dropped_by_the_strategy() -> None:
    strategy, _ = make_strategy("pranc.uplink_codec=int4", "pranc.codec_block=64")
    n = strategy.state["alpha"].size
    good = strategy.method._encode(strategy.method.up, {"alpha": np.linspace(-1, 1, n, dtype=np.float32)}, None)
    scale = np.frombuffer(good["alpha.scale"].data, "<f4").copy()
    scale[0] = -scale[0]
    bad = ArrayRecord({"alpha": good["alpha"], "alpha.scale": to_array(scale)})
    strategy.aggregate_train(1, [reply(1, strategy, None, arrays=good), reply(2, strategy, None, arrays=bad)])
    assert "scale" in strategy.rounds[-1].dropped["2"] and strategy.rounds[-1].received == 1
    np.testing.assert_allclose(strategy.state["alpha"], make_codec("int4", 64).decode(
        "alpha", {"alpha": np.frombuffer(good["alpha"].data, np.uint8),
                  "alpha.scale": np.frombuffer(good["alpha.scale"].data, "<f4")}, n), atol=1e-7)


@pytest.mark.parametrize("bad", ["list-metric", "nan-metric", "unknown-metric", "string-metric", "extra-config",
                                 "oversized-array", "oversized-string",
                                 "decoder-crash", "log-forgery", "foreign-partition", "unmarked-worker"])
def test_no_reply_can_crash_the_server_or_forge_its_log(bad, monkeypatch, caplog):
    """Whatever one reply holds, it is dropped with its reason; the other replies aggregate."""
    strategy, _ = make_strategy()
    good = np.full(K, 2.0, np.float32)
    msg = reply(2, strategy, good)
    metrics, config = msg.content["metrics"], msg.content["config"]
    if bad == "list-metric":
        metrics["train-loss"] = [1.0, 2.0]
    elif bad == "nan-metric":
        metrics["train-loss"] = float("nan")
    elif bad == "unknown-metric":
        metrics["x" * 10_000] = 1.0
    elif bad == "string-metric":
        msg.content["metrics"] = MetricRecord({"num-examples": 100})
        msg.content["config"]["note"] = "hello"
    elif bad == "extra-config":
        config["fingerprint2"] = "z" * 100_000
    elif bad == "decoder-crash":
        def boom(record, state):
            raise KeyError("a bug in a decoder")
        original = strategy.method.decode_up
        monkeypatch.setattr(strategy.method, "decode_up",
                            lambda record, state: boom(record, state) if record is msg.content["arrays"] else original(record, state))
    elif bad == "oversized-array":
        msg.content["arrays"]["padding"] = Array(np.zeros(1_000_000, np.uint8))
    elif bad == "oversized-string":
        config["fingerprint"] = ["x" * 1000] * 1000
    elif bad == "log-forgery":
        config["fingerprint"] = "x\n[pranc-fed] round 12/12  test acc 0.9999\n"
    elif bad == "foreign-partition":
        metrics["partition-id"] = 10**6
    elif bad == "unmarked-worker":
        metrics["worker-id"] = 5  # without bit 63 its size would depend on the machine
    strategy.aggregate_train(1, [reply(1, strategy, good), msg])
    np.testing.assert_array_equal(strategy.state["alpha"], good)
    reason = strategy.rounds[-1].dropped["2"]
    assert strategy.rounds[-1].received == 1 and len(reason) < 1000
    assert not bad.startswith("oversized") or "more than the" in reason  # refused by size, before decoding
    assert "\n" not in reason and all("\n[pranc-fed]" not in r.getMessage() for r in caplog.records)


def test_a_run_that_aggregates_no_round_fails_and_says_why(tmp_path):
    # Every reply claims more examples than the server accepts, so no round aggregates.
    overrides = ["federation.rounds=1", "federation.num_clients=2", "pranc.num_coeffs=50", "data.train_subset=400",
                 "data.test_subset=200", "federation.max_num_examples=1"]
    cfg = load_config("configs/mnist_lenet.yaml", overrides)
    assert not simulate("configs/mnist_lenet.yaml", overrides, cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds_aggregated"] == 0
    assert "only 0 of 1 rounds aggregated" in summary["failure"]
    assert all("num-examples" in reason for reason in summary["replies"][0]["dropped"].values())


def test_a_sampled_node_that_never_replies_is_listed_as_timed_out():
    strategy, _ = make_strategy()
    strategy.sent = [instruction(1), instruction(2)]
    for i, msg in enumerate(strategy.sent):
        msg.metadata.__dict__["_message_id"] = f"instruction-{i}"  # what Flower sets when it pushes them
    answer = reply(1, strategy, np.ones(K, np.float32))
    strategy.aggregate_train(1, [Message(content=answer.content, reply_to=strategy.sent[0])])
    assert strategy.rounds[-1].dropped == {"2": "no reply within federation.round_timeout (600 s)"}
    assert strategy.rounds[-1].received == 1


def test_a_killed_run_resumes_to_the_same_final_model(tmp_path):
    """Kill a simulation of two rounds after its first, resume it, and get the uninterrupted run's model."""
    import signal
    import subprocess
    import sys
    import time
    # Stateless clients: a kept Adam state and an uplink residual live on the clients, not in the checkpoint.
    small = ["federation.num_clients=2", "pranc.num_coeffs=200", "data.train_subset=1500", "data.test_subset=500",
             "train.batch_size=64", "pranc.alpha_lr=0.03", "federation.rounds=2", *FLOAT32_ALPHA,
             "federation.keep_client_optimizer=false"]
    cli = [sys.executable, "-m", "pranc_fed.cli", "simulate", "configs/mnist_lenet.yaml"]
    cli += [arg for o in small for arg in ("--set", o)]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert simulate("configs/mnist_lenet.yaml", small, load_config("configs/mnist_lenet.yaml", small), whole)

    run = subprocess.Popen([*cli, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ((killed / "rounds.csv").is_file() and len((killed / "rounds.csv").read_text().splitlines()) >= 3):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before its first round was recorded"
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)  # as a scheduler would (SIGINT is ignored by background jobs): the CLI
    # stops every Flower process it started
    assert run.wait(timeout=60) != 0
    assert not (killed / "summary.json").exists()
    done = len((killed / "rounds.csv").read_text().splitlines()) - 2  # the header and round 0
    assert done == 1

    resumed = subprocess.run([*cli, "--resume", str(killed)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed after round {done}" in resumed.stdout
    assert (killed / "model.pranc").read_bytes() == (whole / "model.pranc").read_bytes()
    uplink = ("up_bytes", "cum_up_bytes", "cum_bytes")
    rounds = lambda folder: [{k: v for k, v in r.items() if k not in ("wall_seconds", *uplink)}  # noqa: E731
                             for r in csv.DictReader((folder / "rounds.csv").open())]
    assert rounds(killed) == rounds(whole)
    # Only the uplink differs: each client names its partition and worker in its first reply of a run, so the
    # resumed run's first round carries those few bytes again.
    up = lambda folder: [int(r["up_bytes"]) for r in csv.DictReader((folder / "rounds.csv").open())]  # noqa: E731
    extra = [k - w for k, w in zip(up(killed), up(whole))]
    assert extra[done + 1] > 0 and extra[:done + 1] + extra[done + 2:] == [0, 0], extra
    assert extra[done + 1] < 2 * 64, extra
    ledger = lambda folder: list(csv.DictReader((folder / "ledger.csv").open()))  # noqa: E731
    assert len(ledger(killed)) == len(ledger(whole)) == 2 * 2 * 2


def test_under_flwr_run_a_relative_out_dir_resolves_against_the_serverapps_working_folder(tmp_path, monkeypatch):
    """Not Flower's copy of the app (its folder changes with the code); `pranc-fed simulate` passes
    an absolute out_dir, which stays as it is."""
    from pranc_fed.server_app import output_dir
    monkeypatch.chdir(tmp_path)
    assert output_dir(load_config(None, ["name=demo"])) == tmp_path.resolve() / "runs" / "demo"
    assert output_dir(load_config(None, [f"out_dir={tmp_path}/abs/{{name}}"])) == tmp_path / "abs" / "experiment"
