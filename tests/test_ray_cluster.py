"""A simulation on an existing two-node Ray cluster (federation.ray_address / --ray-address).

Where network namespaces are available (root, iproute2; pranc_fed/netns.py) the cluster is two
hosts: the Ray head in one namespace (10.99.0.1, the bridge), a worker started with `ray start
--address` in another (10.99.0.2), reaching the head across a veth pair, and the simulation's
driver next to the head. Elsewhere both nodes are raylets on loopback, started by Ray's own test
harness (ray.cluster_utils), and no packet leaves loopback. Either way each node offers one CPU
and each client asks for one, so Flower's actor pool (one actor per CPU of the cluster) has one
actor on each node: the ledger names both nodes, and the model equals a private run's.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from pranc_fed.cli import main
from pranc_fed.netns import Network, netns_unavailable
from pranc_fed.pranc import read_pranc_file
from pranc_fed.runner import BIN_DIR, alive, call_in_netns, descendants, in_netns, terminate

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_lenet.yaml"
SMALL = ["federation.rounds=2", "federation.num_clients=2", "federation.num_cpus_per_client=1",
         "pranc.num_coeffs=200", "data.train_subset=1000", "data.test_subset=300", "train.batch_size=64",
         "pranc.alpha_lr=0.03", "federation.local_steps=8"]
WORKER_IP = "10.99.0.2"  # node-0's eth0 (pranc_fed/netns.py)
HEAD_PORT = 6379  # each namespace has ports of its own: no clash with another Ray on this machine
TIMEOUT = 300  # seconds for the cluster to form and the simulation to finish (the machine is shared)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), RAY_USAGE_STATS_ENABLED="0")

# The driver, run where the head is: wait for both nodes, write their ids, addresses and CPUs, then simulate.
DRIVER = """
import json, sys, time, ray
from pranc_fed.cli import main
address, nodes_file, *args = sys.argv[1:]
ray.init(address=address)
deadline = time.monotonic() + 60
while len(nodes := [n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
if len(nodes) < 2:
    sys.exit(f"{len(nodes)} Ray node(s) after 60 s, not 2")
open(nodes_file, "w").write(json.dumps({n["NodeID"]: [n["NodeManagerAddress"], n["Resources"].get("CPU")]
                                         for n in nodes}))
ray.shutdown()
sys.exit(main(["simulate", *args, "--ray-address", address]))
"""


def simulate_args(out: Path) -> list[str]:
    args = [str(CONFIG), "--out", str(out)]
    for item in SMALL:
        args += ["--set", item]
    return args


def results(out: Path) -> tuple[dict, object, set[str]]:
    """summary.json, the model's alpha and the workers ledger.csv names."""
    with (out / "ledger.csv").open() as f:
        workers = {row["worker"] for row in csv.DictReader(f)}
    return json.loads((out / "summary.json").read_text()), read_pranc_file(out / "model.pranc").alpha, workers


def drive(address: str, out: Path, netns: str | None, started: list[subprocess.Popen]) -> dict[str, list]:
    """Run DRIVER in netns (None: here) on the cluster at address; the cluster's nodes (id -> [address, CPUs])."""
    nodes_file = out.parent / f"{out.name}-nodes.json"
    driver = subprocess.Popen(in_netns(netns, [sys.executable, "-c", DRIVER, address, str(nodes_file),
                                               *simulate_args(out)]), env=ENV, start_new_session=True)
    started.append(driver)
    assert driver.wait(timeout=TIMEOUT) == 0, f"logs in {out.parent}"
    return json.loads(nodes_file.read_text())


def stop(started: list[subprocess.Popen]) -> list[int]:
    """Stop everything started and all their descendants (Ray's workers, Flower's processes); their ids.
    Not `ray stop`: it stops every Ray process of the machine, other tests' too."""
    pids = [p.pid for p in started if p.poll() is None]
    pids += [d for pid in pids for d in descendants(pid)]
    terminate(pids, reap=lambda: [p.poll() for p in started])
    return pids


def wait_for_port(netns: str, host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call_in_netns(netns, lambda: socket.create_connection((host, port), timeout=2).close())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_on_namespaced_cluster(out: Path) -> dict[str, list]:
    """Head and driver in the link namespace, the worker in node-0's; everything stopped and the
    namespaces deleted however it ends."""
    ray = str(BIN_DIR / "ray")
    temp = Path(tempfile.mkdtemp(prefix="pfray-"))  # short: Ray's socket paths live under it
    started: list[subprocess.Popen] = []
    common = ["--block", "--num-cpus=1"]
    try:
        with Network(1, prefix=f"pfray-{os.getpid()}") as network:
            link, node = network.superlink_netns, network.node_netns("node-0")
            head = network.superlink_host
            try:
                for netns, args, name in [
                        (link, ["--head", f"--port={HEAD_PORT}", f"--node-ip-address={head}",
                                "--include-dashboard=false"], "head"),
                        (node, [f"--address={head}:{HEAD_PORT}", f"--node-ip-address={WORKER_IP}"], "worker")]:
                    log = (out.parent / f"ray-{name}.log").open("w")
                    # Separate temp dirs: the nodes share this filesystem but not a session.
                    started.append(subprocess.Popen(in_netns(netns, [ray, "start", *args, *common,
                                                                     f"--temp-dir={temp / name}"]),
                                                    env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True))
                    if name == "head":
                        wait_for_port(link, head, HEAD_PORT)
                nodes = drive(f"{head}:{HEAD_PORT}", out, link, started)
                assert sorted(address for address, _ in nodes.values()) == [head, WORKER_IP], nodes
            finally:
                pids = stop(started)
        assert not [pid for pid in pids if alive(pid)], "processes left running"
        assert network.leftovers() == [], "namespaces or links left behind"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return nodes


def run_on_loopback_cluster(out: Path) -> dict[str, list]:
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    started: list[subprocess.Popen] = []
    try:
        cluster.add_node(num_cpus=1)
        return drive(cluster.address, out, None, started)
    finally:
        stop(started)
        cluster.shutdown()


def test_a_simulation_on_an_existing_two_node_ray_cluster_equals_a_private_one(tmp_path):
    reason = netns_unavailable()
    if reason:
        warnings.warn(f"two raylets on loopback, not across network namespaces: {reason}")
        nodes = run_on_loopback_cluster(tmp_path / "cluster")
    else:
        nodes = run_on_namespaced_cluster(tmp_path / "cluster")
    assert [cpus for _, cpus in nodes.values()] == [1, 1], nodes
    on_cluster, alpha, workers = results(tmp_path / "cluster")
    assert main(["simulate", *simulate_args(tmp_path / "private")]) == 0
    private, private_alpha, private_workers = results(tmp_path / "private")

    assert workers == {node_id[:14] for node_id in nodes}, "the clients did not run on both nodes"
    assert len(private_workers) == 1 and not private_workers & workers
    assert [r["received"] for r in on_cluster["replies"]] == [2, 2]
    assert on_cluster["final_test_accuracy"] == private["final_test_accuracy"]
    assert on_cluster["total_bytes"] == private["total_bytes"]
    assert alpha.equal(private_alpha), "the same seed gave another model on the cluster"
