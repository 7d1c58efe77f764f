"""`pranc-fed compare`: the reports from hand-made rows (fast), and one tiny real comparison
(three Flower simulations of 2 rounds on a 600-image MNIST subset, ~2-6 minutes on 2 CPUs)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from pranc_fed import cli
from pranc_fed.compare import (CSV_FIELDS, compare, is_done, plan, read_csv, report, rows_of_folders, summarize,
                               write_csv)
from pranc_fed.config import ConfigError, config_to_dict

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_lenet.yaml"
TINY = ["data.train_subset=600", "data.test_subset=200", "federation.num_clients=2", "federation.rounds=2",
        "federation.min_train_clients=2", "methods.compare=[pranc, fedavg, topk]", "methods.compare_num_coeffs=[50]",
        "methods.target_accuracy=[0.2]"]


def _row(method, setting, rnd, up, down, acc, clients=2):
    return {"method": method, "setting": setting, "lr": 0.001, "round": rnd, "cum_up_bytes": up, "cum_down_bytes": down,
            "cum_bytes": up + down, "test_accuracy": acc, "clients": clients, "received": clients,
            "val_accuracy": acc, "params": 40_000}


def test_plan_runs_pranc_once_per_k_with_identical_settings() -> None:
    runs = plan(CONFIG, ["methods.compare=[pranc, fedavg, qsgd]", "methods.compare_num_coeffs=[100, 200]"])
    assert [r.label for r in runs] == ["pranc-K100", "pranc-K200", "fedavg-fp32", "qsgd-s16"]
    base = config_to_dict(runs[0].cfg)
    for r in runs:
        d = config_to_dict(r.cfg)
        assert d["federation"]["method"] == r.method
        for section in ("data", "model", "train"):
            assert d[section] == base[section]
        assert d["seed"] == base["seed"] and d["federation"]["rounds"] == base["federation"]["rounds"]


def test_report_numbers_come_from_the_csv(tmp_path: Path) -> None:
    rows = [_row("fedavg", "fp32", 1, 100_000, 100_000, 0.5), _row("fedavg", "fp32", 2, 200_000, 200_000, 0.8),
            _row("pranc", "K50", 1, 400, 400, 0.3), _row("pranc", "K50", 2, 800, 800, 0.4)]
    write_csv(rows, tmp_path / "comparison.csv")
    report(tmp_path, targets=[0.7, 0.35])
    stats = {s["method"]: s for s in summarize(read_csv(tmp_path / "comparison.csv"), [0.7, 0.35])}
    assert stats["fedavg"]["to_target"][0.7] == (pytest.approx(0.4), 2)
    assert stats["fedavg"]["to_target"][0.35] == (pytest.approx(0.2), 1)
    assert stats["fedavg"]["up_bytes_per_client_round"] == 50_000
    assert stats["fedavg"]["up_bits_per_weight"] == pytest.approx(10.0)  # 50,000 B x 8 / 40,000 weights
    assert stats["pranc"]["to_target"][0.7] is None and stats["pranc"]["total_mb"] == pytest.approx(0.0016)
    assert stats["pranc"]["to_target"][0.35] == (pytest.approx(0.0016), 2)
    md = (tmp_path / "comparison.md").read_text()
    assert "| fedavg | fp32 | 0.001 | 2 | 0.8000 | 0.8000 | 0.400 | 0.400 | 2 | 0.200 | 1 | 50,000 | 50,000 | 10.000 |" in md
    assert ("| pranc | K50 | 0.001 | 2 | 0.4000 | 0.4000 | 0.002 | not reached | not reached | 0.002 | 2 | 200 | 200 "
            "| 0.040 |") in md
    assert (tmp_path / "accuracy_vs_bytes.png").stat().st_size > 1000


def test_plan_runs_pranc_once_per_k_codec_pair_and_period() -> None:
    runs = plan(CONFIG, ["methods.compare=[pranc]", "methods.compare_num_coeffs=[100, 200]",
                         "methods.compare_codecs=[float32, int4/int8]", "methods.compare_reseed_periods=[0, 2]"])
    assert [r.label for r in runs] == ["pranc-K100", "pranc-K100-int4-int8", "pranc-K200", "pranc-K200-int4-int8",
                                       "pranc-K100-P2", "pranc-K100-int4-int8-P2", "pranc-K200-P2",
                                       "pranc-K200-int4-int8-P2"]
    assert (runs[1].cfg.pranc.uplink_codec, runs[1].cfg.pranc.downlink_codec) == ("int4", "int8")
    with pytest.raises(ConfigError, match="compare_codecs"):
        plan(CONFIG, ["methods.compare_codecs=[int3]"])


def test_resuming_into_a_folder_of_another_config_is_refused(tmp_path: Path) -> None:
    run = plan(CONFIG, TINY)[0]
    folder = tmp_path / run.label
    folder.mkdir()
    other = config_to_dict(run.cfg) | {"seed": 123}
    (folder / "config.json").write_text(json.dumps(other))
    (folder / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="different config"):
        compare(CONFIG, TINY, tmp_path, simulate=lambda *a: pytest.fail("must not run"))


def test_tiny_comparison_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", str(CONFIG), "--out", str(out)] + [a for o in TINY for a in ("--set", o)]
    assert cli.main(args) == 0
    for name in ("comparison.csv", "comparison.md", "accuracy_vs_bytes.png"):
        assert (out / name).stat().st_size > 0, name
    with (out / "comparison.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_FIELDS
        rows = list(reader)
    labels = [(r["method"], r["setting"], int(r["round"])) for r in rows]
    assert sorted(labels) == sorted((m, s, rnd) for m, s in [("pranc", "K50"), ("fedavg", "fp32"),
                                                              ("topk", "d0.01-ef")] for rnd in (0, 1, 2))
    by = {(r["method"], int(r["round"])): r for r in rows}
    # same broadcast for the dense methods; topk's reply is far smaller than fedavg's; pranc's tiny
    assert int(by["topk", 1]["cum_down_bytes"]) == pytest.approx(int(by["fedavg", 1]["cum_down_bytes"]), rel=1e-3)
    assert int(by["topk", 1]["cum_up_bytes"]) < int(by["fedavg", 1]["cum_up_bytes"]) / 20
    assert int(by["pranc", 2]["cum_bytes"]) < int(by["fedavg", 2]["cum_bytes"]) / 100
    # comparison.md's final accuracies and totals are those of the CSV's last rounds
    md = (out / "comparison.md").read_text()
    for (method, rnd), r in by.items():
        if rnd == 2:
            line = next(line for line in md.splitlines() if line.startswith(f"| {method} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert float(cells[4]) == pytest.approx(float(r["test_accuracy"]), abs=1e-4)
            assert float(cells[6]) == pytest.approx(int(r["cum_bytes"]) / 1e6, abs=1e-3)
    assert re.search(r"Target test accuracies: 20\.00%", md)
    # resuming runs nothing again
    assert compare(CONFIG, TINY, out, simulate=lambda *a: pytest.fail("finished run was run again"), log=lambda m: 0)
    assert read_csv(out / "comparison.csv") == [dict(r, seed=None, lr=float(r["lr"]), round=int(r["round"]), cum_up_bytes=int(r["cum_up_bytes"]),
                                                     cum_down_bytes=int(r["cum_down_bytes"]),
                                                     cum_bytes=int(r["cum_bytes"]),
                                                     test_accuracy=float(r["test_accuracy"]),
                                                     clients=int(r["clients"]), received=int(r["received"]),
                                                     val_accuracy=None, params=44_426)
                                                for r in rows]


def test_a_finished_run_is_kept_when_only_the_comparison_list_changes(tmp_path: Path) -> None:
    run = plan(CONFIG, TINY)[0]
    folder = tmp_path / run.label
    folder.mkdir()
    saved = config_to_dict(run.cfg)
    saved["out_dir"] = "/elsewhere"
    saved["methods"] |= {"compare": ["pranc"], "compare_num_coeffs": [50, 70], "target_accuracy": [0.5]}
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "summary.json").write_text("{}")
    assert is_done(run, folder)
    # a run saved before a config key existed compares as that key's default
    del saved["methods"]["downlink_dtype"]
    (folder / "config.json").write_text(json.dumps(saved))
    assert is_done(run, folder)


def _fake_simulate(accuracy_of_lr):
    """A stand-in for the Flower run that writes what a finished run leaves, with a validation accuracy
    that depends only on the run's learning rate (and a test accuracy that would pick the opposite);
    records every run it was asked for."""
    calls = []

    def simulate(config_path, overrides, cfg, folder):
        lr = cfg.pranc.alpha_lr if cfg.federation.method == "pranc" else cfg.train.lr
        calls.append((cfg.federation.method, lr, cfg.federation.rounds, folder.name))
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config_to_dict(cfg)))
        acc = accuracy_of_lr(cfg.federation.method, lr)
        with (folder / "rounds.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, ["round", "clients", "received", "cum_up_bytes", "cum_down_bytes", "cum_bytes",
                                   "val_accuracy", "test_accuracy"])
            w.writeheader()
            for rnd in range(1, cfg.federation.rounds + 1):
                w.writerow({"round": rnd, "clients": 2, "received": 2, "cum_up_bytes": rnd, "cum_down_bytes": rnd,
                            "cum_bytes": 2 * rnd, "val_accuracy": acc, "test_accuracy": 1 - acc})
        (folder / "summary.json").write_text(json.dumps({"final_val_accuracy": acc, "final_test_accuracy": 1 - acc,
                                                         "param_count": 44_426}))
        return True

    return simulate, calls


def test_lr_search_gives_every_method_the_same_budget_and_runs_the_best(tmp_path: Path) -> None:
    best = {"pranc": 0.0004, "fedavg": 0.003}  # pranc.alpha_lr 0.002 x 0.2; train.lr 0.001 x 3
    simulate, calls = _fake_simulate(lambda method, lr: 0.9 - abs(lr - best[method]))
    search = [*TINY, "methods.compare=[pranc, fedavg]", "methods.lr_search=[0.2, 1, 3]", "methods.lr_search_rounds=1",
              "data.server_val_size=100"]
    assert compare(CONFIG, search, tmp_path, simulate=simulate, log=lambda m: 0)
    trials = [c for c in calls if c[2] == 1]
    assert sorted((m, lr) for m, lr, *_ in trials) == sorted(
        [("pranc", 0.0004), ("pranc", 0.002), ("pranc", 0.006), ("fedavg", 0.0002), ("fedavg", 0.001),
         ("fedavg", 0.003)])
    full = {m: lr for m, lr, rounds, _ in calls if rounds == 2}
    assert full == best
    rows = read_csv(tmp_path / "comparison.csv")
    assert {(r["method"], r["lr"]) for r in rows} == set(best.items())
    with (tmp_path / "lr_search.csv").open(newline="") as f:
        chosen = {(r["method"], float(r["lr"])) for r in csv.DictReader(f) if r["chosen"] == "True"}
    assert chosen == set(best.items())
    md = (tmp_path / "comparison.md").read_text()
    assert "## Learning-rate search" in md and "| fedavg | fp32 | 3 | 0.003 | 1 | validation | 0.9000 | yes |" in md
    # resuming reruns nothing, neither the search nor the full runs
    calls.clear()
    assert compare(CONFIG, search, tmp_path, simulate=simulate, log=lambda m: 0) and calls == []


def test_a_search_without_a_validation_split_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.server_val_size"):
        plan(CONFIG, [*TINY, "methods.lr_search=[0.5, 1]"])


def test_without_a_search_no_search_table_is_left(tmp_path: Path) -> None:
    (tmp_path / "lr_search.csv").write_text("stale")
    simulate, calls = _fake_simulate(lambda method, lr: 0.5)
    assert compare(CONFIG, [*TINY, "methods.compare=[fedavg]"], tmp_path, simulate=simulate, log=lambda m: 0)
    assert len(calls) == 1 and not (tmp_path / "lr_search.csv").exists()
    assert "Learning-rate search" not in (tmp_path / "comparison.md").read_text()


RESULTS = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "docs" / "results").glob("*/comparison.csv"))


@pytest.mark.parametrize("folder", RESULTS, ids=[p.name for p in RESULTS])
def test_committed_comparison_md_is_what_its_csv_gives(folder: Path, tmp_path: Path) -> None:
    """docs/results/*/comparison.md holds exactly the numbers report() computes from the committed CSVs."""
    for name in ("comparison.csv", "lr_search.csv"):
        if (folder / name).exists():
            (tmp_path / name).write_bytes((folder / name).read_bytes())
    listed = re.search(r"Target test accuracies: ([^.]+\.\d+%(, [\d.]+%)*)", (folder / "comparison.md").read_text())[1]
    report(tmp_path, [float(t.rstrip("%")) / 100 for t in listed.split(", ")])
    assert (tmp_path / "comparison.md").read_text() == (folder / "comparison.md").read_text()
    assert (folder / "command.sh").exists() and (folder / "accuracy_vs_bytes.png").stat().st_size > 1000


def test_plot_draws_run_and_comparison_folders_side_by_side(tmp_path, capsys):
    """`pranc-fed plot` over a comparison folder and a run folder (a recorded run's rounds.csv)."""
    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    run = tmp_path / "fedavg_fp16_run"
    run.mkdir()
    shutil.copy(results / "cifar10_resnet20_gpu" / "rounds_fedavg_fp16-fp16.csv", run / "rounds.csv")
    out = tmp_path / "plots" / "accuracy.png"
    assert cli.main(["plot", str(results / "mnist_lenet_iid_keepopt"), str(run), "--out", str(out), "--target", "0.97"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    labels = {r["method"] for r in rows_of_folders([results / "mnist_lenet_iid_keepopt", run])}
    assert "fedavg_fp16_run" in labels and "mnist_lenet_iid_keepopt: pranc" in labels, labels

    assert cli.main(["plot", str(tmp_path), "--out", str(out)]) == 2
    assert "no rounds.csv or comparison.csv" in capsys.readouterr().err


def test_seeds_run_every_method_once_per_seed_after_one_search(tmp_path: Path) -> None:
    simulate, calls = _fake_simulate(lambda method, lr: 0.5)
    seeded = [*TINY, "methods.compare=[pranc, fedavg]", "methods.lr_search=[1, 3]", "methods.lr_search_rounds=1",
              "data.server_val_size=100", "methods.seeds=[3, 5, 8]"]
    assert compare(CONFIG, seeded, tmp_path, simulate=simulate, log=lambda m: 0)
    assert len([c for c in calls if c[2] == 1]) == 4  # the search: 2 methods x 2 multipliers, at the first seed only
    full = [c for c in calls if c[2] == 2]
    assert len(full) == 6
    for method in ("pranc-K50", "fedavg-fp32"):
        for seed in (3, 5, 8):
            saved = json.loads((tmp_path / method / f"seed{seed}" / "config.json").read_text())
            assert saved["seed"] == seed and saved["pranc"]["basis_seed"] == seed
    with (tmp_path / "seeds.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for m in ("pranc", "fedavg") for s in ("3", "5", "8")]
    assert set(rows[0]) >= {"final_test_accuracy", "best_test_accuracy", "total_bytes", "bytes_to_0.2"}
    md = (tmp_path / "comparison.md").read_text()
    assert "## Over seeds" in md and "| fedavg | fp32 | 3 5 8 | 0.5000 ± 0.0000 |" in md
    calls.clear()  # resumable: nothing runs again
    assert compare(CONFIG, seeded, tmp_path, simulate=simulate, log=lambda m: 0) and calls == []


def test_the_seed_interval_is_students_t() -> None:
    from pranc_fed.compare import mean_interval
    mean, half = mean_interval([0.50, 0.52, 0.54])
    assert mean == pytest.approx(0.52) and half == pytest.approx(4.303 * 0.02 / 3 ** 0.5)
    assert mean_interval([0.7]) == (0.7, None)
