"""Memory and ClientApp start cost of a real deployment with many SuperNodes, with a private basis per
ClientApp process (pranc.cache=memory) and with the shared disk cache (pranc.cache=disk) (issue 15).

    .venv/bin/python simulations/deploy_scale.py [--nodes 10] [--k 2000] [--caches memory disk]
        [--rounds 2] [--out runs/deploy_scale] [--set KEY=VALUE ...]

For each cache: a fresh loopback Deployment (flower-superlink and --nodes flower-supernode processes,
insecure) runs configs/mnist_lenet.yaml with one partition per node, every node sampled every round,
and little local work (SMALL), so that what is measured is the cost of starting a ClientApp. Every
message starts a fresh ClientApp process, which imports torch and builds the model with its PRANC basis
(K vectors of the model's size): generated in the process (memory), or mapped read-only from one file
under $PRANC_FED_CACHE/basis that the first process to need it writes under a lock (disk). Each variant
gets an empty temporary PRANC_FED_CACHE, removed afterwards.

While a run goes (submit to finished) a thread samples every --period seconds:
  peak PSS    the PSS of the SuperLink, the SuperNodes and everything below them (ServerApp, SuperExecs,
              ClientApps) summed (scale_memory.tree_pss): a page shared by several processes counts once;
  ClientApps  each flwr-clientapp process of each node: its creation time (/proc/PID/stat, to 10 ms)
              and when it was last seen (so its exit is known to +-period/2).
The SuperNodes (and so their ClientApps) run with FLWR_LOG_LEVEL=DEBUG, so their logs stamp, to the
millisecond, when Flower loads the app, when the app is ready ("[pranc-fed] ClientApp PID ready",
pranc_fed/client_app.py, once model, basis and data partition are built) and when the task finished
(reply pushed). Per message (see messages()):
  start cost  creation to ready = Flower's part (interpreter, Flower, pulling the message and FAB) + the
              app's (importing torch and the app, building the model with its basis, the data);
  work        ready to the task's end: loading alpha, the local steps, pushing the reply;
  busy        the process's lifetime: start cost + work + exit.
Not in any: the SuperExec's delay (it polls every second) between a message reaching its SuperNode and
the ClientApp process being started. With the disk cache, the file's write time is the basis file's
last write minus the creation of its lock file (made by the first process to open the cache), and the
writer is the ServerApp when the lock file predates the first ClientApp. Writes OUT/deploy_scale.json
and OUT/table.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from scale_memory import ROOT, tree_pss  # first: it puts the repository on sys.path

from pranc_fed.deploy import Deployment
from pranc_fed.runner import run_config_for, show_progress, terminate_as_interrupt

SMALL = ["data.train_subset=2000", "data.test_subset=500", "federation.local_steps=2", "train.batch_size=32"]
# The lines of a ClientApp's life in its SuperNode's log (FLWR_LOG_LEVEL=DEBUG): Flower hands over to the app,
# the app is ready to work (pranc_fed/client_app.py), the ClientApp has pushed its reply and ends its task.
EVENTS = {"loading": "[flwr-clientapp] Start `ClientApp` Loading.", "ready": "[pranc-fed] ClientApp ",
          "finished": "Finished task "}
LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})[^:]*:\s+(.*)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def created_at(pid: int) -> float | None:
    """When process `pid` was created, as a time.time() value (None once it is gone)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ticks / CLOCK_TICKS


def deployment_pss(deployment: Deployment) -> int:
    """Summed PSS of the SuperLink, the SuperNodes and every process below them."""
    return tree_pss([deployment.superlink.pid, *(p.pid for p in deployment.nodes.values())])


class Sampler:
    """A thread that samples the deployment's summed PSS and its ClientApp processes (module docstring)."""

    def __init__(self, deployment: Deployment, period: float):
        self.deployment, self.period = deployment, period
        self.peak_pss = 0
        self.clientapps: dict[int, dict] = {}  # pid -> node, created, last_seen
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.stop.wait(self.period):
            self.peak_pss = max(self.peak_pss, deployment_pss(self.deployment))
            now = time.time()
            for node, pids in self.deployment.clientapps().items():
                for pid in pids:
                    if pid not in self.clientapps and (created := created_at(pid)) is not None:
                        self.clientapps[pid] = {"node": node, "created": created}
                    if pid in self.clientapps:
                        self.clientapps[pid]["last_seen"] = now


def log_events(path: Path) -> list[tuple[float, str, str]]:
    """(time, event, message) of each EVENTS line of a SuperNode's log, in order."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if (m := LOG_LINE.search(line)) and (kind := next((k for k, v in EVENTS.items() if m[3].startswith(v)), None)):
            # Flower stamps its lines with local time to the millisecond
            events.append((time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000, kind, m[3]))
    return events


def messages(sampler: Sampler, log_dir: Path) -> list[dict]:
    """One row per ClientApp process seen: its node, its round (its rank on that node) and its times in
    seconds: flower (creation to Flower loading the app: interpreter, Flower, pulling the message, FAB),
    app (loading to ready: importing the app and torch, building model, basis and data), start_cost
    (flower + app), work (ready to the task's end: local training, the reply pushed), busy (lifetime)."""
    rows = []
    for node in sampler.deployment.nodes:
        events = log_events(log_dir / f"{node}.log")
        ready = {int(text.split()[2]): i for i, (_, kind, text) in enumerate(events) if kind == "ready"}
        apps = sorted(((pid, a) for pid, a in sampler.clientapps.items() if a["node"] == node),
                      key=lambda item: item[1]["created"])
        for rank, (pid, app) in enumerate(apps, start=1):
            row = {"node": node, "round": rank, "pid": pid, "created": round(app["created"], 3),
                   "flower_s": None, "app_s": None, "start_cost_s": None, "work_s": None,
                   "busy_s": round(app["last_seen"] + sampler.period / 2 - app["created"], 3)}
            if pid in ready:  # the app's lines between Flower's "Loading" before it and "Finished task" after it
                i = ready[pid]
                loaded = [t for t, kind, _ in events[:i] if kind == "loading"][-1:]
                finished = [t for t, kind, _ in events[i:] if kind == "finished"][:1]
                ready_at = events[i][0]
                row["start_cost_s"] = round(ready_at - app["created"], 3)
                if loaded:
                    row["flower_s"], row["app_s"] = round(loaded[0] - app["created"], 3), round(ready_at - loaded[0], 3)
                if finished:
                    row["work_s"] = round(finished[0] - ready_at, 3)
            rows.append(row)
    return rows


def disk_cache_write(cache_dir: Path, first_clientapp: float | None) -> dict | None:
    """How long the basis file took to write, and whether the ServerApp or a ClientApp wrote it."""
    files = list((cache_dir / "basis").glob("*.basis"))
    if len(files) != 1:
        return None
    lock = files[0].with_name(files[0].name + ".lock")
    opened, written = lock.stat().st_mtime, files[0].stat().st_mtime
    writer = "ServerApp" if first_clientapp is None or opened < first_clientapp else "a ClientApp"
    return {"file_bytes": files[0].stat().st_size, "write_s": round(written - opened, 2), "writer": writer}


def summarise(rows: list[dict]) -> dict:
    """Mean and max of each time of messages(), per round and over all messages."""
    rounds = sorted({m["round"] for m in rows})
    groups = {"all": rows, **{f"round {r}": [m for m in rows if m["round"] == r] for r in rounds}}
    summary = {}
    for name, group in groups.items():
        summary[name] = {}
        for key in ("flower_s", "app_s", "start_cost_s", "work_s", "busy_s"):
            values = [m[key] for m in group if m[key] is not None]
            summary[name][key] = ({"n": len(values), "mean": round(statistics.mean(values), 2),
                                   "max": round(max(values), 2)} if values else {"n": 0})
    return summary


def measure(cache: str, args: argparse.Namespace, overrides: list[str]) -> dict:
    """One deployment and run with pranc.cache=`cache`, in an empty PRANC_FED_CACHE of its own."""
    out = (args.out / cache).resolve()
    cache_dir = Path(tempfile.mkdtemp(prefix=f"pranc-deploy-scale-{cache}-"))
    # Read by the ServerApp (the SuperLink's environment) and the ClientApps alike; FlowerRun copies it.
    os.environ["PRANC_FED_CACHE"] = str(cache_dir)
    result = {"cache": cache, "status": "not started"}
    try:
        with Deployment(out / "deployment", node_env={"FLWR_LOG_LEVEL": "DEBUG"}) as deployment:
            started = time.perf_counter()
            deployment.start(args.nodes)
            result["nodes_connected_s"] = round(time.perf_counter() - started, 1)
            result["idle_pss_gb"] = round(deployment_pss(deployment) / 1e9, 3)
            print(f"[deploy-scale] cache={cache}: {args.nodes} SuperNodes connected in "
                  f"{result['nodes_connected_s']} s, idle PSS {result['idle_pss_gb']} GB", flush=True)
            result["load_average_at_submit"] = os.getloadavg()  # other work on the machine slows every time
            with Sampler(deployment, args.period) as sampler:
                started = time.perf_counter()
                run_id = deployment.submit(run_config_for(args.config, [*overrides, f"pranc.cache={cache}"],
                                                          out / "run"))
                deployment.stream_logs(run_id, show_progress)
                result["status"] = deployment.wait(run_id, timeout=args.timeout, done_file=out / "run" / "summary.json")
                result["run_wall_s"] = round(time.perf_counter() - started, 1)
            rows = messages(sampler, deployment.log_dir)
        result.update(peak_pss_gb=round(sampler.peak_pss / 1e9, 3), load_average_at_end=os.getloadavg(),
                      summary=summarise(rows), messages=rows)
        if cache == "disk":
            result["disk_cache"] = disk_cache_write(cache_dir, min((m["created"] for m in rows), default=None))
    except RuntimeError as e:  # a node that never connected, a refused submit: the other variant still runs
        result["error"] = str(e)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    result["completed"] = result["status"] == "finished:completed"
    return result


def table(results: dict) -> str:
    def cell(stats: dict) -> str:
        return f"{stats['mean']:.1f} ({stats['max']:.1f})" if stats.get("n") else "n/a"

    lines = [f"{results['nodes']} SuperNodes, K = {results['k']:,}, {results['rounds']} rounds: "
             f"{results['nodes'] * results['rounds']} train messages per run; per message, seconds: mean (max)", "",
             "| pranc.cache | completed | run wall | peak PSS, all processes (idle deployment) | "
             "ClientApp start, round 1 | round 2 | of which Flower, all | app + basis, all | work | busy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["variants"]:
        if "summary" not in r:
            lines.append(f"| {r['cache']} | no: {r.get('error', r['status'])} |" + " |" * 8)
            continue
        s, every = r["summary"], r["summary"]["all"]
        rounds = [cell(s.get(f"round {n}", {}).get("start_cost_s", {})) for n in (1, 2)]
        lines.append(f"| {r['cache']} | {'yes' if r['completed'] else 'no: ' + r['status']} | {r['run_wall_s']:.0f} s | "
                     f"{r['peak_pss_gb']:.2f} GB ({r['idle_pss_gb']:.2f} GB) | {rounds[0]} | {rounds[1]} | "
                     + " | ".join(cell(every[key]) for key in ("flower_s", "app_s", "work_s", "busy_s")) + " |")
    for r in results["variants"]:
        if r.get("disk_cache"):
            d = r["disk_cache"]
            lines.append(f"\nDisk cache: one {d['file_bytes'] / 1e6:.0f} MB file, written once by the {d['writer']} "
                         f"in {d['write_s']:.1f} s; every ClientApp mapped it.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist_lenet.yaml")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--k", type=int, default=2000, help="PRANC K (LeNet: 2000 = a 355 MB fp32 basis)")
    parser.add_argument("--caches", nargs="+", default=["memory", "disk"], choices=["memory", "disk"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--period", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "deploy_scale")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config overrides after {' '.join(SMALL)}")
    args = parser.parse_args()
    overrides = [*SMALL, f"federation.num_clients={args.nodes}", "federation.fraction_train=1.0",
                 f"federation.min_train_clients={args.nodes}", f"federation.rounds={args.rounds}",
                 f"pranc.num_coeffs={args.k}", *args.overrides]
    results = {"command": shlex.join(["simulations/deploy_scale.py", *sys.argv[1:]]), "config": str(args.config),
               "overrides": overrides, "nodes": args.nodes, "k": args.k, "rounds": args.rounds,
               "cpus": os.cpu_count(), "variants": []}
    args.out.mkdir(parents=True, exist_ok=True)
    with terminate_as_interrupt():
        for cache in args.caches:
            results["variants"].append(measure(cache, args, overrides))
            (args.out / "deploy_scale.json").write_text(json.dumps(results, indent=2))
    (args.out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return 0 if all(r["completed"] for r in results["variants"]) else 1


if __name__ == "__main__":
    sys.exit(main())
