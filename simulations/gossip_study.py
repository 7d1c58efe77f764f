"""Decentralised PRANC against the star and against dense fp16 gossip, and Byzantine neighbours.

    .venv/bin/python simulations/gossip_study.py [--out runs/gossip_study] [--study mnist|cifar10] [--only NAME ...]
                                                 [--seeds 0 1 2] [--set key=value ...]

Every run is a real Flower simulation of the project's ServerApp (the star, or the relay of
pranc_fed/gossip.py) on MNIST/LeNet with 10 and 50 agents and on JPEG CIFAR-10/ResNet20 with 10 (unpacked
where CIFAR10_JPEG points, /tmp/cifar10 by default), scaled down for a 2-core CPU (STUDIES below). Runs
already finished (summary.json present) are kept, so the command resumes. Writes gossip_study.csv (one row per run,
seed and round), gossip_study.md (the tables: seed 0's, then mean and 95% interval over the seeds of runs that have
several) and gossip_study.png (seed 0's mean and worst agent accuracy per round).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "simulations"))

from attack_study import make_app  # noqa: E402
from pranc_fed.compare import mean_interval, seed_overrides  # noqa: E402
from pranc_fed.config import load_config  # noqa: E402
from pranc_fed.runner import simulate  # noqa: E402

CONFIGS = ROOT / "configs"
# Scaled down for a 2-core CPU. MNIST: 8,000 training and 2,000 test images, 6 rounds, K = 1000.
MNIST = ["pranc.num_coeffs=1000", "pranc.uplink_codec=float32", "pranc.downlink_codec=float32",
         "data.train_subset=8000", "data.test_subset=2000", "train.batch_size=128", "federation.rounds=6",
         "federation.min_train_clients=2"]
# JPEG CIFAR-10/ResNet20 as docs/results/cifar10_resnet20_p1_seeds_iid scales it (20 local Adam steps of
# batch 64, kept client Adam, lr 0.003, 2,000 test images), but every agent trains every round, 5 rounds,
# and one fixed basis (gossip has no server to fold re-seeded periods): K=10000 per layer, int8 messages.
CIFAR10 = ["data.dataset=" + os.environ.get("CIFAR10_JPEG", "/tmp/cifar10"), "data.test_subset=2000",
           "federation.rounds=5", "federation.local_steps=20", "train.batch_size=64",
           "federation.keep_client_optimizer=true", "train.lr=0.003", "pranc.alpha_lr=0.003",
           "pranc.num_coeffs=10000", "pranc.layout=per_layer", "pranc.uplink_codec=int8",
           "pranc.downlink_codec=int8", "federation.fraction_train=1.0", "federation.min_train_clients=2",
           "federation.round_timeout=3600"]  # rounds of 10 agents took up to 10 min on the loaded CPU
# study -> (config, its settings, agent counts, partitions, graphs, Byzantine runs?)
STUDIES = {"mnist": (CONFIGS / "mnist_lenet_ring.yaml", MNIST, [10, 50], ["iid", "dir0.3"], ["star", "ring", "rr4"], True),
           "cifar10": (CONFIGS / "cifar10_resnet20.yaml", CIFAR10, [10], ["iid"], ["star", "ring", "rr4"], False)}
PARTITIONS = {"iid": ["data.partition=iid"], "dir0.3": ["data.partition=dirichlet", "data.dirichlet_alpha=0.3"]}
GRAPHS = {"star": ["federation.topology=star"], "ring": ["federation.topology=ring"],
          "rr4": ["federation.topology=random_regular", "federation.degree=4"]}
METHODS = {"pranc": ["federation.method=pranc"], "fp16": ["federation.method=fedavg_fp16"]}
MIXES = {"mean": [], "median": ["federation.aggregation=median"], "clip": ["federation.norm_bound=clip"]}
ATTACKS = ["none", "scale", "signflip"]
ATTACKER = [0]  # partition 0 attacks its neighbours 1 and 9 on the ring
# More exchanges a round on the IID ring (federation.gossip_steps): (study, agents) -> methods.
STEPS, STEPS_RUNS = 3, {("mnist", 10): ["pranc", "fp16"], ("mnist", 50): ["pranc"]}


def runs() -> list[dict]:
    """Every run of the study. Names: GRAPH-DATA-METHOD for MNIST's 10 agents (as first published),
    prefixed a50- for 50 agents and cifar10- for CIFAR-10, suffixed -steps3 for 3 exchanges a round;
    byz-ring-iid-MIX-ATTACK for the attacks."""
    out = []
    for study, (_, _, agent_counts, partitions, graphs, byzantine) in STUDIES.items():
        for agents in agent_counts:
            prefix = ("" if study == "mnist" else f"{study}-") + ("" if agents == 10 else f"a{agents}-")
            for part in partitions:
                for graph in graphs:
                    for method in METHODS:
                        if graph == "star" and method == "fp16":
                            continue  # the star's dense baselines are in the other sections of docs/results.md
                        out.append({"name": f"{prefix}{graph}-{part}-{method}", "study": study, "agents": agents,
                                    "graph": graph, "partition": part, "method": method, "mix": "mean",
                                    "attack": "none", "steps": 1})
            for method in STEPS_RUNS.get((study, agents), []):
                out.append({"name": f"{prefix}ring-iid-{method}-steps{STEPS}", "study": study, "agents": agents,
                            "graph": "ring", "partition": "iid", "method": method, "mix": "mean", "attack": "none",
                            "steps": STEPS})
        if byzantine:
            for mix in MIXES:
                for attack in ATTACKS:
                    if (mix, attack) != ("mean", "none"):  # that one is ring-iid-pranc above
                        out.append({"name": f"byz-ring-iid-{mix}-{attack}", "study": study, "agents": 10,
                                    "graph": "ring", "partition": "iid", "method": "pranc", "mix": mix,
                                    "attack": attack, "steps": 1})
    return out


def overrides(run: dict) -> list[str]:
    return [*STUDIES[run["study"]][1], f"federation.num_clients={run['agents']}", *PARTITIONS[run["partition"]],
            *GRAPHS[run["graph"]], *METHODS[run["method"]], *MIXES[run["mix"]],
            f"federation.gossip_steps={run['steps']}", f"name=gossip-{run['name']}"]


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
    parser.add_argument("--study", choices=STUDIES, help="run only this study's runs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="run each chosen run once per seed (seed and pranc.basis_seed; seed 0 in OUT/NAME, "
                             "seed N in OUT/seedN/NAME)")
    parser.add_argument("--set", dest="extra", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out).resolve()
    table = []
    # the seeds asked for and those already on disk: the tables cover every finished run
    seeds = sorted({0, *args.seeds, *(int(p.name[4:]) for p in out.glob("seed[0-9]*") if p.name[4:].isdigit())})
    for seed in seeds:
        for run in runs():
            run_out = out / run["name"] if seed == 0 else out / f"seed{seed}" / run["name"]
            if not (run_out / "summary.json").is_file():
                if seed not in args.seeds or (args.only is not None and run["name"] not in args.only) or \
                        args.study not in (None, run["study"]):
                    continue
                settings = [*overrides(run), *seed_overrides(seed), *args.extra]
                config = STUDIES[run["study"]][0]
                cfg = load_config(config, settings)
                app = None if run["attack"] == "none" else make_app(out / "apps" / run["attack"], run["attack"],
                                                                   ATTACKER, cfg.federation.max_num_examples)
                print(f"[gossip-study] {run['name']} seed {seed}", flush=True)
                simulate(config, settings, cfg, run_out, app=app)
            if not (run_out / "summary.json").is_file():
                continue
            summary = json.loads((run_out / "summary.json").read_text())
            rows = [r for r in csv.DictReader((run_out / "rounds.csv").open()) if int(r["round"]) > 0]
            per_agent = per_agent_round_bytes(rows, summary, run["graph"], summary["clients"])
            for r, b in zip(rows, per_agent):
                table.append(run | {"seed": seed, "round": int(r["round"]), "mean_accuracy": float(r["test_accuracy"]),
                                    "worst_accuracy": float(r.get("worst_accuracy") or r["test_accuracy"]),
                                    "consensus_distance": r.get("consensus_distance", ""),
                                    "bytes_per_agent_round": round(b),
                                    "total_bytes": summary.get("total_edge_bytes", summary["total_bytes"])})
    write(out, table)
    return 0


FIELDS = ["name", "study", "agents", "graph", "partition", "method", "mix", "attack", "seed", "round", "mean_accuracy", "worst_accuracy",
          "consensus_distance", "bytes_per_agent_round", "total_bytes"]


def write(out: Path, table: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gossip_study.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    last, finals = {}, {}  # name -> seed 0's last row; name -> every seed's last row
    for row in table:
        finals.setdefault(row["name"], {})[row["seed"]] = row
        if row["seed"] == 0:
            last[row["name"]] = row
    lines = ["| run | study | agents | graph | data | method | rounds | mean acc | worst acc | consensus dist. | "
             "B/agent/round | total MB |", "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in last.items():
        if r["attack"] != "none" or r["mix"] != "mean":
            continue
        dist = f"{float(r['consensus_distance']):.3g}" if r["consensus_distance"] not in ("", None) else "-"
        lines.append(f"| {name} | {r['study']} | {r['agents']} | {r['graph']} | {r['partition']} | {r['method']} | "
                     f"{r['round']} | {r['mean_accuracy']:.2%} | "
                     f"{r['worst_accuracy']:.2%} | {dist} | {r['bytes_per_agent_round']:,} | {r['total_bytes'] / 1e6:.3f} |")
    byz = {(r["mix"], r["attack"]): honest_accuracy(out / name) for name, r in last.items()
           if name.startswith("byz-") or name == "ring-iid-pranc"}
    if byz:
        lines += ["", "Honest agents (all but agent 0) after the last round, mean / worst:", "",
                  "| agent 0 sends | mix: " + " | mix: ".join(MIXES) + " |", "|---|" + "---:|" * len(MIXES)]
        for attack in ATTACKS:
            cells = [f"{byz[m, attack][0]:.2%} / {byz[m, attack][1]:.2%}" if (m, attack) in byz else "-" for m in MIXES]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    lines += seeds_table(finals)
    (out / "gossip_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out, [r for r in table if r["seed"] == 0])


def seeds_table(finals: dict[str, dict[int, dict]]) -> list[str]:
    """Runs with more than one seed: mean +- half-width of the 95% Student t interval of their last round."""
    several = {name: by_seed for name, by_seed in finals.items() if len(by_seed) > 1}
    if not several:
        return []
    lines = ["", "Over seeds (last round; mean ± half-width of the 95% Student t interval):", "",
             "| run | seeds | mean agent acc (%) | worst agent acc (%) | consensus dist. |", "|---|---|---:|---:|---:|"]
    for name, by_seed in several.items():
        cells = []
        for key in ("mean_accuracy", "worst_accuracy", "consensus_distance"):
            values = [float(r[key]) for r in by_seed.values() if r[key] not in ("", None)]
            mean, half = mean_interval(values) if values else (None, None)
            scale, fmt = (100, ".2f") if key != "consensus_distance" else (1, ".3g")
            cells.append("-" if mean is None else f"{mean * scale:{fmt}} ± {half * scale:{fmt}}")
        lines.append(f"| {name} | {' '.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) + " |")
    return lines


def honest_accuracy(run_dir: Path) -> tuple[float, float]:
    """Mean and worst test accuracy of the agents that do not attack, after the run's last round (agents.csv:
    the relay's worst-agent column also counts the attacker's own lying message)."""
    rows = list(csv.DictReader((run_dir / "agents.csv").open()))
    last = max(int(r["round"]) for r in rows)
    accuracies = [float(r["test_accuracy"]) for r in rows if int(r["round"]) == last and int(r["partition"]) not in ATTACKER]
    return sum(accuracies) / len(accuracies), min(accuracies)


def plot(out: Path, table: list[dict]) -> None:
    """One panel per study, agent count and partition: mean (solid) and worst (dashed) agent per round."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plain = [r for r in table if r["attack"] == "none" and r["mix"] == "mean"]
    panels = list(dict.fromkeys((r["study"], r["agents"], r["partition"]) for r in plain))
    if not panels:
        return
    cols = min(3, len(panels))
    grid_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(5.5 * cols, 4 * grid_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (study, agents, part) in zip(axes.flat, panels):
        rows_of = [r for r in plain if (r["study"], r["agents"], r["partition"]) == (study, agents, part)]
        for name in dict.fromkeys(r["name"] for r in rows_of):
            rows = [r for r in rows_of if r["name"] == name]
            line, = ax.plot([r["round"] for r in rows], [r["mean_accuracy"] for r in rows], label=f"{name} mean")
            if rows[0]["graph"] != "star":
                ax.plot([r["round"] for r in rows], [r["worst_accuracy"] for r in rows], ls="--", color=line.get_color())
        ax.set_title(f"{study}, {agents} agents, {part}", fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("test accuracy (solid: mean agent, dashed: worst)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "gossip_study.png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
