"""Real deployment on one machine: a `flower-superlink` and N `flower-supernode` processes on
loopback, optionally with TLS and SuperNode authentication, the run submitted with `flwr run`,
polled until it finishes, its results collected, and every process stopped whatever happens.
With a `Network` (pranc_fed/netns.py) the SuperLink and each SuperNode run in network namespaces
of their own, as separate hosts joined by veth pairs.

    pranc-fed deploy configs/mnist_lenet.yaml --nodes 3 [--tls] [--auth] [--out DIR]

What travels (Flower 1.42): the SuperLink serves the Fleet API (SuperNodes), the Control API
(`flwr`) and the ServerApp's Runtime API on one HTTP port. Each SuperNode serves its own
Runtime API to the ClientApp processes it spawns (one per message) on `--port`, so every node
gets a free port of its own, and a FLWR_HOME of its own (as on separate machines).

Bytes. Next to the ledger (the protobuf size of each message's RecordDict, counted by the
strategy, see strategy.py), the SuperLink keeps a per-run traffic counter of its Fleet API,
shown by `flwr ls --run-id R --format json` as "network-traffic" {inbound-bytes,
outbound-bytes}. It is incremented in flwr/superlink/servicer/fleet/fleet_handlers.py by:
PullMessages (request + response protobuf size, only when a message is handed out),
PushMessages (request + response), PullObject (object content) and PushObject (object
content, only when the object was not in the store yet). So it counts Flower's own framing
on top of the RecordDict: the Message object and its metadata, one header and a 64-hex-digit
object id per record and per Array, the object trees. It does not count HTTP/TLS framing,
heartbeats, node registration or the FAB download, and objects that a node pushes which the
store already holds (identical content from another node) are not counted again.
Outbound (SuperLink -> nodes) is compared with the ledger's "down" bytes, inbound with "up";
`overhead` = counter / ledger - 1 per direction, and `per_message_overhead` = (counter - ledger)
/ messages. Measured with Flower 1.42 (LeNet, PRANC alpha fp32): a constant ~1.6 KB per reply and
~1.8 KB per instruction, whatever K is: +8.5% at K=5000 (20 KB alpha), +177% at K=200.
See deployment.json (and the "deployment" block of summary.json) after a run.
"""

from __future__ import annotations

import csv
import datetime
import ipaddress
import json
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .runner import (BIN_DIR, FlowerRun, command_line, descendants, free_port, kill_tree, run_config_for,
                     show_progress, terminate, terminate_as_interrupt)

CERT_NAMES = ("ca.crt", "server.pem", "server.key")


@dataclass(frozen=True)
class Certificates:
    ca: Path      # root certificate: what nodes and `flwr` trust
    cert: Path    # SuperLink certificate (SAN: its address and localhost), signed by the CA
    key: Path     # SuperLink private key


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                      days: int = 30) -> Certificates:
    """A fresh CA and a SuperLink certificate for `hosts`, written as PEM files into `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pranc-fed"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(name("pranc-fed CA")).issuer_name(name("pranc-fed CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def san(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = Certificates(*(folder / n for n in CERT_NAMES))
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    paths.key.chmod(0o600)
    return paths


def certificates_in(folder: Path) -> Certificates:
    """Take ca.crt, server.pem and server.key from `folder` (e.g. made by simulations/deploy_local.sh)."""
    paths = Certificates(*(folder / n for n in CERT_NAMES))
    missing = [str(p) for p in (paths.ca, paths.cert, paths.key) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"TLS files missing: {', '.join(missing)}; omit --certs to generate them")
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format (what `ssh-keygen -t ecdsa -b 384` writes and
    Flower reads): `name` (private, for --auth-supernode-private-key) and `name.pub` (to register)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b" pranc-fed\n")
    return private, public


class Deployment(FlowerRun):
    """A SuperLink and SuperNodes on loopback, or with `network` (a pranc_fed.netns.Network) the
    SuperLink (and `flwr`) in network.superlink_netns on network.superlink_host and SuperNode `name`
    in network.node_netns(name); `stop()` (or leaving the `with`) ends them all. `node_env` adds to the
    SuperNodes' environment only, which their ClientApps inherit (e.g. FLWR_LOG_LEVEL=DEBUG)."""

    def __init__(self, out: Path, tls: bool = False, auth: bool = False, certs: Path | None = None,
                 network=None, node_env: dict[str, str] | None = None):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS: pass tls=True (--tls) as well")
        out = self.out = out.resolve()  # Flower's processes run in the app folder: absolute paths only
        host = network.superlink_host if network else "127.0.0.1"
        self.certs = None
        if tls:  # generated certificates name the address the nodes dial
            self.certs = certificates_in(certs.resolve()) if certs else make_certificates(out / "certs",
                                                                                          (host, "localhost"))
        super().__init__(out / "logs", tls_root_cert=self.certs.ca.resolve() if self.certs else None, host=host,
                         netns=network.superlink_netns if network else None)
        self.network = network
        self.auth = auth
        self.node_env = node_env or {}
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_configs: dict[str, str] = {}  # what a restarted node is started with again
        self.node_keys: dict[str, Path] = {}

    def start(self, nodes: int, node_config: dict[int, str] | None = None) -> None:
        """SuperLink, then `nodes` SuperNodes with partitions 0..nodes-1 (plus node_config[i], if any);
        returns once all of them are connected."""
        extra = []
        if self.certs:
            extra += ["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile", str(self.certs.cert),
                      "--ssl-keyfile", str(self.certs.key)]
        if self.auth:
            extra.append("--enable-supernode-auth")
        self.start_superlink(simulation=False, extra=extra)
        names = [f"node-{i}" for i in range(nodes)]
        keys: dict[str, Path] = {}
        if self.auth:  # one key pair per node, registered in parallel (each `flwr` call takes seconds)
            pairs = {name: make_node_key(self.out / "keys", name) for name in names}
            with ThreadPoolExecutor(max_workers=nodes) as pool:
                list(pool.map(lambda name: self.register(pairs[name][1], name), names))
            keys = {name: pair[0] for name, pair in pairs.items()}
        for i, name in enumerate(names):
            config = f"partition-id={i} num-partitions={nodes} " + (node_config or {}).get(i, "")
            self.start_node(name, config.strip(), key=keys.get(name))
        self.wait_nodes(nodes)

    def start_node(self, name: str, node_config: str, register: bool = True, key: Path | None = None
                   ) -> subprocess.Popen:
        """One flower-supernode. With auth it uses the private `key` (already registered) or else gets a
        fresh key pair, registered first unless `register` is False (such a node must be refused)."""
        args = [str(BIN_DIR / "flower-supernode"), "--superlink", self.address, "--port", str(free_port()),
                "--node-config", node_config]
        args += ["--root-certificates", str(self.tls_root_cert)] if self.tls_root_cert else ["--insecure"]
        if self.auth:
            if key is None:
                key, public = make_node_key(self.out / "keys", name)
                if register:
                    self.register(public, name)
            args += ["--auth-supernode-private-key", str(key)]
        home = self.home / name
        home.mkdir(exist_ok=True)
        self.node_configs[name] = node_config
        if key is not None:
            self.node_keys[name] = key
        self.nodes[name] = self.spawn(name, args, env={**self.node_env, "FLWR_HOME": str(home)},
                                      netns=self.network.node_netns(name) if self.network else None)
        return self.nodes[name]

    def register(self, public_key: Path, name: str) -> int:
        """`flwr supernode register KEY.pub`: the SuperLink then admits the node holding the private key."""
        result = self.flwr("supernode", "register", str(public_key), "pranc", "--name", name, "--format", "json")
        try:
            return int(json.loads(result.stdout)["node-id"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise RuntimeError(f"flwr supernode register {public_key} failed (exit {result.returncode}): "
                               f"{result.stdout.strip()} {result.stderr.strip()}") from None

    def supernodes(self) -> list[dict]:
        """`flwr supernode ls --format json`: the SuperLink's view of the nodes."""
        result = self.flwr("supernode", "ls", "pranc", "--format", "json", timeout=60)
        try:
            return json.loads(result.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return []

    def online(self) -> list[dict]:
        return [n for n in self.supernodes() if str(n.get("status", "")).lower() == "online"]

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        """Wait until `count` nodes are online, so that round 1 samples all of them. Each `flwr` call
        costs a second or two of CPU, so the SuperLink's log ("Activated node_id=...") is watched
        first and `flwr supernode ls` confirms (or is asked every 10 s if the log says nothing)."""
        deadline, asked = time.monotonic() + timeout, time.monotonic()
        while True:
            activated = (self.log_dir / "superlink.log").read_text(errors="replace").count("Activated node_id=")
            if activated >= count or time.monotonic() - asked > 10:
                if len(self.online()) >= count:
                    return
                asked = time.monotonic()
            dead = [n for n, p in self.nodes.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"SuperNode {dead[0]} exited with code {self.nodes[dead[0]].returncode}; "
                                   f"see {self.log_dir / (dead[0] + '.log')}")
            if self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited; see {self.log_dir / 'superlink.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.online())} of {count} SuperNodes connected after {timeout:.0f}s; "
                                   f"see the node logs in {self.log_dir}")
            time.sleep(0.3)

    def wait(self, run_id: int, **kwargs) -> str:
        """FlowerRun.wait, then free the nodes the finished run left busy (see release_stuck_nodes)."""
        status = super().wait(run_id, **kwargs)
        if status.startswith("finished"):
            self.release_stuck_nodes()
        return status

    def release_stuck_nodes(self, timeout: float = 180, grace: float = 10) -> list[str]:
        """Stop the ClientApp processes a finished run left running (a client that hung past the round
        timeout) and restart their SuperNodes, then wait until the SuperLink lists exactly the live
        nodes. A SuperNode handles one message at a time and waits for its reply: killing the ClientApp
        alone left the node silent in the next run (Flower 1.42). A ClientApp that has replied can still
        be exiting when the run is reported finished (seconds, on a loaded machine), so they all get
        `grace` seconds first. Returns the restarted nodes' names."""
        deadline = time.monotonic() + grace
        while (stuck := self.clientapps()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for name, pids in stuck.items():
            terminate(pids, grace=5)
            old_id = self.node_id(name)
            self.kill_node(name)
            # Else the SuperLink lists the dead node as online until it misses two heartbeats (a minute).
            self.flwr("supernode", "unregister", old_id, "pranc", "--format", "json", timeout=60)
            self.start_node(name, self.node_configs[name], key=self.node_keys.get(name))
        if stuck:
            print(f"[pranc-fed] stopped the ClientApp the finished run left on {', '.join(stuck)}; "
                  f"restarted {'that node' if len(stuck) == 1 else 'those nodes'}", flush=True)
            self._wait_for_exactly_the_live_nodes(timeout)
        return list(stuck)

    def clientapps(self) -> dict[str, list[int]]:
        """The ClientApp processes each SuperNode runs now (only nodes that run some)."""
        return {name: pids for name, node in self.nodes.items()
                if (pids := [pid for pid in descendants(node.pid)
                             if any(Path(arg).name == "flwr-clientapp" for arg in command_line(pid)[:2])])}

    def _wait_for_exactly_the_live_nodes(self, timeout: float) -> None:
        """Until the SuperLink's online nodes are our running nodes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                live = {self.node_id(name) for name, node in self.nodes.items() if node.poll() is None}
            except RuntimeError:  # a restarted node has not logged its id yet
                live = None
            if live is not None and {str(n.get("node-id")) for n in self.online()} == live:
                return
            time.sleep(2)
        raise RuntimeError(f"the SuperLink did not list exactly the {len(self.nodes)} live SuperNodes after "
                           f"{timeout:.0f}s; see the logs in {self.log_dir}")

    def node_id(self, name: str) -> str:
        """The node id the SuperLink gave a SuperNode (from its log), as the ledger and summary show it."""
        match = re.search(r"SuperNode ID: (\d+)", (self.log_dir / f"{name}.log").read_text(errors="replace"))
        if not match:
            raise RuntimeError(f"no node id in {self.log_dir / (name + '.log')} yet")
        return match.group(1)

    def kill_node(self, name: str) -> None:
        """Kill a SuperNode and the ClientApp processes it runs, as a crash would (SIGKILL)."""
        process = self.nodes[name]
        kill_tree(process.pid)
        process.wait(timeout=10)

    def run_info(self, run_id: int) -> dict:
        """The run as `flwr ls --run-id R --format json` shows it (status, network-traffic, ...)."""
        result = self.flwr("ls", "pranc", "--run-id", str(run_id), "--format", "json", timeout=60)
        try:
            runs = json.loads(result.stdout).get("runs", [])
        except json.JSONDecodeError:
            runs = []
        return runs[0] if runs else {}


def traffic_report(out: Path, info: dict, nodes: int) -> dict:
    """The SuperLink's counter next to the ledger's byte totals, per direction, with the overhead."""
    ledger = _read_ledger(out / "ledger.csv")
    rounds = sorted({r["round"] for r in ledger})
    up = sum(r["bytes"] for r in ledger if r["direction"] == "up")
    down = sum(r["bytes"] for r in ledger if r["direction"] == "down")
    traffic = info.get("network-traffic", {})
    inbound, outbound = int(traffic.get("inbound-bytes", 0)), int(traffic.get("outbound-bytes", 0))
    per = max(len(rounds) * nodes, 1)
    messages = {d: sum(1 for r in ledger if r["direction"] == d) for d in ("up", "down")}

    def overhead(counter: int, ledger_bytes: int) -> float | None:
        return round(counter / ledger_bytes - 1, 4) if ledger_bytes else None

    return {
        "superlink": {"inbound_bytes": inbound, "outbound_bytes": outbound, "total_bytes": inbound + outbound},
        "ledger": {"up_bytes": up, "down_bytes": down, "total_bytes": up + down},
        "overhead": {"up": overhead(inbound, up), "down": overhead(outbound, down),
                     "total": overhead(inbound + outbound, up + down)},
        "messages": messages,
        "per_message_overhead": {"up": round((inbound - up) / max(messages["up"], 1)),
                                 "down": round((outbound - down) / max(messages["down"], 1))},
        "per_round_per_node": {"rounds": len(rounds), "nodes": nodes,
                               "superlink_bytes": round((inbound + outbound) / per),
                               "ledger_bytes": round((up + down) / per)},
        "missing_replies": _missing_replies(ledger),
    }


def _read_ledger(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{**r, "round": int(r["round"]), "bytes": int(r["bytes"])} for r in csv.DictReader(f)]


def _missing_replies(ledger: list[dict]) -> dict[str, list[str]]:
    """Per round, the nodes that were sent a message but never replied (lost or timed out)."""
    missing = {}
    for rnd in sorted({r["round"] for r in ledger}):
        for phase in sorted({r["phase"] for r in ledger}):  # train, evaluate, gossip, secagg-keys
            rows = [r for r in ledger if r["round"] == rnd and r["phase"] == phase]
            lost = sorted({r["node"] for r in rows if r["direction"] == "down"}
                          - {r["node"] for r in rows if r["direction"] == "up"})
            if lost:
                missing[f"{rnd}/{phase}"] = lost
    return missing


def collect(deployment: Deployment, run_id: int, status: str, out: Path, nodes: int, wall: float,
            tls: bool, auth: bool) -> dict:
    """Write deployment.json and add the SuperLink's traffic counter to summary.json."""
    report = {"run_id": run_id, "status": status, "nodes": nodes, "tls": tls, "auth": auth,
              "wall_seconds": round(wall, 3), **traffic_report(out, deployment.run_info(run_id), nodes)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "deployment.json").write_text(json.dumps(report, indent=2))
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary["deployment"] = {k: report[k] for k in ("run_id", "status", "nodes", "tls", "auth", "wall_seconds",
                                                        "superlink", "overhead", "missing_replies")}
        summary_path.write_text(json.dumps(summary, indent=2))
    return report


def print_report(report: dict) -> None:
    s, ledger, o = report["superlink"], report["ledger"], report["overhead"]
    p = report["per_round_per_node"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:+.1f}%"

    print(f"[pranc-fed] bytes   SuperLink counter: in {s['inbound_bytes']:,}  out {s['outbound_bytes']:,}  "
          f"total {s['total_bytes']:,}", flush=True)
    print(f"[pranc-fed] bytes   ledger:            up {ledger['up_bytes']:,}  down {ledger['down_bytes']:,}  "
          f"total {ledger['total_bytes']:,}  (overhead up {pct(o['up'])}, down {pct(o['down'])}, "
          f"total {pct(o['total'])})", flush=True)
    m = report["per_message_overhead"]
    print(f"[pranc-fed] per round per node: SuperLink {p['superlink_bytes']:,} B, ledger {p['ledger_bytes']:,} B; "
          f"Flower framing per message: up {m['up']:,} B, down {m['down']:,} B", flush=True)
    for key, lost in report["missing_replies"].items():
        print(f"[pranc-fed] round {key}: no reply from node(s) {', '.join(lost)}", flush=True)


def deploy(config_path: str | Path, overrides: list[str], cfg, out: Path, nodes: int, tls: bool = False,
           auth: bool = False, certs: Path | None = None, app: Path | None = None,
           node_config: dict[int, str] | None = None, timeout: float | None = None,
           on_ready: Callable[[Deployment], None] | None = None) -> bool:
    """Run the config on a SuperLink and `nodes` SuperNodes (partition i of `nodes` each) on loopback;
    True when the run completed. `cfg` is the loaded config (already checked by the caller).
    `node_config[i]` adds keys to node i's --node-config; `on_ready(deployment)` runs once every node
    is connected, before the run is submitted (e.g. to start more nodes)."""
    tls, out = tls or auth, Path(out).resolve()
    started = time.perf_counter()
    with terminate_as_interrupt(), Deployment(out, tls=tls, auth=auth, certs=certs) as deployment:
        deployment.start(nodes, node_config)
        print(f"[pranc-fed] SuperLink on {deployment.address} ({'TLS' if tls else 'insecure'}"
              f"{', node auth' if auth else ''}), {nodes} SuperNodes connected; logs in {deployment.log_dir}",
              flush=True)
        if on_ready:
            on_ready(deployment)
        run_id = deployment.submit(run_config_for(config_path, overrides, out), app=app)
        print(f"[pranc-fed] deployment run {run_id} submitted", flush=True)
        deployment.stream_logs(run_id, show_progress)
        status = deployment.wait(run_id, timeout=timeout, done_file=out / "summary.json")
        time.sleep(1)  # let the log stream flush the last lines
        report = collect(deployment, run_id, status, out, nodes, time.perf_counter() - started, tls, auth)
    print(f"[pranc-fed] run {run_id}: {status} in {report['wall_seconds']:.0f}s", flush=True)
    print_report(report)
    return status == "finished:completed"
