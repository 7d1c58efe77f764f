"""PrancModel and .pranc files: exact round trip, the 11 KB LeNet size, and every bad file."""

import json
import struct

import pytest
import torch

from pranc_fed.basis import FingerprintMismatch
from pranc_fed.cli import main
from pranc_fed.models import build_model
from pranc_fed.pranc import MAGIC, PrancFileError, PrancModel, read_pranc_file

K = 5000


@pytest.fixture(scope="module")
def lenet() -> PrancModel:
    model = PrancModel(build_model("lenet"), K, seed=7, arch="lenet")
    with torch.no_grad():
        model.alpha.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    return model


def test_round_trip_is_exact_and_lenet_fp16_is_under_11kb(lenet, tmp_path):
    path = tmp_path / "m.pranc"
    size = lenet.save(path, "float32", {"num_classes": 10, "in_channels": 1})
    loaded = PrancModel.load(path)
    assert torch.equal(loaded.alpha, lenet.alpha) and loaded.fingerprint == lenet.fingerprint
    assert size == path.stat().st_size
    small = lenet.save(tmp_path / "h.pranc", "float16", {"num_classes": 10, "in_channels": 1})
    assert small < 11_000
    assert torch.equal(PrancModel.load(tmp_path / "h.pranc").alpha, lenet.alpha.half().float())


def test_local_state_round_trips(tmp_path):
    model = PrancModel(build_model("resnet20"), 64, seed=1, arch="resnet20")
    with torch.no_grad():
        for p in model.local_parameters():
            p.uniform_()
    model.save(tmp_path / "r.pranc", model_args={"num_classes": 10, "in_channels": 3})
    file = read_pranc_file(tmp_path / "r.pranc")
    loaded = PrancModel.load(file)
    assert list(file.tensors) == ["alpha", *model.local_state()]  # loading takes nothing out of the file
    for name, value in model.local_state().items():
        assert torch.equal(loaded.local_state()[name], value), name


def _rewrite_header(path, change):
    """Rewrite a file's header and re-seal it, as a malicious or buggy writer would."""
    import hashlib
    blob = path.read_bytes()[:-32]
    magic, fmt, head_len = struct.unpack_from("<6sHI", blob)
    header = json.loads(blob[12:12 + head_len])
    change(header)
    head = json.dumps(header).encode()
    body = struct.pack("<6sHI", magic, fmt, len(head)) + head + blob[12 + head_len:]
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("case,error,match", [
    ("truncated", PrancFileError, "corrupted or truncated"),
    ("bitflip", PrancFileError, "corrupted or truncated"),
    ("magic", PrancFileError, "not a .pranc"),
    ("spec", PrancFileError, "spec v2"),
    ("seed", FingerprintMismatch, "seed"),
    ("num_coeffs", PrancFileError, "num_coeffs"),
    ("arch", FingerprintMismatch, "arch"),
])
def test_bad_files_are_refused(lenet, tmp_path, case, error, match):
    path = tmp_path / "m.pranc"
    lenet.save(path, model_args={"num_classes": 10, "in_channels": 1})
    blob = bytearray(path.read_bytes())
    if case == "truncated":
        path.write_bytes(blob[:-100])
    elif case == "bitflip":
        blob[len(blob) // 2] ^= 0x10
        path.write_bytes(bytes(blob))
    elif case == "magic":
        path.write_bytes(b"PK\x03\x04" + bytes(blob[4:]))
    elif case == "spec":
        _rewrite_header(path, lambda h: h.update(spec=2))
    elif case == "seed":
        _rewrite_header(path, lambda h: h.update(seed=8))
    elif case == "num_coeffs":
        _rewrite_header(path, lambda h: h.update(num_coeffs=K + 1))
    elif case == "arch":
        _rewrite_header(path, lambda h: h.update(arch="lenet_cifar", model_args={"num_classes": 10, "in_channels": 1}))
    with pytest.raises(error, match=match):
        PrancModel.load(path)


def test_expected_fingerprint_rejects_another_seed(lenet, tmp_path):
    path = tmp_path / "m.pranc"
    lenet.save(path, model_args={"num_classes": 10, "in_channels": 1})
    other = PrancModel(build_model("lenet"), K, seed=8, arch="lenet", cache="none")
    with pytest.raises(FingerprintMismatch, match="seed"):
        PrancModel.load(path, expect=other.fingerprint)
    assert read_pranc_file(path).seed == 7 and path.read_bytes()[:6] == MAGIC


def test_train_command_writes_summary_and_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "configs/mnist_lenet.yaml", "--set", "train.epochs=1", "--set", "data.train_subset=1000",
                 "--set", "data.test_subset=300", "--set", "pranc.num_coeffs=100", "--set", "pranc.alpha_lr=0.03", "--set", "train.batch_size=32",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_test_accuracy", "best_test_accuracy", "epochs", "num_coeffs", "param_count", "wall_seconds"):
        assert key in summary
    assert summary["num_coeffs"] == 100 and summary["final_test_accuracy"] > 0.2
    assert PrancModel.load(out / "model.pranc").num_coeffs == 100


def test_train_command_rejects_bad_config(capsys):
    assert main(["train", "configs/mnist_lenet.yaml", "--set", "federation.rounds=zero"]) == 2
    assert "federation.rounds" in capsys.readouterr().err


def test_full_rank_small_layers_get_one_column_per_weight_and_the_file_names_them(tmp_path):
    from pranc_fed.basis import covered_segments, make_blocks
    from pranc_fed.config import ConfigError, load_config
    segments = covered_segments(build_model("lenet"))
    plain, full = make_blocks(segments, 2000, "per_layer"), make_blocks(segments, 2000, "per_layer_full850")
    sizes = [b.row1 - b.row0 for b in full]
    assert sizes == [156, 2416, 30840, 10164, 850]  # LeNet's conv1, conv2, fc1, fc2, fc3
    assert [b.col1 - b.col0 for b in full][0::4] == [156, 850] != [b.col1 - b.col0 for b in plain][0::4]
    assert full[-1].col1 == 2000 and all(b.col0 == a.col1 for a, b in zip(full, full[1:]))
    with pytest.raises(ValueError, match="leaving"):
        make_blocks(segments, 3000, "per_layer_full3000")  # 156 + 2416 + 850 > 3000 - 2
    model = PrancModel(build_model("lenet"), 2000, seed=3, arch="lenet", layout="per_layer_full850")
    model.save(tmp_path / "f.pranc", model_args={"num_classes": 10, "in_channels": 1})
    assert PrancModel.load(tmp_path / "f.pranc").fingerprint == model.fingerprint
    assert load_config(None, ["pranc.layout=per_layer", "pranc.full_rank_upto=850"]).pranc.basis_layout == \
        "per_layer_full850"
    with pytest.raises(ConfigError, match="needs pranc.layout=per_layer"):
        load_config(None, ["pranc.full_rank_upto=850"])
    for bad in ("per_layer_full", "per_layer_full08", "per_layer_fullx", "diagonal"):
        with pytest.raises(ValueError, match="unknown basis layout"):
            make_blocks(segments, 1000, bad)
