"""Decentralised PRANC against the star and against dense fp16 gossip, and Byzantine neighbours.

    .venv/bin/python simulations/gossip_study.py [--out runs/gossip_study] [--only NAME ...] [--set key=value ...]

Every run is a real Flower simulation of the project's ServerApp (the star, or the relay of
pranc_fed/gossip.py) on MNIST/LeNet, scaled down for a 2-core CPU (STUDY below). Runs already finished
(summary.json present) are kept, so the command resumes. Writes gossip_study.csv (one row per run and
round), gossip_study.md (the tables) and gossip_study.png (mean and worst agent accuracy per round).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "simulations"))

from attack_study import make_app  # noqa: E402
from pranc_fed.config import load_config  # noqa: E402
from pranc_fed.runner import simulate  # noqa: E402

CONFIG = ROOT / "configs" / "mnist_lenet_ring.yaml"
STUDY = ["pranc.num_coeffs=1000", "pranc.uplink_codec=float32", "pranc.downlink_codec=float32",
         "data.train_subset=8000", "data.test_subset=2000", "train.batch_size=128", "federation.rounds=6",
         "federation.num_clients=10", "federation.min_train_clients=2"]
PARTITIONS = {"iid": ["data.partition=iid"], "dir0.3": ["data.partition=dirichlet", "data.dirichlet_alpha=0.3"]}
GRAPHS = {"star": ["federation.topology=star"], "ring": ["federation.topology=ring"],
          "rr4": ["federation.topology=random_regular", "federation.degree=4"]}
METHODS = {"pranc": ["federation.method=pranc"], "fp16": ["federation.method=fedavg_fp16"]}
MIXES = {"mean": [], "median": ["federation.aggregation=median"], "clip": ["federation.norm_bound=clip"]}
ATTACKS = ["none", "scale", "signflip"]
ATTACKER = [0]  # partition 0 attacks its neighbours 1 and 9 on the ring


def runs() -> list[dict]:
    out = []
    for part in PARTITIONS:
        for graph in GRAPHS:
            for method in METHODS:
                if graph == "star" and method == "fp16":
                    continue  # the star's own dense baselines are in the other sections of docs/results.md
                out.append({"name": f"{graph}-{part}-{method}", "graph": graph, "partition": part, "method": method,
                            "mix": "mean", "attack": "none"})
    for mix in MIXES:
        for attack in ATTACKS:
            if (mix, attack) != ("mean", "none"):  # that one is ring-iid-pranc above
                out.append({"name": f"byz-ring-iid-{mix}-{attack}", "graph": "ring", "partition": "iid",
                            "method": "pranc", "mix": mix, "attack": attack})
    return out


def overrides(run: dict) -> list[str]:
    return [*STUDY, *PARTITIONS[run["partition"]], *GRAPHS[run["graph"]], *METHODS[run["method"]],
            *MIXES[run["mix"]], f"name=gossip-{run['name']}"]


def per_agent_round_bytes(rows: list[dict], summary: dict, graph: str, clients: int) -> list[float]:
    """Bytes one agent sends and receives per round: the star's up+down per client, the gossip's edges
    (each edge message counted once, at its sender), per agent."""
    if graph == "star":
        return [(int(r["up_bytes"]) + int(r["down_bytes"])) / clients for r in rows]
    return [float(r["bytes_per_agent"]) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "gossip_study"))
    parser.add_argument("--only", nargs="*", help="run only these names (see runs())")
    parser.add_argument("--set", dest="extra", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out).resolve()
    table = []
    for run in runs():
        run_out = out / run["name"]
        if not (run_out / "summary.json").is_file():
            if args.only is not None and run["name"] not in args.only:
                continue
            settings = [*overrides(run), *args.extra]
            cfg = load_config(CONFIG, settings)
            app = None if run["attack"] == "none" else make_app(out / "apps" / run["attack"], run["attack"], ATTACKER,
                                                               cfg.federation.max_num_examples)
            print(f"[gossip-study] {run['name']}", flush=True)
            simulate(CONFIG, settings, cfg, run_out, app=app)
        if not (run_out / "summary.json").is_file():
            continue
        summary = json.loads((run_out / "summary.json").read_text())
        rows = [r for r in csv.DictReader((run_out / "rounds.csv").open()) if int(r["round"]) > 0]
        per_agent = per_agent_round_bytes(rows, summary, run["graph"], summary["clients"])
        for r, b in zip(rows, per_agent):
            table.append(run | {"round": int(r["round"]), "mean_accuracy": float(r["test_accuracy"]),
                                "worst_accuracy": float(r.get("worst_accuracy") or r["test_accuracy"]),
                                "consensus_distance": r.get("consensus_distance", ""),
                                "bytes_per_agent_round": round(b),
                                "total_bytes": summary.get("total_edge_bytes", summary["total_bytes"])})
    write(out, table)
    return 0


FIELDS = ["name", "graph", "partition", "method", "mix", "attack", "round", "mean_accuracy", "worst_accuracy",
          "consensus_distance", "bytes_per_agent_round", "total_bytes"]


def write(out: Path, table: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gossip_study.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    last = {}
    for row in table:
        last[row["name"]] = row
    lines = ["| run | graph | data | method | mean acc | worst acc | consensus dist. | B/agent/round | total MB |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for name, r in last.items():
        if r["attack"] != "none" or r["mix"] != "mean":
            continue
        dist = f"{float(r['consensus_distance']):.3g}" if r["consensus_distance"] not in ("", None) else "-"
        lines.append(f"| {name} | {r['graph']} | {r['partition']} | {r['method']} | {r['mean_accuracy']:.2%} | "
                     f"{r['worst_accuracy']:.2%} | {dist} | {r['bytes_per_agent_round']:,} | {r['total_bytes'] / 1e6:.3f} |")
    byz = {(r["mix"], r["attack"]): r for r in last.values() if r["name"].startswith("byz-") or r["name"] == "ring-iid-pranc"}
    if byz:
        lines += ["", "| neighbour 0 sends | " + " | ".join(MIXES) + " |", "|---|" + "---:|" * len(MIXES)]
        for attack in ATTACKS:
            cells = [f"{byz[m, attack]['mean_accuracy']:.2%} / {byz[m, attack]['worst_accuracy']:.2%}"
                     if (m, attack) in byz else "-" for m in MIXES]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    (out / "gossip_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out, table)


def plot(out: Path, table: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(PARTITIONS), figsize=(6 * len(PARTITIONS), 4), sharey=True)
    for ax, part in zip(axes, PARTITIONS):
        names = dict.fromkeys(r["name"] for r in table if r["partition"] == part and r["attack"] == "none"
                              and r["mix"] == "mean")
        for name in names:
            rows = [r for r in table if r["name"] == name]
            line, = ax.plot([r["round"] for r in rows], [r["mean_accuracy"] for r in rows], label=f"{name} mean")
            if rows[0]["graph"] != "star":
                ax.plot([r["round"] for r in rows], [r["worst_accuracy"] for r in rows], ls="--", color=line.get_color())
        ax.set_title(f"MNIST/LeNet, 10 agents, {part}: mean (solid) and worst (dashed) agent")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gossip_study.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
