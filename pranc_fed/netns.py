"""SuperLink and SuperNodes as separate hosts on one machine: Linux network namespaces joined by
veth pairs, and the kernel's byte counters of each node's link. Needs root and `ip` (iproute2).

    PREFIX-link    lo; bridge br0 = 10.99.0.1/24, the SuperLink's address; veth nI per node, bridged
    PREFIX-node-I  lo (the SuperNode's Runtime API, its ClientApps); eth0 = 10.99.0.(I+2)/24, peer of nI

A bridge, not one routed pair per node: the SuperLink has one address, the one its TLS
certificate names, and every node reaches it as on a LAN, while each node's packets cross its own
veth pair and nothing else, so that pair's counters hold exactly one node's traffic. The `flwr`
CLI runs in the link namespace (Deployment(network=...) sets FlowerRun.netns), so its traffic stays
off the nodes' links, and the root namespace gets no address or route: parallel runs can all use
the same subnet. Deleting the namespaces deletes every link made here (the root namespace holds none).

Counting like a wire: veth would hand TCP's up to 64 KB segments (GSO) across whole, counted once
with one set of headers; gso_max_segs 1 makes TCP send MTU-sized segments (1500 B), as on a real
NIC. IPv6 is off in the namespaces, so router solicitations and MLD reports do not add to the
counters. A counter's bytes include each frame's 14-byte Ethernet header, not the preamble, FCS
or inter-frame gap of a physical link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from .deploy import Deployment, traffic_report
from .runner import in_netns, run_config_for

SUBNET = "10.99.0"
STATISTICS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")


def ip(*args: str) -> str:
    return run_in(None, "ip", *args)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here (None when they can): not root, no `ip`, or the
    kernel refuses a namespace or a veth pair (e.g. inside an unprivileged container)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run as root to measure across namespaces"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"pfns-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
    except RuntimeError as e:
        return f"the kernel refused a network namespace or veth pair: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Network:
    """The link namespace and one namespace per node (named node-0 .. node-{nodes-1}, as Deployment
    names its SuperNodes); `with Network(n):` creates them and deletes them however the block ends."""

    superlink_host = f"{SUBNET}.1"

    def __init__(self, nodes: int, prefix: str | None = None):
        if not 0 < nodes < 250:
            raise ValueError(f"{nodes} nodes: the subnet {SUBNET}.0/24 holds 1 to 249")
        self.prefix = prefix or f"pfns-{os.getpid()}"
        self.superlink_netns = f"{self.prefix}-link"
        self.node_namespaces = {f"node-{i}": f"{self.prefix}-node-{i}" for i in range(nodes)}

    def __enter__(self) -> "Network":
        try:
            self.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def node_netns(self, name: str) -> str:
        return self.node_namespaces[name]

    def create(self) -> None:
        link = self.superlink_netns
        for netns in (link, *self.node_namespaces.values()):
            ip("netns", "add", netns)
            run_in(netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", link, "link", "add", "br0", "gso_max_segs", "1", "type", "bridge")
        ip("-n", link, "addr", "add", f"{self.superlink_host}/24", "dev", "br0")
        ip("-n", link, "link", "set", "br0", "up")
        for i, netns in enumerate(self.node_namespaces.values()):
            ip("-n", link, "link", "add", f"n{i}", "gso_max_segs", "1", "type", "veth",
               "peer", "name", "eth0", "netns", netns, "gso_max_segs", "1")
            ip("-n", link, "link", "set", f"n{i}", "master", "br0", "up")
            ip("-n", netns, "addr", "add", f"{SUBNET}.{i + 2}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")

    def delete(self) -> None:
        """Delete every namespace of this network that exists; their links go with them. A namespace
        lives on while a process is still in it: stop the deployment first."""
        for netns in (self.superlink_netns, *self.node_namespaces.values()):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)

    def leftovers(self) -> list[str]:
        """Namespaces and root-namespace links of this network that still exist (none after delete())."""
        namespaces = [line.split()[0] for line in ip("netns", "list").splitlines() if line.startswith(self.prefix)]
        links = [line for line in ip("-o", "link", "show").splitlines() if self.prefix in line]
        return namespaces + links

    def counters(self) -> dict[str, dict[str, int]]:
        """Each node's eth0 statistics from /sys/class/net (the kernel's counters, read inside its
        namespace): tx is what the node sent towards the SuperLink, rx what it received."""
        files = [f"/sys/class/net/eth0/statistics/{name}" for name in STATISTICS]
        return {node: dict(zip(STATISTICS, map(int, run_in(netns, "cat", *files).split())))
                for node, netns in self.node_namespaces.items()}


def run_in(netns: str | None, *args: str) -> str:
    """A command's output, run in network namespace netns (None: this one); a RuntimeError if it fails."""
    result = subprocess.run(in_netns(netns, list(args)), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        where = f" in {netns}" if netns else ""
        raise RuntimeError(f"{' '.join(args)}{where}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result.stdout


def interface_traffic(before: dict, after: dict) -> dict[str, int]:
    """What all nodes' links carried between two counters() readings, up (node -> SuperLink) and down."""
    def total(stat: str) -> int:
        return sum(after[node][stat] - before[node][stat] for node in before)
    return {"up_bytes": total("tx_bytes"), "down_bytes": total("rx_bytes"),
            "up_packets": total("tx_packets"), "down_packets": total("rx_packets")}


def idle_traffic(network: Network, seconds: float) -> dict[str, float]:
    """The links' traffic over `seconds` with the nodes connected and no run: heartbeats and polling."""
    before, started = network.counters(), time.monotonic()
    time.sleep(seconds)
    after = network.counters()
    return {"seconds": round(time.monotonic() - started, 3), **interface_traffic(before, after)}


def measured_run(deployment: Deployment, network: Network, config: Path, overrides: list[str], out: Path,
                 timeout: float) -> dict:
    """Submit one run and wait for it, with the nodes' link counters read just before submitting and
    just after it finished: traffic_report (ledger and SuperLink counter) plus "interfaces", "seconds",
    "busy_seconds" (per node, the time it ran a ClientApp: it does not poll the SuperLink meanwhile) and
    "restarted_nodes" (nodes Deployment.wait restarted: their reconnection is in the link counts too)."""
    busy: dict[str, float] = dict.fromkeys(deployment.nodes, 0.0)
    stop = threading.Event()
    clock = threading.Thread(target=_clock_clientapps, args=(deployment, busy, stop), daemon=True)
    before, started, pids = network.counters(), time.monotonic(), {n: p.pid for n, p in deployment.nodes.items()}
    clock.start()
    try:
        run_id = deployment.submit(run_config_for(config, overrides, out))
        status = deployment.wait(run_id, timeout=timeout, done_file=out / "summary.json")
    finally:
        stop.set()
        clock.join()
    after, seconds = network.counters(), time.monotonic() - started
    return {"run_id": run_id, "status": status, "seconds": round(seconds, 3),
            "busy_seconds": {node: round(s, 2) for node, s in busy.items()},
            "restarted_nodes": [n for n, p in deployment.nodes.items() if pids.get(n) != p.pid],
            "interfaces": interface_traffic(before, after),
            **traffic_report(out, deployment.run_info(run_id), len(network.node_namespaces))}


def _clock_clientapps(deployment: Deployment, busy: dict[str, float], stop: threading.Event,
                      period: float = 0.25) -> None:
    """Add to busy[node] the time the node has a ClientApp process, sampled every `period` seconds."""
    last = time.monotonic()
    while not stop.wait(period):
        now = time.monotonic()
        for node in deployment.clientapps():
            busy[node] = busy.get(node, 0.0) + now - last
        last = now
