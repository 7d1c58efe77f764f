"""dp.csv from the runs of command.sh: one row per method and privacy setting."""
import csv
import json
import sys
from pathlib import Path

runs = Path(sys.argv[1])
writer = csv.writer(sys.stdout)
writer.writerow(["method", "target_epsilon", "epsilon_spent", "noise_multiplier", "clipping_norm", "rounds",
                 "accuracy_per_round", "final_test_accuracy", "total_bytes", "wall_seconds"])
for method in ("pranc", "fedavg"):
    for eps in ("none", "1", "4", "8"):
        folder = runs / f"{method}-eps{eps}"
        if not (folder / "summary.json").is_file():
            continue  # not run (or not finished)
        summary = json.loads((folder / "summary.json").read_text())
        rows = list(csv.DictReader((folder / "rounds.csv").open()))
        privacy = summary.get("privacy") or {}
        writer.writerow([method, eps, privacy.get("epsilon", ""), privacy.get("noise_multiplier", ""),
                         privacy.get("clipping_norm", ""), summary["rounds"],
                         " ".join(f"{float(r['test_accuracy']):.4f}" for r in rows),
                         f"{summary['final_test_accuracy']:.4f}", summary["total_bytes"], summary["wall_seconds"]])
