"""Byzantine clients against each aggregation rule: final accuracy per attack x rule x attacker share.

    .venv/bin/python simulations/attack_study.py [--out runs/attack_study] [--set key=value ...]

Every run is a real Flower simulation of pranc_fed's ServerApp with simulations/byzantine_client.py
as the ClientApp: the listed partitions train honestly, then attack their reply (that module's
docstring). Runs already finished (summary.json present) are skipped, so the study resumes.
Writes attack_study.csv, attack_study.md and attack_study.png under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pranc_fed.config import load_config  # noqa: E402
from pranc_fed.runner import simulate  # noqa: E402

# A small MNIST/LeNet PRANC job, so that 48 runs fit in an hour on two cores.
BASE = ["federation.method=pranc", "pranc.num_coeffs=1000", "pranc.uplink_codec=float32", "pranc.downlink_codec=float32",
        "data.train_subset=8000", "data.test_subset=5000", "train.batch_size=128", "federation.rounds=4",
        "federation.min_train_clients=2"]
SHARES = {"1of3": (3, [0]), "3of10": (10, [0, 1, 2])}
ATTACKS = ["none", "scale", "noise", "signflip", "claim", "byteorder"]
RULES = {
    "mean": ["federation.aggregation=mean", "federation.client_weighting=examples", "federation.norm_bound=none"],
    "clip+cap": ["federation.aggregation=mean", "federation.client_weighting=capped", "federation.norm_bound=clip"],
    "median": ["federation.aggregation=median"],
    "trimmed": ["federation.aggregation=trimmed_mean", "federation.trim_fraction=0.34"],
    "multikrum": ["federation.aggregation=krum"],  # f = the share's attackers, m = n - f (rule_settings)
}
FIELDS = ["share", "attack", "rule", "final_test_accuracy", "change_vs_no_attack", "dropped_replies", "rounds_aggregated"]


def make_app(folder: Path, attack: str, attackers: list[int], max_examples: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "simulations" / "byzantine_client.py", folder)
    (folder / "attack_spec.py").write_text(f"ATTACK = {attack!r}\nATTACKERS = {attackers!r}\n"
                                           f"MAX_NUM_EXAMPLES = {max_examples}\n")
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = pyproject.replace('clientapp = "pranc_fed.client_app:app"', 'clientapp = "byzantine_client:app"')
    pyproject = pyproject.replace('fab-include = ["pranc_fed/**/*.py", "configs/*.yaml"]', 'fab-include = ["*.py"]')
    pyproject = pyproject.replace('name = "pranc-fed"', 'name = "pranc-fed-byzantine"')
    (folder / "pyproject.toml").write_text(pyproject)
    return folder


def rule_settings(rule: str, settings: list[str], clients: int, attackers: list[int]) -> list[str]:
    """Multi-Krum is told how many attackers to expect (Flower's num_malicious_nodes) and averages the rest."""
    if rule != "multikrum":
        return settings
    return [*settings, f"federation.krum_byzantine={len(attackers)}", f"federation.krum_select={clients - len(attackers)}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "mnist_lenet.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "attack_study"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out).resolve()
    rows = []
    for share, (clients, attackers) in SHARES.items():
        for attack in ATTACKS:
            for rule, settings in RULES.items():
                overrides = [*BASE, f"federation.num_clients={clients}", *rule_settings(rule, settings, clients, attackers),
                             *args.overrides,
                             f"name=attack-{share}-{attack}-{rule}"]
                cfg = load_config(args.config, overrides)
                run_out = out / share / attack / rule
                if not (run_out / "summary.json").is_file():
                    app = make_app(out / "apps" / f"{share}-{attack}", attack, [] if attack == "none" else attackers,
                                   cfg.federation.max_num_examples)
                    print(f"[attack-study] {share} {attack} {rule}", flush=True)
                    simulate(args.config, overrides, cfg, run_out, app=app)
                summary = json.loads((run_out / "summary.json").read_text())
                rows.append({"share": share, "attack": attack, "rule": rule,
                             "final_test_accuracy": summary["final_test_accuracy"],
                             "dropped_replies": sum(len(r["dropped"]) for r in summary["replies"]),
                             "rounds_aggregated": summary.get("rounds_aggregated")})
    clean = {(r["share"], r["rule"]): r["final_test_accuracy"] for r in rows if r["attack"] == "none"}
    for r in rows:
        r["change_vs_no_attack"] = round(r["final_test_accuracy"] - clean[r["share"], r["rule"]], 4)
    write(out, rows)
    return 0


def write(out: Path, rows: list[dict]) -> None:
    with (out / "attack_study.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Byzantine clients against aggregation rules", "",
             "Final test accuracy after the study's rounds; in brackets the change against the same rule with no attacker.", ""]
    for share in SHARES:
        lines += [f"## {share} clients attacking", "", "| attack | " + " | ".join(RULES) + " |",
                  "|---|" + "---:|" * len(RULES)]
        for attack in ATTACKS:
            cells = [next(f"{r['final_test_accuracy']:.2%} ({100 * r['change_vs_no_attack']:+.2f})" for r in rows
                          if (r["share"], r["attack"], r["rule"]) == (share, attack, rule)) for rule in RULES]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append("")
    (out / "attack_study.md").write_text("\n".join(lines))
    plot(out, rows)
    print("\n".join(lines))


def plot(out: Path, rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, len(SHARES), figsize=(6 * len(SHARES), 4), sharey=True)
    for ax, share in zip(axes, SHARES):
        grid = np.array([[next(r["final_test_accuracy"] for r in rows if (r["share"], r["attack"], r["rule"]) == (share, a, k))
                          for k in RULES] for a in ATTACKS])
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn")
        ax.set_xticks(range(len(RULES)), list(RULES))
        ax.set_yticks(range(len(ATTACKS)), ATTACKS)
        ax.set_title(f"{share} attacking: final test accuracy")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.1%}", ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "attack_study.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
