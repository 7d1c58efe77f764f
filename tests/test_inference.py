"""inspect / evaluate / predict on a .pranc file, and on-the-fly inference (pranc_fed/inference.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

from pranc_fed.basis import Basis, FingerprintMismatch, covered_segments
from pranc_fed.cli import main
from pranc_fed.config import load_config
from pranc_fed.data import load_dataset
from pranc_fed.inference import OnTheFlyModel, _StreamingBasis, inspect_model, load_model, read_preprocessing
from pranc_fed.models import build_model
from pranc_fed.pranc import PrancModel, read_pranc_file, write_pranc_bytes

K = 16
TEST_SUBSET = 100


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The generator's many small ops run faster on one thread on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A .pranc file written by a (very) short `pranc-fed train` run: LeNet on MNIST, K=50."""
    old = os.environ.get("PRANC_FED_CACHE")
    os.environ["PRANC_FED_CACHE"] = str(tmp_path_factory.getbasetemp() / "dataset-cache")  # never ~/.cache
    try:
        from pranc_fed.centralized import train_centralized
        cfg = load_config("configs/mnist_lenet.yaml", [
            "train.epochs=1", "data.train_subset=256", f"data.test_subset={TEST_SUBSET}",
            f"pranc.num_coeffs={K}", "train.device=cpu"])
        out = tmp_path_factory.mktemp("trained")
        summary = train_centralized(cfg, out, log=lambda *_: None)
        yield out / "model.pranc", summary
    finally:
        if old is None:
            os.environ.pop("PRANC_FED_CACHE", None)
        else:
            os.environ["PRANC_FED_CACHE"] = old


@pytest.fixture(scope="module")
def pngs(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[int]]:
    """Four MNIST test digits as PNGs: one loose file and a folder (with a subfolder) of three."""
    root = tmp_path_factory.mktemp("images")
    images = load_dataset("mnist").test.images[:4, 0].numpy()
    folder = root / "digits"
    (folder / "more").mkdir(parents=True)
    paths = [root / "single.png", folder / "a.png", folder / "b.png", folder / "more" / "c.png"]
    for img, p in zip(images, paths):
        Image.fromarray(img).save(p)
    return paths[0], folder, [0, 1, 2, 3]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------- the commands


def test_inspect(trained, capsys) -> None:
    path, _ = trained
    rc, out, _ = _run(capsys, "inspect", path)
    assert rc == 0
    assert "checksum ok" in out and "lenet" in out and f"K = {K}" in out and "44,426" in out
    rc, out, _ = _run(capsys, "inspect", path, "--json")
    info = json.loads(out)
    assert info["num_coeffs"] == K and info["covered_params"] == 44_426 and info["alpha_dtype"] == "float32"
    assert info["file_bytes"] == path.stat().st_size and info["fingerprint_verified"]
    assert info["dense_state_dict_bytes"] > 50 * info["file_bytes"]
    assert info["preprocessing"]["input_shape"] == [1, 28, 28]


def test_evaluate_reproduces_training_accuracy(trained, capsys) -> None:
    path, summary = trained
    accs = []
    for extra in ([], ["--on-the-fly"]):
        rc, out, err = _run(capsys, "evaluate", path, "--data", "mnist", "--subset", TEST_SUBSET, "--json", *extra)
        assert rc == 0, err
        result = json.loads(out)
        assert result["examples"] == TEST_SUBSET
        assert f"{TEST_SUBSET}/{TEST_SUBSET} images (100%" in err  # progress on stderr
        accs.append(result["accuracy"])
    # the same rows (data.test_subset, seed 0) and the same weights as the training run's final evaluation
    assert accs == [summary["final_test_accuracy"]] * 2
    rc, out, _ = _run(capsys, "evaluate", path, "--data", "mnist", "--subset", 20, "--quiet")
    assert rc == 0 and out.startswith("accuracy ")


def test_predict_into_a_closed_pipe_ends_quietly(trained, pngs) -> None:
    """`pranc-fed predict --json ... | head -c 100`: more output than the pipe holds, then the reader goes."""
    import subprocess
    import sys
    path, _ = trained
    single = str(pngs[0])
    cmd = f"{sys.executable} -m pranc_fed.cli predict {path} {' '.join([single] * 1500)} --json | head -c 100"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert len(done.stdout) == 100 and "Traceback" not in done.stderr and "Broken" not in done.stderr, done.stderr
    assert done.returncode == 0


def test_predict(trained, pngs, capsys) -> None:
    path, _ = trained
    single, folder, _ = pngs
    rc, out, err = _run(capsys, "predict", path, single, folder, "--top-k", 3, "--json")
    assert rc == 0, err
    preds = json.loads(out)
    assert [Path(p["path"]).name for p in preds] == ["single.png", "a.png", "b.png", "c.png"]
    for p in preds:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t["class"] == str(t["index"]) for t in p["top"])
    # the same answer as the model on the dataset's own tensors (same preprocessing)
    net = load_model(path)
    x = read_preprocessing(path).normalize(load_dataset("mnist").test.images[:4])
    with torch.no_grad():
        expected = net(x).argmax(1).tolist()
    assert [p["top"][0]["index"] for p in preds] == expected
    rc, out_otf, _ = _run(capsys, "predict", path, single, folder, "--top-k", 3, "--json", "--on-the-fly")
    assert rc == 0
    assert [[t["index"] for t in p["top"]] for p in json.loads(out_otf)] == [[t["index"] for t in p["top"]]
                                                                             for p in preds]
    rc, out, _ = _run(capsys, "predict", path, single)
    assert rc == 0 and out.startswith(str(single))


# -------------------------------------------------------------------- on-the-fly == full


@pytest.mark.parametrize("arch,layout,k,alpha_dtype", [("lenet", "global", 64, "float16"),
                                                       ("resnet20", "per_layer", 64, "float32")])
def test_on_the_fly_gives_the_same_logits(tmp_path: Path, arch: str, layout: str, k: int, alpha_dtype: str) -> None:
    torch.manual_seed(0)
    model = PrancModel(build_model(arch), k, seed=123, arch=arch, layout=layout, cache="none")
    with torch.no_grad():
        model.alpha.normal_(0, 0.05)
        for name, buf in model.module.named_buffers():  # non-trivial BatchNorm statistics
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
        for p in model.local_parameters():
            p.uniform_(-0.5, 1.5)
    path = tmp_path / "m.pranc"
    model.save(path, alpha_dtype, model_args={"num_classes": 10})
    full, lite = load_model(path), load_model(path, on_the_fly=True, chunk_mb=0.25)
    assert isinstance(lite, OnTheFlyModel) and lite.fingerprint == model.fingerprint
    x = torch.randn(3, *((1, 28, 28) if arch == "lenet" else (3, 32, 32)))
    with torch.no_grad():
        want, got = full(x), lite(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    # it owns no conv/linear weights, and held at most one layer's weights at a time
    covered = {s.name for s in covered_segments(build_model(arch))}
    assert not covered & set(dict(lite.module.named_parameters()))
    assert not any("weight" in vars(m) or "bias" in vars(m) for m in lite.module.modules())
    assert lite.live_bytes == 0 and lite.peak_live_bytes == lite.largest_layer_bytes
    assert "on the fly" in repr(lite)


@pytest.mark.parametrize("arch,layout", [("lenet", "global"), ("resnet20", "per_layer")])
def test_streaming_basis_fingerprint_matches_basis(arch: str, layout: str) -> None:
    segments = covered_segments(build_model(arch))
    full = Basis(segments, 40, 9, arch, layout=layout, cache="none")
    assert _StreamingBasis(segments, 40, 9, arch, layout).fingerprint == full.fingerprint


# ------------------------------------------------------------------------------- errors


def test_expect_rejects_another_basis(trained) -> None:
    path, _ = trained
    other = PrancModel(build_model("lenet"), K, seed=1, arch="lenet").fingerprint
    for on_the_fly in (False, True):
        with pytest.raises(FingerprintMismatch, match="seed"):
            load_model(path, on_the_fly=on_the_fly, expect=other)
    file = read_pranc_file(path)
    for on_the_fly in (False, True):  # a file read once loads in either mode
        assert load_model(file, on_the_fly=on_the_fly, expect=file.fingerprint)


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    file = read_pranc_file(src)
    dst.write_bytes(write_pranc_bytes({**file.header, **changes}, file.tensors))  # a valid checksum
    return dst


def test_bad_files_exit_2(trained, tmp_path: Path, capsys) -> None:
    path, _ = trained
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.pranc"
    truncated.write_bytes(blob[:-100])
    flipped = tmp_path / "flipped.pranc"
    flipped.write_bytes(blob[:60] + bytes([blob[60] ^ 0x01]) + blob[61:])
    other_arch = _rewrite(path, tmp_path / "other.pranc", arch="lenet_cifar")
    unknown_arch = _rewrite(path, tmp_path / "unknown.pranc", arch="no_such_net")
    cases = [(truncated, "checksum"), (flipped, "checksum"), (other_arch, "basis mismatch"),
             (unknown_arch, "no_such_net"), (tmp_path / "missing.pranc", "cannot read")]
    for bad, why in cases:
        # inspect reads a file of an architecture outside the registry, and says it cannot check it
        for argv in ([["inspect", bad]] if bad != unknown_arch else []) + [
                ["evaluate", bad, "--data", "mnist", "--subset", 10], ["predict", bad, __file__],
                ["evaluate", bad, "--data", "mnist", "--on-the-fly"]]:
            rc, _, err = _run(capsys, *argv)
            assert rc == 2, (argv, err)
            assert err.startswith("pranc-fed: error:") and why in err, (argv, err)


def test_bad_inputs_exit_2(trained, tmp_path: Path, capsys) -> None:
    path, _ = trained
    rc, _, err = _run(capsys, "predict", path, tmp_path / "nope.png")
    assert rc == 2 and "nope.png does not exist" in err
    text = tmp_path / "not_an_image.png"
    text.write_text("hello")
    rc, _, err = _run(capsys, "predict", path, text)
    assert rc == 2 and "cannot read image" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, "predict", path, tmp_path / "empty")
    assert rc == 2 and "holds no images" in err
    # a dataset of another shape (RGB 32x32 ImageFolder) than the model's 1x28x28: decoded at the
    # model's 28x28, as predict does, but its colour channels do not fit
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "rgb" / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "rgb" / split / c / "x.png")
    rc, _, err = _run(capsys, "evaluate", path, "--data", tmp_path / "rgb")
    assert rc == 2 and "3x28x28 images but the model takes 1x28x28" in err


def test_inspect_opens_a_file_saved_from_a_module_outside_the_registry(tmp_path, capsys):
    """PrancModel(module, K) without arch= records the class name; inspect reports the file and says why
    it cannot check the fingerprint, and PrancModel.load with the module restores it exactly."""
    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn, self.fc2 = nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(self.bn(self.fc1(x)))

    model = PrancModel(TinyNet(), 20, seed=3)
    with torch.no_grad():
        model.alpha.normal_()
    path = tmp_path / "tiny.pranc"
    model.save(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tinynet" in out and "not checked" in out and "PrancModel.load(path, module=" in out
    info = inspect_model(path)
    assert info["covered_params"] == 8 * 4 + 4 + 4 * 2 + 2 and not info["fingerprint_verified"]
    assert torch.equal(PrancModel.load(path, module=TinyNet()).alpha, model.alpha)
