"""A model and a data loader of the user's own, named by import path (README "Your own model and
data"): the README's example run as it is written, through a real Flower simulation, and every
bad factory or loader refused in pre-flight with one line naming its key."""

import csv
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pranc_fed.basis import Fingerprint
from pranc_fed.cli import main
from pranc_fed.config import config_from_dict
from pranc_fed.data import DatasetError, load_configured, partition_indices
from pranc_fed.inference import inspect_model, load_model
from pranc_fed.pranc import PrancFileError, PrancModel
from pranc_fed.training import federated_train_sets

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent


def readme_example() -> tuple[dict[str, str], list[str]]:
    """The files of the README's section (each block's first line `# NAME`) and its commands."""
    section = README.read_text(encoding="utf-8").split("## Your own model and data\n", 1)[1].split("\n## ", 1)[0]
    files, commands = {}, []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        if lang == "bash":
            commands += [line for line in body.splitlines() if line.strip()]
        else:
            name, _, text = body.partition("\n")
            files[name.removeprefix("# ").strip()] = text
    return files, commands


@pytest.mark.slow
def test_the_readme_example_runs_as_written_through_a_flower_simulation(tmp_path):
    files, commands = readme_example()
    assert set(files) == {"my_task.py", "my_task.yaml"} and len(files["my_task.py"].splitlines()) <= 35
    assert [c.split()[:2] for c in commands] == [["pranc-fed", "simulate"], ["pranc-fed", "inspect"],
                                                 ["pranc-fed", "evaluate"]]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # The module lives only in tmp_path: the Flower processes and Ray actors must find it there.
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    outputs = []
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    out = tmp_path / "runs" / "my_task"
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["round"]) for r in rounds] == [0, 1, 2]
    # Federated PRANC learnt the task: 4 classes, chance is 0.25.
    first, last = float(rounds[0]["test_accuracy"]), float(rounds[-1]["test_accuracy"])
    assert last > first + 0.1, rounds
    ledger = list(csv.DictReader((out / "ledger.csv").open()))
    assert {r["node"] for r in ledger if r["direction"] == "up"}.__len__() == 3, ledger[:3]
    header = json.loads(json.dumps(inspect_model(out / "model.pranc")))
    assert header["arch"] == "my_task:Net" and header["metadata"]["dataset"] == "my_task:load"
    assert "my_task:Net" in outputs[1] and "not imported" in outputs[1]
    accuracy = float(re.search(r"accuracy (\S+)", outputs[2]).group(1))
    assert accuracy == pytest.approx(last, abs=1e-4)  # the file holds the model the server evaluated
    refused = subprocess.run(commands[2].replace(" --trust-code", ""), shell=True, cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--trust-code" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


# ------------------------------------------------------------------ bad input, one line each

CASES = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.fc = nn.Linear(in_channels * 16 * 16, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def data(n=40, shape=(1, 16, 16)):
    return TensorDataset(torch.randn(n, *shape), torch.arange(n) % 4)


def load():
    return data(), data(12)


def raises(num_classes, in_channels):
    raise RuntimeError("factory broke\\nsecond line")


def not_a_module(num_classes, in_channels):
    return 42


def uncovered(num_classes, in_channels):
    return nn.Flatten()


def wrong_input(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(10, num_classes))


def wrong_logits(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 256, num_classes + 3))


def load_raises():
    raise ValueError("no data here")


def load_list():
    return [1, 2, 3]


def load_ints():
    return 5, None


class Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def load_flat():
    return Items([(torch.randn(16, 16), 0)] * 4), None


def load_mixed_shapes():
    return Items([(torch.randn(1, 16, 16), 0), (torch.randn(1, 8, 8), 1)]), None


def load_float_labels():
    return Items([(torch.randn(1, 16, 16), 1.5)] * 4), None


def load_uint8():
    return Items([(torch.zeros(1, 16, 16, dtype=torch.uint8), 0)] * 4), None


def load_out_of_classes():
    train = data()
    train.classes = ["a", "b"]
    return train, data(12)


def load_named():
    train = data(60)
    train.classes = ["w", "x", "y", "z"]
    return train, None
'''

SENTINEL = '''
import os
from pathlib import Path
from torch import nn

Path(os.environ["BYO_SENTINEL"]).write_text("imported")


def Net(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16 * 16, num_classes))
'''


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own_code")
    (folder / "byo_cases.py").write_text(textwrap.dedent(CASES))
    (folder / "byo_sentinel.py").write_text(textwrap.dedent(SENTINEL))
    importlib.invalidate_caches()
    return folder


def _config(folder: Path, arch: str, dataset: str) -> Path:
    path = folder / "byo.yaml"
    path.write_text(f"model: {{arch: '{arch}'}}\ndata: {{dataset: '{dataset}'}}\npranc: {{num_coeffs: 64}}\n")
    return path


@pytest.mark.parametrize("arch, dataset, message", [
    ("byo_nowhere:Net", "byo_cases:load", "model.arch: no module named 'byo_nowhere'"),
    ("byo_cases:Nope", "byo_cases:load", "model.arch: module 'byo_cases' has no attribute 'Nope'"),
    ("byo_cases:raises", "byo_cases:load", "raised RuntimeError: factory broke"),
    ("byo_cases:not_a_module", "byo_cases:load", "returned a int, not a torch.nn.Module"),
    ("byo_cases:uncovered", "byo_cases:load", "model.arch: byo_cases:uncovered builds a Flatten without nn.Conv*/nn.Linear"),
    ("byo_cases:wrong_input", "byo_cases:load", "model.arch: byo_cases:wrong_input cannot take the 1x16x16 inputs"),
    ("byo_cases:wrong_logits", "byo_cases:load", "not to logits of shape (2, 4)"),
    ("byo_cases:Net", "byo_nodata:load", "data.dataset: no module named 'byo_nodata'"),
    ("byo_cases:Net", "byo_cases:load_raises", "data.dataset: byo_cases:load_raises() raised ValueError: no data here"),
    ("byo_cases:Net", "byo_cases:load_list", "data.dataset: byo_cases:load_list() returned a list"),
    ("byo_cases:Net", "byo_cases:load_ints", "the train set byo_cases:load_ints() returned is a int, not a map-style"),
    ("byo_cases:Net", "byo_cases:load_flat", "item 0 of the train set of byo_cases:load_flat() has a torch.float32 "
                                             "tensor of shape (16, 16)"),
    ("byo_cases:Net", "byo_cases:load_mixed_shapes", "item 1 of the train set of byo_cases:load_mixed_shapes() is "
                                                     "1x8x8, but the items before it are 1x16x16"),
    ("byo_cases:Net", "byo_cases:load_float_labels", "has label 1.5 (float); labels must be ints"),
    ("byo_cases:Net", "byo_cases:load_uint8", "has a torch.uint8 tensor"),
    ("byo_cases:Net", "byo_cases:load_out_of_classes", "gives label 3, but its train set's classes list names 2"),
])
def test_a_bad_factory_or_loader_is_one_line_before_anything_starts(cases_dir, monkeypatch, capsys, arch, dataset,
                                                                    message):
    monkeypatch.chdir(cases_dir)  # found from the working folder, as from the `pranc-fed` command
    out = cases_dir / "out"
    assert main(["train", str(_config(cases_dir, arch, dataset)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_loader_with_image_size_is_refused(cases_dir, monkeypatch):
    monkeypatch.chdir(cases_dir)
    cfg = config_from_dict({"data": {"dataset": "byo_cases:load", "image_size": [8, 8]}})
    with pytest.raises(DatasetError, match="data.image_size resizes decoded image files"):
        load_configured(cfg.data)


def test_partitions_splits_and_server_validation_work_on_a_loader_of_ones_own(cases_dir, monkeypatch):
    monkeypatch.chdir(cases_dir)
    cfg = config_from_dict({"data": {"dataset": "byo_cases:load_named", "test_fraction": 0.25, "server_val_size": 5,
                                     "partition": "dirichlet"}, "federation": {"num_clients": 3}})
    bundle = load_configured(cfg.data)
    assert bundle.preprocessing.class_names == ("w", "x", "y", "z") and bundle.num_classes == 4
    assert (len(bundle.train), len(bundle.test)) == (44, 16)  # test=None: 4 of each class's 15 held out
    assert bundle.train.images.dtype == torch.float32
    x, _ = bundle.train[0]
    assert torch.equal(x, bundle.train.images[0])  # the loader's tensors, used as they are
    clients, server_val = federated_train_sets(cfg, bundle)
    assert len(server_val) == 5 and len(clients) == 39
    parts = partition_indices(clients.labels, 3, "dirichlet", 0, 0.5)
    assert sorted(i for p in parts for i in p) == list(range(39))


def test_a_model_file_names_its_code_and_nothing_imports_it_unasked(cases_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(cases_dir)
    marker = tmp_path / "imported"
    monkeypatch.setenv("BYO_SENTINEL", str(marker))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 4))
    path = tmp_path / "own.pranc"
    PrancModel(net, 32, seed=3, arch="byo_sentinel:Net", cache="none").save(
        path, model_args={"num_classes": 4, "in_channels": 1})
    info = inspect_model(path)
    assert info["arch"] == "byo_sentinel:Net" and not info["fingerprint_verified"] and "not imported" in info["note"]
    for load in (lambda: load_model(path), lambda: load_model(path, on_the_fly=True), lambda: PrancModel.load(path)):
        with pytest.raises(PrancFileError, match="pass --trust-code"):
            load()
    assert main(["evaluate", str(path), "--data", "byo_cases:load", "--quiet"]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert not marker.exists()
    assert inspect_model(path, trust_code=True)["fingerprint_verified"] and marker.exists()
    assert main(["evaluate", str(path), "--data", "byo_cases:load", "--quiet", "--trust-code"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_a_fingerprint_with_an_import_path_as_arch_parses_back():
    fp = Fingerprint(1, "my_package.models:make_net", 1508, 500, "global", 0, "a2036d8dae7f01c2")
    assert Fingerprint.parse(str(fp)) == fp


@pytest.mark.parametrize("method", ["fedavg", "topk", "fedpm"])
def test_the_dense_update_methods_build_a_model_of_ones_own(cases_dir, monkeypatch, method):
    from pranc_fed.methods import get_method
    monkeypatch.chdir(cases_dir)
    cfg = config_from_dict({"model": {"arch": "byo_cases:Net"}, "data": {"dataset": "byo_cases:load"},
                            "federation": {"method": method}})
    m = get_method(cfg)
    net = m.build_model(load_configured(cfg.data), torch.device("cpu"))
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 4)
    if method == "topk":
        assert m.stat_keys == frozenset()  # the factory was built with the data's model_args, not a default input
