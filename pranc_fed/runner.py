"""Drive Flower from outside: a private SuperLink (simulation or deployment), `flwr run`,
status polling, log streaming, and cleanup of every process started, whatever happens.

`flwr run --stream` exits 0 even when the run failed, so success is read from `flwr ls`.
Every port is chosen free at start, and FLWR_HOME is private, so runs never collide.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from .app_folder import app_folder

BIN_DIR = Path(sys.executable).parent
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}


CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns and os.CLONE_NEWNET arrive only in Python 3.12


def in_netns(netns: str | None, args: list[str]) -> list[str]:
    """`args` as a command that runs inside the network namespace `netns` (None: this process's).
    `ip netns exec` execs the command, so the process id stays the command's own."""
    return ["ip", "netns", "exec", netns, *args] if netns else list(args)


def call_in_netns(netns: str | None, fn):
    """fn() with its sockets in network namespace `netns`: a namespace belongs to a thread, so a
    short-lived thread enters it and the rest of this process stays where it is."""
    if netns is None:
        return fn()
    outcome: dict = {}

    def enter_and_call() -> None:
        try:
            with open(f"/run/netns/{netns}") as handle:
                if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into network namespace {netns} failed")
            outcome["value"] = fn()
        except Exception as e:  # raised again in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=enter_and_call, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlowerRun:
    """One private Flower installation: FLWR_HOME, a SuperLink and whatever else gets started.
    The SuperLink listens on `host`; with `netns` it and every `flwr` call run in that network
    namespace (see pranc_fed/netns.py), else everything stays on this host's loopback."""

    def __init__(self, log_dir: Path, tls_root_cert: Path | None = None, host: str = "127.0.0.1",
                 netns: str | None = None):
        self.home = Path(tempfile.mkdtemp(prefix="pranc-fed-flwr-"))
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The SuperLink finds flower-superexec and friends on PATH: put this venv's first.
        self.env = os.environ | OFFLINE_ENV | {"FLWR_HOME": str(self.home),
                                               "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.processes: list[subprocess.Popen] = []
        # Flower 1.42 serves the Runtime, Control and Fleet APIs on one HTTP port.
        self.port = free_port()
        self.host, self.netns = host, netns
        self.address = f"{host}:{self.port}"
        self.tls_root_cert = tls_root_cert
        self.app = app_folder()  # what `flwr run` bundles unless submit() names another app folder

    def __enter__(self) -> "FlowerRun":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)  # Flower's private state and app copies; logs stay in log_dir

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              netns: str | None = None) -> subprocess.Popen:
        """Start a process in its own session (so its children die with it), logging to log_dir/name.log,
        in network namespace `netns` if given. `env` adds to (or replaces values of) this run's environment."""
        log = (self.log_dir / f"{name}.log").open("w")
        process = subprocess.Popen(in_netns(netns, args), env=self.env | (env or {}), stdout=log,
                                   stderr=subprocess.STDOUT, cwd=self.app, start_new_session=True)
        self.processes.append(process)
        return process

    def start_superlink(self, simulation: bool, extra: list[str] = ()) -> None:
        args = [str(BIN_DIR / "flower-superlink"), "--host", self.host, "--port", str(self.port),
                "--disable-runtime-dependency-installation", *extra]
        if simulation:
            args.append("--simulation")
        if self.tls_root_cert is None:
            args.append("--insecure")
        self.superlink = self.spawn("superlink", args, netns=self.netns)
        self._write_connection()
        self.wait_healthy()

    def _write_connection(self) -> None:
        lines = ['[superlink]', 'default = "pranc"', '', '[superlink.pranc]', f'address = "{self.address}"']
        lines.append(f'root-certificates = "{self.tls_root_cert}"' if self.tls_root_cert else "insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def wait_healthy(self, timeout: float = 60) -> None:
        scheme = "https" if self.tls_root_cert else "http"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {self.superlink.returncode}; "
                                   f"see {self.log_dir / 'superlink.log'}")
            if call_in_netns(self.netns, lambda: self._healthy(scheme)):
                return
            time.sleep(0.3)
        raise RuntimeError(f"flower-superlink not ready after {timeout:.0f}s ({scheme}); "
                           f"see {self.log_dir / 'superlink.log'}")

    def _healthy(self, scheme: str) -> bool:
        context = ssl.create_default_context(cafile=str(self.tls_root_cert)) if self.tls_root_cert else None
        try:
            with urllib.request.urlopen(f"{scheme}://{self.address}/health", timeout=1, context=context) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(in_netns(self.netns, [str(BIN_DIR / "flwr"), *args]), env=self.env, cwd=self.app,
                              capture_output=True, text=True, timeout=timeout)

    def submit(self, run_config: dict[str, str], federation_config: str | None = None, app: Path | None = None) -> int:
        """`flwr run` the app (this project unless `app` names another app folder); returns the run id."""
        config = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        args = ["run", str(app or self.app), "pranc", "--run-config", config, "--format", "json"]
        if federation_config:
            args += ["--federation-config", federation_config]
        result = self.flwr(*args)
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            reply = {}
        if result.returncode != 0 or not reply.get("success", False) or "run-id" not in reply:
            raise RuntimeError(f"flwr run failed (exit {result.returncode}): {result.stdout.strip()} "
                               f"{result.stderr.strip()}")
        return int(reply["run-id"])

    def status(self, run_id: int) -> str:
        result = self.flwr("ls", "pranc", "--run-id", str(run_id), "--format", "json", timeout=60)
        try:
            runs = json.loads(result.stdout).get("runs", [])
            return runs[0]["status"] if runs else "unknown"
        except (json.JSONDecodeError, KeyError, IndexError):
            return "unknown"

    def stream_logs(self, run_id: int, keep=lambda line: True) -> None:
        """Forward the run's log lines that `keep` accepts to stdout, in a background thread."""
        command = [str(BIN_DIR / "flwr"), "log", str(run_id), "pranc", "--stream"]
        process = subprocess.Popen(in_netns(self.netns, command), env=self.env,
                                   cwd=self.app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        self.processes.append(process)
        log_file = (self.log_dir / "run.log").open("w")

        def forward() -> None:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                if keep(line):
                    print(line.rstrip(), flush=True)

        threading.Thread(target=forward, daemon=True).start()

    def wait(self, run_id: int, poll: float = 2.0, timeout: float | None = None, done_file: Path | None = None,
             slow_poll: float = 15.0) -> str:
        """Poll `flwr ls` until the run finishes; returns its final status (e.g. finished:completed).
        With `done_file` (the ServerApp writes summary.json last) `flwr ls` is asked only every
        `slow_poll` seconds until that file appears, then every `poll` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        asked, since = 0.0, time.time() - 1

        def done() -> bool:  # written by this run, not left over from an earlier one
            return done_file is None or (done_file.exists() and done_file.stat().st_mtime >= since)

        while True:
            if done() or time.monotonic() - asked > slow_poll:
                status, asked = self.status(run_id), time.monotonic()
                if status.startswith("finished"):
                    return status
            if self.superlink.poll() is not None:
                return f"superlink exited with code {self.superlink.returncode}"
            if deadline is not None and time.monotonic() > deadline:
                return "timed out"
            time.sleep(poll if done() else 0.5)

    def stop(self) -> None:
        """Terminate everything started and all their descendants (Flower detaches some children
        into sessions of their own, so process groups are not enough), then kill what is left."""
        pids = [p.pid for p in self.processes if p.poll() is None]
        terminate([*pids, *(d for pid in pids for d in descendants(pid))], reap=self._reap)
        self.processes.clear()

    def _reap(self) -> None:
        for process in self.processes:
            process.poll()  # reap our own children so they stop counting as alive


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process and every process below it (Flower detaches some into sessions of their own)."""
    for target in [pid, *descendants(pid)]:
        send_signal(target, sig)


def descendants(pid: int) -> list[int]:
    if not Path("/proc").is_dir():
        return []
    children, out, todo = _children_map(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(pids: list[int], grace: float = 10.0, reap=lambda: None) -> None:
    """SIGTERM, up to `grace` seconds to exit (`reap` collects our own children meanwhile), then SIGKILL."""
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        reap()
        time.sleep(0.2)
    for pid in pids:
        send_signal(pid, signal.SIGKILL)
    reap()


def command_line(pid: int) -> list[str]:
    """A process's argv ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so every process started gets stopped.
    Background jobs of a non-interactive shell ignore SIGINT: SIGTERM is the signal that always works."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_config_for(config_path: str | Path, overrides: list[str], out: Path) -> dict[str, str]:
    """The app's run config: the YAML, the user's overrides, and the output folder as an absolute path."""
    overrides = [*overrides, f"out_dir={out.resolve()}"]
    return {"config-file": str(Path(config_path).resolve()), "overrides": shlex.join(overrides)}


def show_progress(line: str) -> bool:
    return "[pranc-fed]" in line or "ERROR" in line or "Traceback" in line


def check_ray_address(address: str) -> None:
    """Refuse, before anything starts, a federation.ray_address with no Ray head listening there."""
    if not address or address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        from .config import ConfigError
        raise ConfigError(f"federation.ray_address {address}: no Ray head answers there ({e.strerror or e}); "
                          f"start one with `ray start --head --port {port}`, or leave ray_address unset "
                          f"for a private Ray instance") from None


def simulate(config_path: str | Path, overrides: list[str], cfg, out: Path, app: Path | None = None) -> bool:
    """Run the config as a Flower simulation (Ray backend) of this app, or of the app folder `app`
    (another ClientApp with this ServerApp, e.g. simulations/byzantine_client.py); True when the run completed."""
    fed = cfg.federation
    federation = (f"num-supernodes={fed.num_clients} client-resources-num-cpus={fed.num_cpus_per_client:g} "
                  f"client-resources-num-gpus={fed.num_gpus_per_client:g}")
    check_ray_address(fed.ray_address)
    with terminate_as_interrupt(), FlowerRun(out / "logs") as flower:
        # Ray's own ray.init() reads RAY_ADDRESS: set from the config, or removed so a stray one is not used.
        flower.env.pop("RAY_ADDRESS", None)
        if fed.ray_address:
            flower.env["RAY_ADDRESS"] = fed.ray_address
        flower.start_superlink(simulation=True)
        run_id = flower.submit(run_config_for(config_path, overrides, out), federation, app)
        print(f"[pranc-fed] simulation run {run_id} submitted; logs in {out / 'logs'}", flush=True)
        flower.stream_logs(run_id, show_progress)
        status = flower.wait(run_id, done_file=out / "summary.json")
        time.sleep(1)  # let the log stream flush the last lines
    print(f"[pranc-fed] run {run_id}: {status}", flush=True)
    return status == "finished:completed"
