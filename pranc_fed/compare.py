"""`pranc-fed compare`: every method of methods.compare (pranc once per K of methods.compare_num_coeffs,
codec pair of methods.compare_codecs and re-seeding period of methods.compare_reseed_periods)
run as a Flower simulation on one config, so all share partitions, model, rounds, client sampling and
seeds; then one table of accuracy against cumulative bytes.

    DIR/<method>-<setting>/      one simulation each (rounds.csv, summary.json, ...); a folder that
                                 already holds summary.json of the same config is not run again
                                 (with methods.seeds: DIR/<method>-<setting>/seed<N>/, one per seed)
    DIR/lr_search/               with methods.lr_search: one short run per method and lr multiplier
    DIR/lr_search.csv            those runs' final accuracies and the lr each method then ran with
    DIR/comparison.csv           one row per run per round (columns CSV_FIELDS)
    DIR/comparison.md            per run: final accuracy, total MB, MB and rounds to each target accuracy,
                                 bytes per client per round up and down, uplink bits per model weight
                                 per round; computed from comparison.csv
    DIR/accuracy_vs_bytes.png    test accuracy against cumulative MB (log x), one line per run
    DIR/seeds.csv                with methods.seeds: one row per run and seed (final and best test accuracy,
                                 total bytes, bytes to each target); comparison.md then adds mean +- 95%
                                 interval (Student t) over the seeds of each setting

MB = 10^6 bytes, counted from the messages as Flower serialises them (both directions).

Learning rates get the same search budget for every method: each multiplier of methods.lr_search
scales the method's own lr (train.lr, or pranc.alpha_lr for pranc) for a run of
methods.lr_search_rounds rounds, and the full run uses the one with the best final accuracy on the
server's validation split (data.server_val_size training examples no client trains on; ties go to
the earlier multiplier). The test set only reports. With methods.seeds the search runs at the first seed
and its lr serves every seed; each seed sets `seed` (partitions, init, sampling) and pranc.basis_seed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict, load_config
from .methods import get_method

# comparison.csv's columns and their types: lr and params (the model's weights, from summary.json) per
# run, the rest from each run's rounds.csv. Columns added later read as None from older files.
CSV_TYPES = {"method": str, "setting": str, "seed": int, "lr": float, "round": int, "cum_up_bytes": int, "cum_down_bytes": int,
             "cum_bytes": int, "test_accuracy": float, "clients": int, "received": int, "val_accuracy": float,
             "params": int}
CSV_FIELDS = list(CSV_TYPES)
MB = 1e6


@dataclass
class Run:
    method: str
    setting: str
    overrides: list[str]  # the user's overrides plus this run's method settings
    cfg: ExperimentConfig
    lr_key: str  # config key of the learning rate the method trains with
    seed: int | None = None  # one of methods.seeds; None: the config's seed, in DIR/<label> as before seeds existed

    @property
    def label(self) -> str:
        return f"{self.method}-{self.setting}"

    @property
    def lr(self) -> float:
        section, key = self.lr_key.split(".")
        return getattr(getattr(self.cfg, section), key)

    def with_overrides(self, config_path: str | Path, *extra: str) -> Run:
        overrides = [*self.overrides, *extra]
        return Run(self.method, self.setting, overrides, load_config(config_path, overrides), self.lr_key, self.seed)

    def with_seed(self, config_path: str | Path, seed: int | None) -> Run:
        if seed is None:
            return self
        seeded = self.with_overrides(config_path, *seed_overrides(seed))
        seeded.seed = seed
        return seeded

    def folder(self, out: Path) -> Path:
        return out / self.label if self.seed is None else out / self.label / f"seed{self.seed}"


def seed_overrides(seed: int) -> list[str]:
    return [f"seed={seed}", f"pranc.basis_seed={seed}"]


def plan(config_path: str | Path, overrides: list[str]) -> list[Run]:
    """The runs of a comparison, in methods.compare order (pranc once per K)."""
    cfg = load_config(config_path, overrides)
    if cfg.methods.seeds:  # the lr search runs at the first seed
        overrides = [*overrides, *seed_overrides(cfg.methods.seeds[0])]
    runs = []
    for name in dict.fromkeys(cfg.methods.compare):
        m = cfg.methods
        variants = [[f"pranc.num_coeffs={k}", *_codec_overrides(codecs), f"pranc.reseed_period={period}"]
                    for period in dict.fromkeys(m.compare_reseed_periods)
                    for k in dict.fromkeys(m.compare_num_coeffs)
                    for codecs in dict.fromkeys(m.compare_codecs)] if name == "pranc" else [[]]
        for extra in variants:
            run_overrides = [*overrides, f"federation.method={name}", *extra]
            run_cfg = load_config(config_path, run_overrides)
            method = get_method(run_cfg)
            runs.append(Run(name, method.setting(), run_overrides, run_cfg, method.lr_key))
    if not runs:
        raise ConfigError("methods.compare is empty: list at least one method")
    if cfg.methods.lr_search != [1.0] and cfg.data.server_val_size == 0:
        raise ConfigError("methods.lr_search scores on the server's validation split, which is empty: "
                          "set data.server_val_size (e.g. 5000)")
    return runs


def _codec_overrides(codecs: str) -> list[str]:
    """methods.compare_codecs entry ("int4", or uplink/downlink "int4/int8") -> pranc overrides."""
    up, _, down = codecs.partition("/")
    return [f"pranc.uplink_codec={up}", f"pranc.downlink_codec={down or up}"]


# Keys that do not change what a run does: where it writes, what the comparison lists and reports, and how
# the basis is held (cached or regenerated chunk by chunk: the same basis values either way).
NOT_RUN_SETTINGS = ("out_dir", "methods.compare", "methods.compare_num_coeffs", "methods.compare_codecs",
                    "methods.compare_reseed_periods",
                    "methods.target_accuracy",
                    "methods.lr_search", "methods.lr_search_rounds", "methods.seeds", "logging",
                    "pranc.basis_budget_mb", "pranc.cache", "pranc.max_basis_gb")


def _run_settings(cfg: ExperimentConfig) -> dict:
    d = json.loads(json.dumps(config_to_dict(cfg)))
    if cfg.federation.method != "pranc":
        d.pop("pranc")  # the basis and codec keys mean nothing to the other methods
    for key in NOT_RUN_SETTINGS:
        *path, leaf = key.split(".")
        node = d
        for part in path:
            node = node.get(part, {})
        node.pop(leaf, None)
    return d


def is_done(run: Run, folder: Path) -> bool:
    """True when folder holds a finished run of exactly this config; a finished run of another config
    is an error (resuming into it would mix two experiments). A failed run is not finished."""
    if not (folder / "summary.json").exists() or "failure" in json.loads((folder / "summary.json").read_text()):
        return False
    # Through the dataclasses, so a key added since that run compares as its default.
    saved = config_from_dict(json.loads((folder / "config.json").read_text()))
    if _run_settings(saved) != _run_settings(run.cfg):
        raise ConfigError(f"{folder} holds a finished run of a different config; "
                          f"use another --out or delete that folder")
    return True


def compare(config_path: str | Path, overrides: list[str], out: Path,
            simulate: Callable[..., bool] | None = None, log=print, planned: list[Run] | None = None) -> bool:
    """Run (or resume) the comparison into out and write the three reports; True when every run completed.
    planned: plan(config_path, overrides), when the caller has made it already."""
    if simulate is None:
        from .runner import simulate
    out.mkdir(parents=True, exist_ok=True)
    if planned is None:
        planned = plan(config_path, overrides)
    runs, failed, trials = [], [], []
    seeds = planned[0].cfg.methods.seeds or [None]
    for i, run in enumerate(planned, 1):
        step = f"{i}/{len(planned)} {run.label}"
        tuned, tried = search_lr(config_path, run, out, simulate, lambda m: log(f"[compare] {step} {m}"))
        trials += tried
        for seed in seeds:
            seeded = tuned and tuned.with_seed(config_path, seed)
            name = step if seed is None else f"{step} seed {seed}"
            if seeded and execute(config_path, seeded, seeded.folder(out), simulate,
                                  lambda m: log(f"[compare] {name}: {m}")):
                runs.append(seeded)
            else:
                failed.append(run.label if seed is None else f"{run.label} (seed {seed})")
    if trials:
        write_csv(trials, out / "lr_search.csv", LR_SEARCH_FIELDS)
    else:  # a search table left by an earlier comparison in this folder would misdescribe this one
        (out / "lr_search.csv").unlink(missing_ok=True)
    write_csv(collect(runs, out), out / "comparison.csv")
    report(out, planned[0].cfg.methods.target_accuracy, missing=failed)
    log(f"[compare] wrote {out / 'comparison.csv'}, {out / 'comparison.md'}, {out / 'accuracy_vs_bytes.png'}")
    return not failed


def execute(config_path: str | Path, run: Run, folder: Path, simulate: Callable[..., bool], log) -> bool:
    """Run into folder unless it already holds this exact run; True when it has finished."""
    if is_done(run, folder):
        log("finished earlier, kept")
        return True
    from .server_app import check_resume  # a run killed halfway continues from its last round
    resume = check_resume(run.cfg, folder)
    log(f"resuming {folder}" if resume else f"running into {folder}")
    overrides = [*run.overrides, "federation.resume=true"] if resume else run.overrides
    if not simulate(config_path, overrides, run.cfg, folder) or not (folder / "summary.json").exists():
        log(f"run failed; see {folder / 'logs'}")
        return False
    return True


LR_SEARCH_FIELDS = ["method", "setting", "multiplier", "lr", "rounds", "scored_on", "final_accuracy", "chosen"]


def search_lr(config_path: str | Path, run: Run, out: Path, simulate: Callable[..., bool],
              log) -> tuple[Run | None, list[dict]]:
    """run at its best lr of methods.lr_search (see the module docstring) and the lr_search.csv rows;
    None when every search run failed. Without a search (lr_search == [1.0]), run itself."""
    search = run.cfg.methods
    if search.lr_search == [1.0]:
        return run, []
    rows = []
    for multiplier in dict.fromkeys(search.lr_search):
        lr = float(f"{run.lr * multiplier:.6g}")
        trial = run.with_overrides(config_path, f"{run.lr_key}={lr!r}",
                                   f"federation.rounds={search.lr_search_rounds}")
        folder = out / "lr_search" / f"{run.label}-lr{lr:g}"
        if not execute(config_path, trial, folder, simulate, lambda m: log(f"lr {lr:g}: {m}")):
            continue
        accuracy = json.loads((folder / "summary.json").read_text())["final_val_accuracy"]
        rows.append({"method": run.method, "setting": run.setting, "multiplier": multiplier, "lr": lr,
                     "rounds": search.lr_search_rounds, "scored_on": "validation", "final_accuracy": accuracy,
                     "chosen": False})
    if not rows:
        return None, []
    best = max(rows, key=lambda r: r["final_accuracy"])  # max keeps the first of equals
    best["chosen"] = True
    log(f"lr {best['lr']:g} chosen (validation accuracy {best['final_accuracy']:.4f} after {best['rounds']} rounds)")
    return run.with_overrides(config_path, f"{run.lr_key}={best['lr']!r}"), rows


def collect(runs: list[Run], out: Path) -> list[dict]:
    """comparison.csv's rows from each finished run's rounds.csv."""
    rows = []
    for run in runs:
        params = json.loads((run.folder(out) / "summary.json").read_text())["param_count"]
        with (run.folder(out) / "rounds.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                rows.append(_typed(r | {"method": run.method, "setting": run.setting, "seed": run.seed, "lr": run.lr,
                                        "params": params}))
    return rows


def _typed(row: dict) -> dict:
    return {key: None if row.get(key) in (None, "") else cast(row[key]) for key, cast in CSV_TYPES.items()}


def write_csv(rows: list[dict], path: Path, fields: list[str] = CSV_FIELDS) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [_typed(r) for r in csv.DictReader(f)]


def summarize(rows: list[dict], targets: list[float]) -> list[dict]:
    """Per run (in order of first appearance): the numbers comparison.md reports; "to_target" holds
    (MB, round) per target, None where the run never reached it."""
    groups: dict[tuple[str, str, int | None], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"], r["seed"]), []).append(r)
    out = []
    for (method, setting, seed), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["round"])
        last, trained = rs[-1], [r for r in rs if r["round"] > 0]  # round 0 is the initial model
        to_target = {}
        for target in targets:
            reached = next((r for r in rs if r["test_accuracy"] >= target), None)
            to_target[target] = (reached["cum_bytes"] / MB, reached["round"]) if reached else None
        received, sampled = sum(r["received"] for r in rs), sum(r["clients"] for r in rs)
        up = last["cum_up_bytes"] / received if received else None
        out.append({
            "method": method, "setting": setting, "seed": seed, "lr": last["lr"], "rounds": len(trained),
            "final_accuracy": last["test_accuracy"], "best_accuracy": max(r["test_accuracy"] for r in trained or rs),
            "total_mb": last["cum_bytes"] / MB, "to_target": to_target,
            "up_bytes_per_client_round": up,
            "down_bytes_per_client_round": last["cum_down_bytes"] / sampled if sampled else None,
            "up_bits_per_weight": 8 * up / last["params"] if up is not None and last["params"] else None,
        })
    return out


# Student t quantiles t(0.975, df) for df = 1..30 (beyond, the normal 1.96): a 95% interval of a mean of few seeds.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of its 95% Student t interval); None for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    return mean, (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / n ** 0.5


def write_seeds_csv(stats: list[dict], targets: list[float], path: Path) -> None:
    """seeds.csv: one row per run and seed, from summarize()'s stats."""
    rows = [{"method": s["method"], "setting": s["setting"], "seed": s["seed"], "lr": s["lr"],
             "final_test_accuracy": s["final_accuracy"], "best_test_accuracy": s["best_accuracy"],
             "total_bytes": round(s["total_mb"] * MB)}
            | {f"bytes_to_{t:g}": None if r is None else round(r[0] * MB) for t, r in s["to_target"].items()}
            for s in stats]
    write_csv(rows, path, list(rows[0]))


def seeds_table(stats: list[dict], targets: list[float]) -> list[str]:
    """comparison.md's lines of mean +- 95% interval over the seeds of each (method, setting)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in stats:
        groups.setdefault((s["method"], s["setting"]), []).append(s)

    def cell(values: list[float], spec: str) -> str:
        mean, half = mean_interval(values)
        return format(mean, spec) + ("" if half is None else f" ± {format(half, spec)}")

    pct = [f"{t:.2%}" for t in targets]
    lines = ["", "## Over seeds", "",
             "Mean ± half-width of the 95% Student t interval over the seeds of each setting (seeds.csv). "
             "MB to a target: over the seeds that reached it, with how many did.", "",
             "| method | setting | seeds | final acc | best acc | total MB " + "".join(f"| MB to {p} " for p in pct) + "|",
             "|---|---|---|---:|---:|---:" + "|---:" * len(targets) + "|"]
    for (method, setting), ss in groups.items():
        reached = ""
        for t in targets:
            hits = [s["to_target"][t][0] for s in ss if s["to_target"][t] is not None]
            reached += f"| {cell(hits, '.3f') if hits else 'not reached'} ({len(hits)}/{len(ss)}) "
        lines.append(f"| {method} | {setting} | {' '.join(str(s['seed']) for s in ss)} "
                     f"| {cell([s['final_accuracy'] for s in ss], '.4f')} | {cell([s['best_accuracy'] for s in ss], '.4f')} "
                     f"| {cell([s['total_mb'] for s in ss], '.3f')} {reached}|")
    return lines


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def report(out: Path, targets: list[float], missing: list[str] = ()) -> None:
    """comparison.md and accuracy_vs_bytes.png, both from out/comparison.csv."""
    rows = read_csv(out / "comparison.csv")
    stats = summarize(rows, targets)
    pct = [f"{t:.2%}" for t in targets]
    seeded = any(s["seed"] is not None for s in stats)
    lines = [
        "# Communication cost comparison", "",
        f"Target test accuracies: {', '.join(pct)}. MB = 10^6 bytes as Flower serialises the messages; up = client "
        "replies, down = server broadcasts; per-client figures are averages over all rounds "
        "(up per reply received, down per client sampled); up bits/weight = uplink bits per model weight per "
        "round, the whole serialised reply counted. Computed from comparison.csv.", "",
        "| method | setting " + "| seed " * seeded + "| lr | rounds | final acc | best acc | total MB "
        + "".join(f"| MB to {p} | round to {p} " for p in pct)
        + "| up B/client/round | down B/client/round | up bits/weight |",
        "|---|---" + "|---:" * seeded + "|---:|---:|---:|---:|---:" + "|---:|---:" * len(targets) + "|---:|---:|---:|",
    ]
    for s in stats:
        reached = "".join(f"| {_fmt(r and r[0], '.3f', 'not reached')} | {_fmt(r and r[1], 'd', 'not reached')} "
                          for r in s["to_target"].values())
        lines.append(
            f"| {s['method']} | {s['setting']} " + f"| {s['seed']} " * seeded + f"| {s['lr']:g} | {s['rounds']} | {s['final_accuracy']:.4f} "
            f"| {s['best_accuracy']:.4f} | {s['total_mb']:.3f} {reached}| {_fmt(s['up_bytes_per_client_round'], ',.0f')} "
            f"| {_fmt(s['down_bytes_per_client_round'], ',.0f')} | {_fmt(s['up_bits_per_weight'], '.3f')} |")
    if missing:
        lines += ["", f"Runs that did not complete (not in the table): {', '.join(missing)}."]
    if seeded:
        write_seeds_csv(stats, targets, out / "seeds.csv")
        lines += seeds_table(stats, targets)
    if (out / "lr_search.csv").exists():
        lines += ["", "## Learning-rate search", "",
                  "Each method's lr was scaled by every multiplier below for a short run; its full run above uses "
                  "the lr of the best final accuracy on the split named in `scored on` (chosen). From lr_search.csv.",
                  "", "| method | setting | multiplier | lr | rounds | scored on | final acc | chosen |",
                  "|---|---|---:|---:|---:|---|---:|---|"]
        with (out / "lr_search.csv").open(newline="") as f:
            for t in csv.DictReader(f):
                lines.append(f"| {t['method']} | {t['setting']} | {float(t['multiplier']):g} | {float(t['lr']):g} "
                             f"| {t['rounds']} | {t['scored_on']} | {float(t['final_accuracy']):.4f} "
                             f"| {'yes' if t['chosen'] == 'True' else ''} |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    plot(rows, targets, out / "accuracy_vs_bytes.png")


def plot(rows: list[dict], targets: list[float], path: Path, by_round: bool = False) -> None:
    """Test accuracy against cumulative MB (log x), one line per run; by_round adds a panel against rounds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["test_accuracy"] is not None:
            name = f"{r['method']}-{r['setting']}" if r["setting"] else r["method"]
            groups.setdefault(name if r["seed"] is None else f"{name} seed {r['seed']}", []).append(r)
    fig, axes = plt.subplots(1, 2 if by_round else 1, figsize=(14 if by_round else 8, 5), squeeze=False)
    for ax, x, label in [(axes[0][-1], lambda r: r["cum_bytes"] / MB, "cumulative MB on the wire (up + down, log scale)"),
                         *([(axes[0][0], lambda r: r["round"], "round")] if by_round else [])]:
        for name, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["round"])
            ax.plot([x(r) for r in rs], [r["test_accuracy"] for r in rs], marker="o", markersize=3, label=name)
        for target in targets:
            ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][-1].set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rows_of_folders(folders: list[Path]) -> list[dict]:
    """Rows to plot from folders that `simulate` or `deploy` wrote (rounds.csv,
    labelled by folder name) or that `compare` wrote (comparison.csv, labelled by method and setting)."""
    rows = []
    for folder in folders:
        if (folder / "comparison.csv").is_file():  # two comparisons hold runs of the same names
            prefix = f"{folder.resolve().name}: " if len(folders) > 1 else ""
            rows += [r | {"method": prefix + r["method"]} for r in read_csv(folder / "comparison.csv")]
        elif (folder / "rounds.csv").is_file():
            with (folder / "rounds.csv").open(newline="") as f:
                rows += [_typed(r | {"method": folder.resolve().name, "setting": ""}) for r in csv.DictReader(f)]
        else:
            raise FileNotFoundError(f"{folder}: no rounds.csv or comparison.csv; give the folders that "
                                    f"`pranc-fed simulate`, `deploy` or `compare` wrote")
    return rows
