"""Memory and time of a simulation as the number of clients grows (issue 15).

    .venv/bin/python simulations/scale_memory.py [--clients 10 100 1000] [--caches memory auto] [--out runs/scale_memory]

Each run is `pranc-fed simulate configs/mnist_lenet.yaml` (LeNet, PRANC K = 5000, global basis) with N
clients, 10 of them sampled per round, 2 rounds. While it runs, the proportional set size (PSS, so a
page shared by several processes counts once in total) of the CLI and every process below it (SuperLink,
ServerApp, Ray and its actors) is summed every half second. Reported: the peak of that sum, the time
from the start to the end of round 1, and round 2's time. `pranc.cache` memory keeps each actor's own
copy of the basis; auto (the default, on the CPU) and disk memory-map one file that every actor shares.
Writes scale_memory.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pranc_fed.runner import descendants  # noqa: E402


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_pss(roots: list[int]) -> int:
    """PSS of the processes `roots` and every process below them, summed: the memory they hold together."""
    pids = {d for root in roots for d in [root, *descendants(root)]}
    return sum(pss_bytes(pid) for pid in pids)


def run(clients: int, cache: str, out: Path) -> dict:
    overrides = [f"federation.num_clients={clients}", f"federation.fraction_train={10 / clients:g}",
                 "federation.min_train_clients=2", "federation.rounds=2", f"pranc.cache={cache}"]
    args = [sys.executable, "-m", "pranc_fed.cli", "simulate", str(ROOT / "configs" / "mnist_lenet.yaml"),
            "--out", str(out)] + [a for o in overrides for a in ("--set", o)]
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss([process.pid]))
        time.sleep(0.5)
    wall = time.perf_counter() - started
    with (out / "rounds.csv").open() as f:
        rows = {int(r["round"]): float(r["wall_seconds"]) for r in csv.DictReader(f)}
    return {"clients": clients, "cache": cache, "exit": process.returncode, "peak_pss_gb": peak / 1e9,
            "to_round_1_s": rows.get(1), "round_2_s": rows[2] - rows[1] if 2 in rows and 1 in rows else None,
            "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--caches", nargs="+", default=["memory", "auto"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scale_memory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cache in args.caches:
        for clients in args.clients:
            rows.append(run(clients, cache, args.out / f"{cache}-{clients}"))
            r = rows[-1]
            print(f"cache {cache:<5} N={clients:<5} exit {r['exit']}  peak PSS {r['peak_pss_gb']:.2f} GB  "
                  f"to round 1 {r['to_round_1_s']:.0f} s  round 2 {r['round_2_s']:.0f} s", flush=True)
            (args.out / "scale_memory.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
