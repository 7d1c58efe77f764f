"""A TLS + node-auth deployment whose SuperLink and SuperNodes sit in network namespaces of their
own (pranc_fed/netns.py), the bytes counted three ways for the same run. Select with `pytest -m
deploy`; skipped, saying why, where network namespaces are not available (not root, no iproute2).

Kept small for a shared 2-core machine: 2 nodes, 1 round, K=200 per-layer, 1000 training images.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pranc_fed.deploy import Deployment
from pranc_fed.netns import Network, measured_run, netns_unavailable
from pranc_fed.runner import alive, descendants

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_lenet.yaml"
SMALL = ["pranc.num_coeffs=200", "pranc.layout=per_layer", "data.train_subset=1000", "data.test_subset=500",
         "federation.local_steps=5", "train.batch_size=32", "federation.num_clients=2", "federation.rounds=1"]


@pytest.mark.deploy
def test_supernodes_in_namespaces_of_their_own_complete_and_count_bytes_on_their_links(tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "run"
    with Network(2) as network:
        with Deployment(tmp_path / "deployment", tls=True, auth=True, network=network) as deployment:
            deployment.start(2)
            run = measured_run(deployment, network, CONFIG, SMALL, out, timeout=300)
            pids = [p.pid for p in deployment.processes]
            pids += [d for pid in pids for d in descendants(pid)]

    assert run["status"] == "finished:completed", f"{run['status']}; logs in {deployment.log_dir}"
    assert run["messages"] == {"up": 2, "down": 2}
    # Each layer wraps the one below: the wire carries Flower's messages, which carry the RecordDicts.
    links, superlink, ledger = run["interfaces"], run["superlink"], run["ledger"]
    assert links["up_bytes"] >= superlink["inbound_bytes"] >= ledger["up_bytes"] > 0, run
    assert links["down_bytes"] >= superlink["outbound_bytes"] >= ledger["down_bytes"] > 0, run
    assert not [pid for pid in pids if alive(pid)], "processes left running"
    assert network.leftovers() == [], "namespaces or links left behind"
