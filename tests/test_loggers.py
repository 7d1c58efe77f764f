"""Progress bars (only on a terminal) and the metrics trackers of logging.report_to (loggers.py)."""

import csv
import importlib.util
import io
import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from pranc_fed import loggers
from pranc_fed.centralized import train_centralized
from pranc_fed.config import ConfigError, config_to_dict, load_config
from pranc_fed.runner import simulate
from pranc_fed.server_app import CHECKPOINT, check_resume
from pranc_fed.training import train_steps

TRAIN = ["train.epochs=2", "data.train_subset=256", "data.test_subset=128", "pranc.num_coeffs=50", "train.device=cpu"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tiny_steps(**kwargs) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    train_steps(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), **kwargs)


def test_progress_is_silent_off_a_terminal(capsys):
    tiny_steps()  # stderr, as in Flower's client processes: captured here, so not a terminal
    tiny_steps(bar_file=io.StringIO())
    assert capsys.readouterr() == ("", "")


def test_progress_shows_on_a_terminal():
    terminal = Terminal()
    tiny_steps(desc="epoch 1/2", bar_file=terminal, max_steps=4)
    assert terminal.getvalue().startswith("\repoch 1/2:   0%|          | 0/4 [")
    assert terminal.getvalue().endswith("\r")  # leave=False: the epoch's log line takes the bar's place


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the TensorBoard event files in folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_logged(rows: list[dict], step_key: str) -> dict[str, list[tuple[int, float]]]:
    """What the rows should read as in TensorBoard: one scalar per number column but the step."""
    return {k: [(int(r[step_key]), pytest.approx(float(r[k]), rel=1e-6)) for r in rows if r[k] not in ("", None)]
            for k in rows[0] if k != step_key and any(r[k] not in ("", None) for r in rows)}


def test_train_reports_every_epoch_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = load_config("configs/mnist_lenet.yaml", [*TRAIN, "logging.report_to=[tensorboard]"])
    summary = train_centralized(cfg, tmp_path, log=lambda *_: None)
    assert scalars(tmp_path / "tensorboard") == as_logged(summary["history"], "epoch")


@pytest.fixture(scope="module")
def simulation(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One small simulation reporting to every tracker installed (W&B offline, MLflow in its default
    place under the out dir): its out dir and the rows of its rounds.csv."""
    installed = [name for name in loggers.TRACKERS if importlib.util.find_spec(name)]
    if not installed:
        pytest.skip("no tracker installed (pip install tensorboard wandb mlflow)")
    out = tmp_path_factory.mktemp("simulation")
    overrides = ["federation.rounds=2", "federation.num_clients=2", "pranc.num_coeffs=100", "data.train_subset=600",
                 "data.test_subset=200", "data.server_val_size=100", f"logging.report_to=[{', '.join(installed)}]"]
    with pytest.MonkeyPatch.context() as env:  # Flower's processes inherit this environment
        env.setenv("WANDB_MODE", "offline")
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert simulate("configs/mnist_lenet.yaml", overrides, load_config("configs/mnist_lenet.yaml", overrides), out)
    return out, list(csv.DictReader((out / "rounds.csv").open()))


def test_simulation_reports_the_rows_of_rounds_csv_to_tensorboard(simulation):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    out, rows = simulation
    logged = scalars(out / "tensorboard")
    assert logged == as_logged(rows, "round") and len(logged["test_accuracy"]) == 3 and "val_accuracy" in logged


def wandb_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} of the history in the offline run's .wandb file. wandb ships no
    reader for it: its framing is LevelDB's log format (32 KiB blocks; each piece of a record has a
    7-byte header: crc32c, length, kind, where 1 (whole) and 4 (last) end a record), and each record
    is one of wandb's protobuf Records."""
    from wandb.proto.wandb_internal_pb2 import Record
    [run_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    logged: dict[str, list[tuple[int, float]]] = {}
    position, record = 7, b""  # after the file's header: ":W&B", magic, version
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        record, position = record + data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 4):
            history = Record.FromString(record).history
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in history.item}
            for name, value in items.items():
                if not name.startswith("_"):  # wandb's own: _step, _runtime, _timestamp
                    logged.setdefault(name, []).append((items["_step"], value))
            record = b""
    return logged


def test_simulation_reports_the_rows_of_rounds_csv_to_wandb(simulation):
    pytest.importorskip("wandb", reason="wandb is not installed (it is optional: pip install wandb)")
    out, rows = simulation
    assert wandb_scalars(out) == as_logged(rows, "round")


def test_simulation_reports_the_rows_of_rounds_csv_to_mlflow(simulation):
    pytest.importorskip("mlflow", reason="mlflow is not installed (it is optional: pip install mlflow)")
    from mlflow import MlflowClient
    out, rows = simulation
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("pranc-fed").experiment_id])
    logged = {name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
              for name in run.data.metrics}
    assert run.info.run_name == "mnist_lenet" and logged == as_logged(rows, "round")


@pytest.mark.parametrize("fails_in", ["__init__", "log"])
def test_a_failing_tracker_warns_once_and_the_run_goes_on(fails_in, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")

    class Broken(loggers.TensorBoardLogger):
        def __init__(self, cfg, out):
            if fails_in == "__init__":
                raise PermissionError("not logged in")
            super().__init__(cfg, out)

        def log(self, metrics, step):
            raise ConnectionError("quota exceeded")

    monkeypatch.setitem(loggers.TRACKERS, "tensorboard", Broken)
    cfg = load_config("configs/mnist_lenet.yaml", [*TRAIN, "logging.report_to=[tensorboard]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_centralized(cfg, tmp_path, log=lambda *_: None)
    assert [str(w.message).split(" (")[0] for w in caught] == ["tensorboard logging failed and is off for the rest "
                                                               "of this run"]
    assert len(json.loads((tmp_path / "summary.json").read_text())["history"]) == 2


def test_a_tracker_that_is_not_installed_is_a_config_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    cfg = load_config(None, ["logging.report_to=[tensorboard, wandb]"])
    with pytest.raises(ConfigError, match="pip install tensorboard wandb"):
        train_centralized(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_run_resumes_with_other_trackers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(load_config(None))))
    (tmp_path / CHECKPOINT).touch()
    assert check_resume(load_config(None, ["logging.report_to=[tensorboard]", "logging.project=other"]), tmp_path)
