"""Crafted .pranc files: every one is refused with a PrancFileError (the CLI's exit 2) or read as a
valid model, never an uncaught exception. Bounded: a fixed, seeded set of a few hundred files."""

import struct

import numpy as np
import pytest
import torch

from pranc_fed.basis import FingerprintMismatch
from pranc_fed.cli import main
from pranc_fed.inference import inspect_model, load_model
from pranc_fed.models import build_model
from pranc_fed.pranc import MAGIC, PrancFile, PrancFileError, PrancModel, read_pranc_file, write_pranc_bytes

NASTY = [None, True, -1, 0, 2**70, 1.5, float("nan"), "", "x" * 5000, [], [[[]]], {}, {"a": 1}, "lenet"]


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> PrancFile:
    torch.manual_seed(0)
    model = PrancModel(build_model("lenet"), 20, seed=3, arch="lenet")
    with torch.no_grad():
        model.alpha.normal_()
    prep = {"mean": [0.1307], "std": [0.3081], "input_shape": [1, 28, 28], "class_names": [str(i) for i in range(10)]}
    path = tmp_path_factory.mktemp("valid") / "model.pranc"
    model.save(path, model_args={"num_classes": 10, "in_channels": 1}, preprocessing=prep)
    return read_pranc_file(path)


def header_variants(header: dict):
    """(label, header) with one field changed, removed or retyped."""
    for key in header:
        yield f"drop {key}", {k: v for k, v in header.items() if k != key}
        for value in NASTY:
            yield f"{key}={value!r:.20}", header | {key: value}
    for key in header["preprocessing"]:
        for value in NASTY:
            yield f"preprocessing.{key}={value!r:.20}", header | {"preprocessing": header["preprocessing"] | {key: value}}
    for i in range(3):
        for value in NASTY + [[1, 2, 3], [2**40, 2**40]]:
            entry = list(header["tensors"][0])
            entry[i] = value
            yield f"tensors[0][{i}]={value!r:.20}", header | {"tensors": [entry, *header["tensors"][1:]]}
    yield "tensor listed twice", header | {"tensors": header["tensors"] + header["tensors"][:1]}
    yield "model_args unknown", header | {"model_args": {"depth": 3}}
    yield "model_args huge", header | {"model_args": {"num_classes": 10**9}}


def refused_or_valid(path) -> None:
    for read in (inspect_model, load_model):
        try:
            read(path)
        except (PrancFileError, FingerprintMismatch):
            pass


def test_every_crafted_header_is_refused_cleanly(valid, tmp_path):
    for i, (label, crafted) in enumerate(header_variants(valid.header)):
        path = tmp_path / f"{i}.pranc"
        path.write_bytes(write_pranc_bytes(crafted, valid.tensors))
        try:
            refused_or_valid(path)
        except Exception as e:  # noqa: BLE001 - the test names the variant that escaped
            pytest.fail(f"{label}: {type(e).__name__}: {e}")


def test_random_byte_changes_with_a_recomputed_checksum_are_refused_cleanly(valid, tmp_path):
    import hashlib
    body = write_pranc_bytes(valid.header, valid.tensors)[:-32]
    rng = np.random.default_rng(0)
    for i in range(300):
        blob = bytearray(body)
        for _ in range(rng.integers(1, 4)):
            blob[rng.integers(len(MAGIC), len(blob))] = rng.integers(0, 256)
        path = tmp_path / f"{i}.pranc"
        path.write_bytes(bytes(blob) + hashlib.sha256(bytes(blob)).digest())
        try:
            refused_or_valid(path)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"byte change {i}: {type(e).__name__}: {e}")


def test_deeply_nested_json_and_a_header_past_the_end_are_refused(valid, tmp_path):
    import hashlib
    for label, head, length in [("nested", b"[" * 100_000 + b"]" * 100_000, None), ("past the end", b"{}", 10**6)]:
        body = struct.pack("<6sHI", MAGIC, 1, length or len(head)) + head
        path = tmp_path / "crafted.pranc"
        path.write_bytes(body + hashlib.sha256(body).digest())
        with pytest.raises(PrancFileError):
            read_pranc_file(path)


def test_a_non_finite_alpha_is_refused(valid, tmp_path, capsys):
    alpha = valid.alpha.clone()
    alpha[3] = float("nan")
    path = tmp_path / "nan.pranc"
    path.write_bytes(write_pranc_bytes(valid.header, valid.tensors | {"alpha": alpha}))
    assert main(["inspect", str(path)]) == 2
    assert "NaN or Inf" in capsys.readouterr().err
