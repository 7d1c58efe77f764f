"""Real deployments on loopback: a flower-superlink and flower-supernode processes, free ports,
private FLWR_HOME, everything stopped afterwards. Select with `pytest -m deploy`.

Kept small for a shared 2-core machine: 3 nodes, 1-3 rounds, 900 MNIST training images and a
K=200 per-layer basis (every message starts a fresh ClientApp process that regenerates it).
Starting a federation costs a dozen Python processes, so the three insecure tests share one
(module fixture; the test that kills a node runs last), and the TLS test goes through `deploy()`,
the function behind `pranc-fed deploy`.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pranc_fed.cli import main
from pranc_fed.config import load_config
from pranc_fed.deploy import Deployment, collect, deploy
from pranc_fed.pranc import read_pranc_file

from .conftest import FLOAT32_ALPHA
from .poisoned_client import FORGED_LINE
from pranc_fed.runner import alive, descendants, run_config_for

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_lenet.yaml"
SMALL = ["pranc.num_coeffs=200", "pranc.layout=per_layer", "data.train_subset=900", "data.test_subset=500",
         "pranc.alpha_lr=0.03", "federation.local_steps=10", "train.batch_size=32", "federation.num_clients=3",
         "federation.round_timeout=300", *FLOAT32_ALPHA]
RUN_TIMEOUT = 420  # seconds a whole run may take before a test gives up (the machine is shared)
# Flower's framing per message on top of the RecordDict the ledger counts (see pranc_fed/deploy.py):
# message metadata, object headers and 64-hex-digit object ids; 1.6-1.9 KB measured here.
MAX_OVERHEAD_PER_MESSAGE = 4096
# Node config of the shared federation: only the test-only ClientApp (tests/poisoned_client.py)
# reads these keys; pranc_fed's own ClientApp ignores them, so with it all three nodes are honest.
POISON = {0: 'poison="nan,fingerprint,metric,byteorder,oversize"', 1: 'poison="raise,raise,inject,none,hang"',
          2: 'dump-dir="{dumps}"'}


def rounds(out: Path) -> list[dict]:
    with (out / "rounds.csv").open() as f:
        return list(csv.DictReader(f))


def replies(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["replies"]


def processes_of(deployment: Deployment) -> list[int]:
    pids = [p.pid for p in deployment.processes]
    return pids + [d for pid in pids for d in descendants(pid)]


def submit(deployment: Deployment, overrides: list[str], out: Path, app: Path | None = None) -> int:
    return deployment.submit(run_config_for(CONFIG, overrides, out), **({"app": app} if app else {}))


def finish(deployment: Deployment, run_id: int, out: Path) -> dict:
    status = deployment.wait(run_id, timeout=RUN_TIMEOUT, done_file=out / "summary.json")
    assert status == "finished:completed", f"{status}; logs in {deployment.log_dir}"
    return collect(deployment, run_id, status, out, 3, 0.0, tls=False, auth=False)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """One insecure SuperLink with 3 SuperNodes for the module's insecure tests."""
    root = tmp_path_factory.mktemp("federation")
    dumps = root / "honest"
    dumps.mkdir()
    with Deployment(root / "deployment") as deployment:
        deployment.start(3, {i: c.format(dumps=dumps) for i, c in POISON.items()})
        yield deployment, root, dumps
        pids = processes_of(deployment)
    assert not [pid for pid in pids if alive(pid)], "processes left running"


@pytest.mark.deploy
def test_three_supernodes_complete_and_report_superlink_traffic(federation):
    deployment, root, _ = federation
    out = root / "plain"
    report = finish(deployment, submit(deployment, [*SMALL, "federation.rounds=3"], out), out)

    accuracy = [float(r["test_accuracy"]) for r in rounds(out)]
    assert len(accuracy) == 4 and accuracy[-1] > 0.2 and accuracy[-1] > accuracy[0], accuracy  # round 0 to 3
    assert [(r["sampled"], r["received"], r["dropped"]) for r in replies(out)] == [(3, 3, {})] * 3
    # Both byte counts reported; the SuperLink's exceeds the ledger's by Flower's framing only.
    summary = json.loads((out / "summary.json").read_text())
    link, ledger, per = report["superlink"], report["ledger"], report["per_message_overhead"]
    assert summary["deployment"]["superlink"] == link and summary["total_bytes"] == ledger["total_bytes"]
    assert report["messages"] == {"up": 9, "down": 9}
    assert link["outbound_bytes"] > ledger["down_bytes"] > 0 and link["inbound_bytes"] > ledger["up_bytes"] > 0
    assert 0 < per["down"] <= MAX_OVERHEAD_PER_MESSAGE and 0 < per["up"] <= MAX_OVERHEAD_PER_MESSAGE, report


def poisoned_app(folder: Path) -> Path:
    """The same ServerApp with the test-only ClientApp, from an app folder of its own."""
    app = folder / "app"
    app.mkdir()
    shutil.copy(Path(__file__).with_name("poisoned_client.py"), app)
    (app / "pyproject.toml").write_text(POISONED_APP)
    return app


@pytest.mark.deploy
def test_no_client_can_crash_poison_forge_or_stall_the_run_in_real_processes(federation, tmp_path):
    """Five rounds of the test-only ClientApp (POISON): node 0 sends NaN alpha, a wrong fingerprint, a
    list for a metric, big-endian alpha and a 4 MB extra array; node 1 raises twice, raises with a forged
    progress line, answers honestly, then hangs; node 2 is honest. Each costs only its own reply. The
    hung ClientApp is stopped when the run ends and its node restarted, free for the next run (the test
    after this one needs all three nodes)."""
    deployment, root, dumps = federation
    out = root / "attacks"
    overrides = [*SMALL, "federation.rounds=5", "federation.min_train_clients=1", "federation.norm_bound=drop",
                 "federation.round_timeout=45"]
    node = {i: deployment.node_id(f"node-{i}") for i in range(3)}
    run_id = submit(deployment, overrides, out, poisoned_app(tmp_path))
    deployment.stream_logs(run_id, keep=lambda line: False)
    finish(deployment, run_id, out)  # and restarts the node whose ClientApp hung
    time.sleep(1)  # the log stream's last lines

    result = replies(out)
    assert [(r["sampled"], r["received"]) for r in result] == [(3, 1), (3, 1), (3, 1), (3, 2), (3, 1)], result
    assert [sorted(r["dropped"]) for r in result] == [sorted([node[0], node[1]])] * 3 + [[node[0]]] + [
        sorted([node[0], node[1]])]
    reason = [r["dropped"] for r in result]
    assert "NaN" in reason[0][node[0]] and "fingerprint" in reason[1][node[0]], reason
    assert all("client error" in reason[i][node[1]] and "fails on purpose" in reason[i][node[1]] for i in range(3))
    metric, injected = reason[2][node[0]], reason[2][node[1]]
    assert "train-loss" in metric and "not a finite number" in metric, metric
    assert "\n" not in injected, injected
    assert "about 4," in reason[4][node[0]] and "no reply within" in reason[4][node[1]]
    log = (deployment.log_dir / "run.log").read_text()
    assert log.count("dropped train reply") == 9
    forged = [line for line in log.splitlines() if line.lstrip().startswith(FORGED_LINE[:24])]
    assert not forged, forged
    # Round 5 aggregated the honest node's reply alone (server_lr 1): the global alpha is its alpha.
    final = read_pranc_file(out / "model.pranc").alpha.float().numpy()
    assert np.all(np.isfinite(final)) and np.allclose(final, np.load(dumps / "round-5.npz")["alpha"], atol=1e-6)
    assert not deployment.clientapps(), "the hung ClientApp outlived its run"
    assert deployment.node_id("node-1") != node[1] and deployment.node_id("node-0") == node[0]


@pytest.mark.deploy
def test_a_supernode_killed_after_round_one_does_not_stop_the_agents_on_a_ring(federation):
    """Decentralised mode in real processes (the agents' states live in the SuperNodes' Flower state):
    three agents on a ring, the third killed after round 1; the other two go on without it. The star
    drops a lost node through the same reply handling (MethodStrategy._receive)."""
    deployment, root, _ = federation  # runs last: it kills one of the shared nodes
    out = root / "killed"
    overrides = [*SMALL, "federation.rounds=2", "federation.min_train_clients=2", "federation.round_timeout=90",
                 "federation.topology=ring"]
    run_id = submit(deployment, overrides, out)
    deadline = time.monotonic() + RUN_TIMEOUT
    while not ((out / "rounds.csv").is_file() and len(rounds(out)) >= 2):  # round 0 and round 1
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(0.5)
    dead = deployment.node_id("node-2")
    deployment.kill_node("node-2")
    report = finish(deployment, run_id, out)

    # Round 2 went to all three nodes (the SuperLink marks a node offline only after two missed 30 s
    # heartbeats); the dead node's reply is an error reply ("node unavailable") or missing (timeout).
    result = replies(out)
    assert [(r["sampled"], r["received"]) for r in result] == [(3, 3), (3, 2)], result
    assert list(result[1]["dropped"]) == [dead] or report["missing_replies"] == {"2/gossip": [dead]}, result
    per_round = rounds(out)
    assert len(per_round) == 3 and [r["agents"] for r in per_round[1:]] == ["3", "2"]
    assert float(per_round[2]["worst_accuracy"]) <= float(per_round[2]["test_accuracy"])
    with (out / "edges.csv").open() as f:
        senders = {e["src"] for e in csv.DictReader(f) if e["round"] == "2"}
    assert len(senders) == 2  # the two agents left still sent to their neighbours


@pytest.mark.deploy
def test_tls_and_node_auth_complete_a_securely_aggregated_round_and_refuse_an_unregistered_node(tmp_path):
    out = tmp_path / "run"
    # accuracy is the first test's business; secure aggregation runs here as a real deployment would run it
    overrides = [*SMALL, "federation.rounds=1", "secagg.enabled=true"]
    seen = {}

    def intruder(deployment: Deployment) -> None:
        with pytest.raises(OSError):  # plain HTTP is not served
            urllib.request.urlopen(f"http://{deployment.address}/health", timeout=5)
        node = deployment.start_node("intruder", "partition-id=0 num-partitions=3", register=False)
        seen["exit"] = node.wait(timeout=120)
        seen["online"] = len(deployment.online())
        seen["pids"] = processes_of(deployment)

    assert deploy(CONFIG, overrides, load_config(CONFIG, overrides), out, nodes=3, tls=True, auth=True,
                  timeout=RUN_TIMEOUT, on_ready=intruder)
    assert seen["exit"] != 0 and seen["online"] == 3, seen
    assert "No SuperNode found with the given public key" in (out / "logs" / "superlink.log").read_text()
    report = json.loads((out / "deployment.json").read_text())
    assert report["tls"] and report["auth"] and report["status"] == "finished:completed"
    assert [r["received"] for r in replies(out)] == [3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_aggregated"] == 1 and summary["secure_aggregation"]["rounds_lost"] == 0
    with (out / "ledger.csv").open() as f:
        assert sum(r["phase"] == "secagg-keys" for r in csv.DictReader(f)) == 6  # a key down and up per node
    assert not [pid for pid in seen["pids"] if alive(pid)], "processes left running"


def test_deploy_fails_before_starting_anything_on_a_missing_dataset(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["deploy", str(CONFIG), "--nodes", "2", "--out", str(out), "--set", f"data.dataset={tmp_path / 'nope'}"])
    assert code == 2 and not out.exists()
    assert "error" in capsys.readouterr().err


def test_deploy_fails_before_starting_anything_on_a_bad_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["deploy", str(CONFIG), "--nodes", "1", "--out", str(out)])  # min_train_clients=2 > 1 node
    assert code == 2 and not out.exists()
    assert "min_train_clients" in capsys.readouterr().err


POISONED_APP = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "pranc-fed-poisoned"
version = "0.1.0"
description = "pranc-fed's ServerApp with a test-only ClientApp that misbehaves on request"
dependencies = []

[tool.flwr.app]
publisher = "pranc-fed-tests"

[tool.flwr.app.components]
serverapp = "pranc_fed.server_app:app"
clientapp = "poisoned_client:app"

[tool.flwr.app.config]
config-file = "configs/mnist_lenet.yaml"
overrides = ""
"""
