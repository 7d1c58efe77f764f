"""A simulation on an existing two-node Ray cluster (federation.ray_address / --ray-address).

Both nodes are raylets on loopback, started by Ray's own test harness (ray.cluster_utils), not a
worker in a network namespace: that needs root and a Ray head reachable across a veth pair, which
this test does not set up. Each node offers one CPU and each client asks for one, so Flower's
actor pool (one actor per CPU of the cluster) has one actor on each node: clients run on both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pranc_fed.cli import main
from pranc_fed.pranc import read_pranc_file

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_lenet.yaml"
SMALL = ["federation.rounds=2", "federation.num_clients=2", "federation.num_cpus_per_client=1",
         "pranc.num_coeffs=200", "data.train_subset=1000", "data.test_subset=300", "train.batch_size=64",
         "pranc.alpha_lr=0.03", "federation.local_steps=8"]


def run(out: Path, *extra: str) -> tuple[dict, object]:
    args = ["simulate", str(CONFIG), "--out", str(out), *extra]
    for item in SMALL:
        args += ["--set", item]
    assert main(args) == 0, f"logs in {out / 'logs'}"
    return json.loads((out / "summary.json").read_text()), read_pranc_file(out / "model.pranc").alpha


def test_a_simulation_on_an_existing_two_node_ray_cluster_equals_a_private_one(tmp_path):
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    import ray
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        ray.shutdown()
        assert len(nodes) == 2 and all(n["Resources"].get("CPU") == 1 for n in nodes), nodes

        on_cluster, alpha = run(tmp_path / "cluster", "--ray-address", cluster.address)
        # Every driver that connects is a job of the cluster's GCS: this test's two and the simulation's.
        ray.init(address=cluster.address)
        jobs = ray._private.state.jobs()  # no public call lists jobs without Ray's dashboard
        ray.shutdown()
        assert len(jobs) == 3, f"the simulation did not run on the cluster: {jobs}"
    finally:
        cluster.shutdown()
    private, private_alpha = run(tmp_path / "private")

    assert [r["received"] for r in on_cluster["replies"]] == [2, 2]
    assert on_cluster["final_test_accuracy"] == private["final_test_accuracy"]
    assert on_cluster["total_bytes"] == private["total_bytes"]
    assert alpha.equal(private_alpha), "the same seed gave another model on the cluster"
