"""What a PRANC message really costs on the wire: payload, Flower's framing and TLS/HTTP/TCP/IP,
per reply and per instruction, with the SuperNodes on hosts of their own (network namespaces).

    sudo .venv/bin/python simulations/netns_deploy.py [--ks 1000 5000 10000] [--nodes 2] [--idle 30]
        [--config configs/mnist_lenet.yaml] [--out runs/netns_overhead] [--set KEY=VALUE ...]

One TLS + node-auth deployment (pranc_fed/netns.py: a link namespace with the SuperLink, one
namespace and veth pair per SuperNode) serves every run. For each K it runs 1 round, then 2
rounds, and counts each run's bytes three ways:
  ledger     the RecordDict of each message (protobuf size), as the strategy counts it;
  SuperLink  its per-run Fleet API counter (`flwr ls`, network-traffic): the ledger plus Flower's
             message framing (see pranc_fed/deploy.py for what it counts and what it leaves out);
  links      the nodes' eth0 kernel counters (tx = up, rx = down), read just before the run is
             submitted and just after it finished: every frame, Ethernet header included.
The links also carry what the other two never count: heartbeats and polling (measured first,
over --idle seconds with no run, and subtracted at that rate per node over the part of each run
in which the node ran no ClientApp: a SuperNode does not poll while its ClientApp works; its
heartbeat every 30 s goes on, a few percent of the idle traffic, and stays counted), the HTTP
requests and TCP ACKs that belong to the other direction's message, and once per run the FAB
download and run/config fetches. The
difference of the 2-round and the 1-round run is one more round, so it divides into per-message
figures free of the once-per-run costs; what is left of the 1-round run is reported as the fixed
cost per run and node. The ClientApp talks to its SuperNode over its namespace's loopback, off
the links. Writes OUT/netns_overhead.json and OUT/table.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pranc_fed.deploy import Deployment  # noqa: E402
from pranc_fed.netns import Network, idle_traffic, measured_run, netns_unavailable  # noqa: E402
from pranc_fed.runner import terminate_as_interrupt  # noqa: E402

SMALL = ["pranc.layout=per_layer", "data.train_subset=1000", "data.test_subset=500", "federation.local_steps=5",
         "train.batch_size=32"]
# On the links each direction also carries the other message's HTTP requests or responses and TCP
# ACKs (a node pulls an instruction with requests that go up), so only the two rows' sum is clean.
DIRECTIONS = {"up": ("inbound_bytes", "reply, up"), "down": ("outbound_bytes", "instruction, down")}
COLUMNS = ("payload", "flower_framing", "tls_http_tcp_ip", "on_the_link", "idle_subtracted", "packets")


def layers(run: dict, direction: str, idle: dict, nodes: int) -> dict[str, float]:
    """One run's bytes in one direction: ledger, SuperLink counter, links (raw and less idle traffic)."""
    polling = nodes * run["seconds"] - sum(run["busy_seconds"].values())  # node-seconds spent polling
    rate = polling / (nodes * idle["seconds"])
    return {"ledger": run["ledger"][f"{direction}_bytes"],
            "superlink": run["superlink"][DIRECTIONS[direction][0]],
            "links_raw": run["interfaces"][f"{direction}_bytes"],
            "links": run["interfaces"][f"{direction}_bytes"] - rate * idle[f"{direction}_bytes"],
            "packets": run["interfaces"][f"{direction}_packets"] - rate * idle[f"{direction}_packets"],
            "messages": run["messages"][direction]}


def per_message(one_round: dict, two_rounds: dict, idle: dict, nodes: int) -> dict:
    """Per message from the extra round of the 2-round run; the 1-round run's rest is per-run cost."""
    result = {}
    for direction in DIRECTIONS:
        first, second = layers(one_round, direction, idle, nodes), layers(two_rounds, direction, idle, nodes)
        extra = {key: second[key] - first[key] for key in first}
        count = extra["messages"]
        payload, superlink, links = extra["ledger"] / count, extra["superlink"] / count, extra["links"] / count
        result[direction] = {
            "payload": round(payload), "flower_framing": round(superlink - payload),
            "tls_http_tcp_ip": round(links - superlink), "on_the_link": round(links),
            "idle_subtracted": round((extra["links_raw"] - extra["links"]) / count),
            "packets": round(extra["packets"] / count, 1),
            "fixed_per_run_and_node": round((first["links"] - links * first["messages"]) / nodes),
        }
    return result


def table(results: dict) -> str:
    idle, nodes = results["idle"], results["nodes"]
    lines = ["| K | per node | payload (ledger) | Flower framing | TLS + HTTP + TCP/IP | on the link | "
             "idle subtracted | packets |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for k, cost in results["per_message"].items():
        rows = [(label, cost[direction]) for direction, (_, label) in DIRECTIONS.items()]
        rows.append(("one round (both)", {c: sum(row[c] for _, row in rows) for c in COLUMNS}))
        for label, c in rows:
            lines.append(f"| {int(k):,} | {label} | " + " | ".join(f"{c[column]:,} B" for column in COLUMNS[:-1])
                         + f" | {c['packets']:g} |")
    lines.append("")
    lines.append("Once per run and node (FAB download, run and config fetches, connection), on the link: " + "; ".join(
        f"K={int(k):,}: {c['up']['fixed_per_run_and_node']:,} B up, {c['down']['fixed_per_run_and_node']:,} B down"
        for k, c in results["per_message"].items()))
    lines.append(f"Idle (heartbeats and polling, no run; subtracted above for the time a node ran no ClientApp): "
                 f"{idle['up_bytes'] / idle['seconds'] / nodes:,.0f} B/s up and "
                 f"{idle['down_bytes'] / idle['seconds'] / nodes:,.0f} B/s down per node, "
                 f"{idle['up_packets'] / idle['seconds'] / nodes:.1f} and "
                 f"{idle['down_packets'] / idle['seconds'] / nodes:.1f} packets/s.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/mnist_lenet.yaml")
    parser.add_argument("--ks", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle traffic to measure")
    parser.add_argument("--out", type=Path, default=Path("runs/netns_overhead"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config overrides after {' '.join(SMALL)}")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take")
    args = parser.parse_args()
    reason = netns_unavailable()
    if reason:
        print(f"[netns] cannot run: {reason}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    base = [*SMALL, f"federation.num_clients={args.nodes}", *args.overrides]
    results = {"command": shlex.join(["simulations/netns_deploy.py", *sys.argv[1:]]), "config": str(args.config),
               "overrides": base, "nodes": args.nodes, "tls": True, "auth": True, "runs": [], "per_message": {}}
    with terminate_as_interrupt(), Network(args.nodes) as network, \
            Deployment(out / "deployment", tls=True, auth=True, network=network) as deployment:
        deployment.start(args.nodes)
        print(f"[netns] SuperLink {deployment.address} in {network.superlink_netns}, {args.nodes} SuperNodes in "
              f"{', '.join(network.node_namespaces.values())}; idle for {args.idle:g} s", flush=True)
        time.sleep(5)  # registration and the first heartbeats are not idle traffic
        results["idle"] = idle_traffic(network, args.idle)
        for k in args.ks:
            pair = []
            for rounds in (1, 2):
                overrides = [*base, f"pranc.num_coeffs={k}", f"federation.rounds={rounds}"]
                run = measured_run(deployment, network, args.config, overrides, out / f"k{k}-r{rounds}", args.timeout)
                if run["status"] != "finished:completed":
                    raise RuntimeError(f"K={k}, {rounds} round(s): {run['status']}; logs in {deployment.log_dir}")
                print(f"[netns] K={k}, {rounds} round(s): {run['seconds']:.0f} s, links {run['interfaces']}",
                      flush=True)
                if run["restarted_nodes"]:  # a ClientApp outlived the run: the reconnection is in these counts
                    print(f"[netns] warning: {', '.join(run['restarted_nodes'])} restarted during this run", flush=True)
                results["runs"].append({"k": k, "rounds": rounds, "load_average": os.getloadavg(), **run})
                pair.append(run)
            results["per_message"][str(k)] = per_message(*pair, results["idle"], args.nodes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "netns_overhead.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
