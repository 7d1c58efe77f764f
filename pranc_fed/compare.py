"""`pranc-fed compare`: every method of methods.compare (pranc once per K of methods.compare_num_coeffs)
run as a Flower simulation on one config, so all share partitions, model, rounds, client sampling and
seeds; then one table of accuracy against cumulative bytes.

    DIR/<method>-<setting>/      one simulation each (rounds.csv, summary.json, ...); a folder that
                                 already holds summary.json of the same config is not run again
    DIR/comparison.csv           one row per run per round (columns CSV_FIELDS)
    DIR/comparison.md            per run: final accuracy, total MB, MB to the target accuracy,
                                 bytes per client per round up and down; computed from comparison.csv
    DIR/accuracy_vs_bytes.png    test accuracy against cumulative MB (log x), one line per run

MB = 10^6 bytes, counted from the messages as Flower serialises them (both directions).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, ExperimentConfig, config_to_dict, load_config
from .methods import get_method

CSV_FIELDS = ["method", "setting", "round", "cum_up_bytes", "cum_down_bytes", "cum_bytes", "test_accuracy",
              "clients", "received"]
MB = 1e6


@dataclass
class Run:
    method: str
    setting: str
    overrides: list[str]  # the user's overrides plus this run's method settings
    cfg: ExperimentConfig

    @property
    def label(self) -> str:
        return f"{self.method}-{self.setting}"


def plan(config_path: str | Path, overrides: list[str]) -> list[Run]:
    """The runs of a comparison, in methods.compare order (pranc once per K)."""
    cfg = load_config(config_path, overrides)
    runs = []
    for name in dict.fromkeys(cfg.methods.compare):
        variants = [[f"pranc.num_coeffs={k}"] for k in dict.fromkeys(cfg.methods.compare_num_coeffs)] \
            if name == "pranc" else [[]]
        for extra in variants:
            run_overrides = [*overrides, f"federation.method={name}", *extra]
            run_cfg = load_config(config_path, run_overrides)
            runs.append(Run(name, get_method(run_cfg).setting(), run_overrides, run_cfg))
    if not runs:
        raise ConfigError("methods.compare is empty: list at least one method")
    return runs


# Keys that do not change what a run does: where it writes, and what the comparison lists and reports.
NOT_RUN_SETTINGS = ("out_dir", "methods.compare", "methods.compare_num_coeffs", "methods.target_accuracy")


def _run_settings(cfg: ExperimentConfig | dict) -> dict:
    d = json.loads(json.dumps(cfg if isinstance(cfg, dict) else config_to_dict(cfg)))
    for key in NOT_RUN_SETTINGS:
        *path, leaf = key.split(".")
        node = d
        for part in path:
            node = node.get(part, {})
        node.pop(leaf, None)
    return d


def is_done(run: Run, folder: Path) -> bool:
    """True when folder holds a finished run of exactly this config; a finished run of another config
    is an error (resuming into it would mix two experiments)."""
    if not (folder / "summary.json").exists():
        return False
    saved = json.loads((folder / "config.json").read_text())
    if _run_settings(saved) != _run_settings(run.cfg):
        raise ConfigError(f"{folder} holds a finished run of a different config; "
                          f"use another --out or delete that folder")
    return True


def compare(config_path: str | Path, overrides: list[str], out: Path,
            simulate: Callable[..., bool] | None = None, log=print) -> bool:
    """Run (or resume) the comparison into out and write the three reports; True when every run completed."""
    if simulate is None:
        from .runner import simulate
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(config_path, overrides)
    failed = []
    for i, run in enumerate(runs, 1):
        folder = out / run.label
        if is_done(run, folder):
            log(f"[compare] {i}/{len(runs)} {run.label}: finished earlier, kept")
            continue
        log(f"[compare] {i}/{len(runs)} {run.label}: running into {folder}")
        if not simulate(config_path, run.overrides, run.cfg, folder) or not (folder / "summary.json").exists():
            log(f"[compare] {run.label}: run failed; see {folder / 'logs'}")
            failed.append(run.label)
    rows = collect(runs, out)
    write_csv(rows, out / "comparison.csv")
    report(out, runs[0].cfg.methods.target_accuracy, missing=failed)
    log(f"[compare] wrote {out / 'comparison.csv'}, {out / 'comparison.md'}, {out / 'accuracy_vs_bytes.png'}")
    return not failed


def collect(runs: list[Run], out: Path) -> list[dict]:
    """comparison.csv's rows from each finished run's rounds.csv."""
    rows = []
    for run in runs:
        path = out / run.label / "rounds.csv"
        if not (out / run.label / "summary.json").exists():
            continue
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                rows.append({"method": run.method, "setting": run.setting, "round": int(r["round"]),
                             "cum_up_bytes": int(r["cum_up_bytes"]), "cum_down_bytes": int(r["cum_down_bytes"]),
                             "cum_bytes": int(r["cum_bytes"]), "test_accuracy": float(r["test_accuracy"]),
                             "clients": int(r["clients"]), "received": int(r["received"])})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{**r, "round": int(r["round"]), "cum_up_bytes": int(r["cum_up_bytes"]),
                 "cum_down_bytes": int(r["cum_down_bytes"]), "cum_bytes": int(r["cum_bytes"]),
                 "test_accuracy": float(r["test_accuracy"]), "clients": int(r["clients"]),
                 "received": int(r["received"])} for r in csv.DictReader(f)]


def summarize(rows: list[dict], target: float) -> list[dict]:
    """Per run (in order of first appearance): the numbers comparison.md reports."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    out = []
    for (method, setting), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["round"])
        last = rs[-1]
        reached = next((r for r in rs if r["test_accuracy"] >= target), None)
        received, sampled = sum(r["received"] for r in rs), sum(r["clients"] for r in rs)
        out.append({
            "method": method, "setting": setting, "rounds": len(rs),
            "final_accuracy": last["test_accuracy"], "best_accuracy": max(r["test_accuracy"] for r in rs),
            "total_mb": last["cum_bytes"] / MB,
            "mb_to_target": reached["cum_bytes"] / MB if reached else None,
            "round_to_target": reached["round"] if reached else None,
            "up_bytes_per_client_round": last["cum_up_bytes"] / received if received else None,
            "down_bytes_per_client_round": last["cum_down_bytes"] / sampled if sampled else None,
        })
    return out


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def report(out: Path, target: float, missing: list[str] = ()) -> None:
    """comparison.md and accuracy_vs_bytes.png, both from out/comparison.csv."""
    rows = read_csv(out / "comparison.csv")
    stats = summarize(rows, target)
    lines = [
        "# Communication cost comparison", "",
        f"Target test accuracy: {target:.2%}. MB = 10^6 bytes as Flower serialises the messages; up = client "
        "replies, down = server broadcasts; per-client figures are averages over all rounds "
        "(up per reply received, down per client sampled). Computed from comparison.csv.", "",
        "| method | setting | rounds | final acc | best acc | total MB | MB to target | round to target "
        "| up B/client/round | down B/client/round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stats:
        lines.append(
            f"| {s['method']} | {s['setting']} | {s['rounds']} | {s['final_accuracy']:.4f} | {s['best_accuracy']:.4f} "
            f"| {s['total_mb']:.3f} | {_fmt(s['mb_to_target'], '.3f', 'not reached')} "
            f"| {_fmt(s['round_to_target'], 'd', 'not reached')} | {_fmt(s['up_bytes_per_client_round'], ',.0f')} "
            f"| {_fmt(s['down_bytes_per_client_round'], ',.0f')} |")
    if missing:
        lines += ["", f"Runs that did not complete (not in the table): {', '.join(missing)}."]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    plot(rows, target, out / "accuracy_vs_bytes.png")


def plot(rows: list[dict], target: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['method']}-{r['setting']}", []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["round"])
        ax.plot([r["cum_bytes"] / MB for r in rs], [r["test_accuracy"] for r in rs], marker="o", markersize=3,
                label=label)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative MB on the wire (up + down, log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
