"""runs.csv from the runs of command.sh: per run, bytes and seconds per round with and without secagg.
Bytes per round: the mean over rounds 2 on (round 1's broadcast of a zero alpha is empty and its replies
name their partition); seconds per round: the same rounds' wall time, training and central evaluation
included."""
import csv
import json
import sys
from pathlib import Path

runs = Path(sys.argv[1])
writer = csv.writer(sys.stdout)
writer.writerow(["run", "mode", "method", "clients", "secagg", "values_per_update", "up_bytes_per_round",
                 "down_bytes_per_round", "seconds_per_round", "final_test_accuracy", "clipped_values", "rounds_lost",
                 "rounds_aggregated"])
for folder in sorted(p for p in runs.iterdir() if (p / "summary.json").is_file()):
    summary = json.loads((folder / "summary.json").read_text())
    rows = [r for r in csv.DictReader((folder / "rounds.csv").open()) if int(r["round"]) >= 1]
    later = rows[1:]
    walls = [float(r["wall_seconds"]) for r in rows]
    secure = summary.get("secure_aggregation")
    mode, method, _, enabled = folder.name.split("-")
    values = summary["num_coeffs"] or summary["param_count"]
    writer.writerow([folder.name, mode, method, summary["clients"], enabled, values,
                     round(sum(int(r["up_bytes"]) for r in later) / len(later)),
                     round(sum(int(r["down_bytes"]) for r in later) / len(later)),
                     round((walls[-1] - walls[0]) / len(later), 2), summary["final_test_accuracy"],
                     secure["clipped_values"] if secure else "", secure["rounds_lost"] if secure else "",
                     summary["rounds_aggregated"]])
