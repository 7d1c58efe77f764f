import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from pranc_fed import data
from pranc_fed.data import (
    DatasetError,
    LoadOptions,
    Preprocessing,
    TensorImageDataset,
    client_split,
    load_configured,
    load_dataset,
    make_loader,
    partition_indices,
    stratified_split,
    subset,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never write to ~/.cache from tests; each test starts with an empty in-process cache."""
    cache = tmp_path_factory.getbasetemp() / "dataset-cache"
    monkeypatch.setenv("PRANC_FED_CACHE", str(cache))
    return cache / "datasets"


def _clear_process_cache() -> None:
    # keep the (expensive) MNIST bundle, drop the rest
    data._load_cached.cache_clear()


def _labels(n: int = 2000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def _image_tree(root: Path, classes=("cat", "dog", "eel"), train=3, test=2, mode="RGB", size=(8, 6)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
                img.save(root / split / c / f"{i}.png")
    return root


# ------------------------------------------------------------------------ MNIST


def test_mnist_loads() -> None:
    b = load_dataset("mnist")
    assert b.train.images.shape == (60000, 1, 28, 28) and b.test.images.shape == (10000, 1, 28, 28)
    assert b.train.images.dtype == torch.uint8 and b.train.labels.dtype == torch.int64
    assert set(b.train.labels.unique().tolist()) == set(range(10)) and b.num_classes == 10
    assert b.preprocessing.mean == (0.1307,) and b.preprocessing.input_shape == (1, 28, 28)
    assert load_dataset("MNIST") is b  # in-process cache


def test_mnist_partitions_cover_data() -> None:
    labels = load_dataset("mnist").train.labels
    parts = partition_indices(labels, 10, "dirichlet", seed=0)
    assert sum(len(p) for p in parts) == 60000
    assert len(np.unique(np.concatenate(parts))) == 60000


# ------------------------------------------------------------------- partitions


def test_iid_partitions_deterministic_disjoint_cover() -> None:
    labels = _labels()
    parts = partition_indices(labels, 7, "iid", seed=3)
    again = partition_indices(labels, 7, "iid", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    allidx = np.concatenate(parts)
    assert len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # shuffled before sharding: a shard is not a contiguous block
    assert parts[0][-1] - parts[0][0] > len(parts[0])
    other = partition_indices(labels, 7, "iid", seed=4)
    assert not np.array_equal(parts[0], other[0])


def test_dirichlet_is_skewed_and_deterministic() -> None:
    labels = _labels(3000)
    parts = partition_indices(labels, 5, "dirichlet", seed=1, dirichlet_alpha=0.1)
    again = partition_indices(labels, 5, "dirichlet", seed=1, dirichlet_alpha=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx) == len(labels)
    assert all(len(p) >= 1 for p in parts)
    # the dominant class of a client holds far more than the iid share (10%)
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top_share) > 0.3


def test_pathological_classes_per_client() -> None:
    labels = _labels()
    parts = partition_indices(labels, 8, "pathological", seed=0, classes_per_client=2)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)


def test_partition_results_are_copies() -> None:
    labels = _labels()
    parts = partition_indices(labels, 4, "iid", seed=0)
    parts[0][:] = -1
    assert (partition_indices(labels, 4, "iid", seed=0)[0] >= 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "shards"}, "iid, dirichlet, pathological"),
        ({"num_partitions": 5000}, "cannot split 2000 examples"),
        ({"num_partitions": 0}, "at least 1"),
        ({"scheme": "dirichlet", "dirichlet_alpha": 0.0}, "dirichlet_alpha"),
        ({"scheme": "pathological", "classes_per_client": 11}, "classes_per_client"),
    ],
)
def test_partition_errors(kwargs: dict, match: str) -> None:
    args = {"num_partitions": 4, "scheme": "iid", "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        partition_indices(_labels(), **args)


def test_client_split() -> None:
    idx = np.arange(100, 150)
    tr, va = client_split(idx, 0.2, seed=5)
    assert len(va) == 10 and len(tr) == 40
    assert np.array_equal(np.sort(np.concatenate([tr, va])), idx)
    tr2, va2 = client_split(idx, 0.2, seed=5)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(client_split(idx, 0.0, seed=5)[1]) == 0
    tr1, va1 = client_split(np.array([7]), 0.9, seed=0)
    assert tr1.tolist() == [7] and len(va1) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        client_split(idx, 1.0, seed=0)


# ------------------------------------------------------------------- ImageFolder


def test_imagefolder_loads_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache: Path) -> None:
    root = _image_tree(tmp_path / "pets")
    # one odd-sized JPEG gets resized to the common size
    Image.new("RGB", (20, 20), (255, 0, 0)).save(root / "train" / "dog" / "big.jpg")
    _clear_process_cache()
    b = load_dataset(root)
    assert b.train.images.shape == (10, 3, 6, 8) and b.test.images.shape == (6, 3, 6, 8)
    assert b.preprocessing.class_names == ("cat", "dog", "eel") and b.num_classes == 3
    assert b.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert len(b.preprocessing.mean) == 3 and all(0.0 < s < 1.0 for s in b.preprocessing.std)
    assert len(list(private_cache.glob("pets-*.npz"))) == 1
    assert not list(private_cache.glob("*.tmp"))

    # a new process (simulated: empty in-process cache) must not decode again
    _clear_process_cache()
    monkeypatch.setattr(data, "_read_imagefolder", lambda *a: pytest.fail("decoded again instead of using cache"))
    again = load_dataset(str(root))
    assert torch.equal(again.train.images, b.train.images)
    assert again.preprocessing == b.preprocessing


def test_imagefolder_cache_invalidated_by_new_file(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "pets")
    _clear_process_cache()
    assert len(load_dataset(root).train) == 9
    Image.new("RGB", (8, 6)).save(root / "train" / "eel" / "extra.png")
    _clear_process_cache()
    assert len(load_dataset(root).train) == 10


def test_imagefolder_grayscale(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "gray", mode="L", size=(5, 5))
    _clear_process_cache()
    b = load_dataset(root)
    assert b.preprocessing.input_shape == (1, 5, 5)


def test_corrupt_cache_is_rebuilt(tmp_path: Path, private_cache: Path) -> None:
    root = _image_tree(tmp_path / "corrupt")
    _clear_process_cache()
    load_dataset(root)
    (cache_file,) = private_cache.glob("corrupt-*.npz")
    cache_file.write_bytes(b"garbage")
    _clear_process_cache()
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        assert len(load_dataset(root).train) == 9


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), r"no train/ folder.*train/<class>/\*\.jpg"),
        (lambda p: (p / "train" / "a").mkdir(parents=True), r"no test/ folder.*test/<class>/\*\.jpg"),
        (lambda p: [(p / s / "a").mkdir(parents=True) for s in ("train", "test")], "no images in class folders"),
        (lambda p: p.write_text("x"), "is a file"),
    ],
)
def test_bad_paths_raise_dataset_error(tmp_path: Path, setup, match: str) -> None:
    path = tmp_path / "ds"
    setup(path)
    with pytest.raises(DatasetError, match=match):
        load_dataset(path)


def test_unknown_name() -> None:
    with pytest.raises(DatasetError, match="mnist") as e:
        load_dataset("imagenet-1k")
    assert isinstance(e.value, ValueError)


# ------------------------------------------------------- class folders, no split


def _class_tree(root: Path, counts=(10, 10, 5), sizes=((8, 6), (12, 12), (5, 9))) -> Path:
    """root/<class>/*.png and *.jpg, of mixed sizes; every image different (its index is in pixel 0)."""
    rng = np.random.default_rng(1)
    k = 0
    for c, n in zip(("ant", "bee", "cow"), counts):
        (root / c).mkdir(parents=True)
        for i in range(n):
            w, h = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[0, 0] = (k, k, k)
            Image.fromarray(pixels).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
            k += 1
    return root


def test_class_folders_split_stratified_disjoint_and_seeded(tmp_path: Path) -> None:
    root = _class_tree(tmp_path / "zoo")
    files = data._class_folder_files(root, LoadOptions(test_fraction=0.2, split_seed=3))
    test_classes = [c for c, _ in files.test]
    assert (test_classes.count("ant"), test_classes.count("bee"), test_classes.count("cow")) == (2, 2, 1)
    assert not {f for _, f in files.train} & {f for _, f in files.test}
    assert len(files.train) + len(files.test) == 25
    assert data._class_folder_files(root, LoadOptions(test_fraction=0.2, split_seed=3)) == files
    assert data._class_folder_files(root, LoadOptions(test_fraction=0.2, split_seed=4)).test != files.test

    _clear_process_cache()
    b = load_dataset(root, test_fraction=0.2, split_seed=3)
    assert (len(b.train), len(b.test)) == (20, 5) and b.preprocessing.class_names == ("ant", "bee", "cow")
    assert b.train.images.shape[2:] == (6, 8)  # the most common size; the others are resized to it
    train_rows = {bytes(x) for x in b.train.images.numpy()}
    assert not any(bytes(x) in train_rows for x in b.test.images.numpy())
    assert torch.equal(load_dataset(root, test_fraction=0.2, split_seed=3).test.images, b.test.images)
    assert len(load_dataset(root, test_fraction=0.4, split_seed=3).test) == 10  # another split, not the cached one


def test_stratified_split_keeps_a_training_example_per_class_and_refuses_empty_tests() -> None:
    train, test = stratified_split(np.array([0, 0, 1, 2, 2, 2]), 0.5, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(6))
    assert 2 in train and len(test) == 3  # class 1 (one example) stays in training
    with pytest.raises(DatasetError, match="too few examples.*data.test_fraction"):
        stratified_split(np.array([0, 1, 2]), 0.2, seed=0)
    with pytest.raises(DatasetError, match="data.test_fraction must be between 0 and 1"):
        stratified_split(np.array([0, 0]), 1.0, seed=0)


def test_train_folder_without_test_folder_says_both_ways(tmp_path: Path) -> None:
    _class_tree(tmp_path / "ds" / "train")
    with pytest.raises(DatasetError, match="no test/ folder.*class folders right under"):
        load_dataset(tmp_path / "ds")


# ------------------------------------------------------------------ image_size


def test_image_size_resizes_every_source_and_matches_predict(tmp_path: Path) -> None:
    root = _class_tree(tmp_path / "zoo")
    _clear_process_cache()
    b = load_dataset(root, image_size=[5, 7])
    assert b.train.images.shape[1:] == (3, 5, 7) and b.preprocessing.input_shape == (3, 5, 7)
    assert load_dataset(root).train.images.shape[2:] == (6, 8)  # the size is part of the cache key
    # predict prepares a new image exactly as training decoded it (Preprocessing.image_to_uint8)
    prep = Preprocessing.from_dict(json.loads(json.dumps(b.preprocessing.to_dict())))
    files = data._class_folder_files(root, LoadOptions())
    with Image.open(files.train[1][1]) as im:
        assert np.array_equal(prep.image_to_uint8(im), b.train.images[1].numpy())

    grid = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4).repeat(2, 0)
    arrays = data._arrays(grid, [0, 1], grid[:1], [0], ["a", "b"])
    assert data._resized(arrays, (8, 6))["train_x"].shape == (2, 1, 8, 6)
    assert data._resized(arrays, None) is arrays


@pytest.mark.parametrize("size", [[0, 4], [4], [4, 4, 3], [4.5, 4]])
def test_bad_image_size_names_the_key(tmp_path: Path, size) -> None:
    with pytest.raises(DatasetError, match=r"data.image_size must be \[height, width\]"):
        load_dataset(_class_tree(tmp_path / "zoo"), image_size=size)


def test_load_configured_passes_the_data_keys(tmp_path: Path) -> None:
    from pranc_fed.config import config_from_dict
    root = _class_tree(tmp_path / "zoo")
    cfg = config_from_dict({"data": {"dataset": str(root), "image_size": [4, 4], "test_fraction": 0.4}})
    _clear_process_cache()
    b = load_configured(cfg.data)
    assert b.preprocessing.input_shape == (3, 4, 4) and len(b.test) == 10


def test_preflight_tells_to_resize_images_the_model_cannot_take(tmp_path: Path) -> None:
    from pranc_fed.cli import preflight
    from pranc_fed.config import ConfigError, config_from_dict
    root = _class_tree(tmp_path / "zoo", sizes=((12, 12),))
    _clear_process_cache()
    with pytest.raises(ConfigError, match=r"3x12x12 images .* built for 28x28: set data.image_size=\[28, 28\]"):
        preflight(config_from_dict({"data": {"dataset": str(root)}}))
    preflight(config_from_dict({"data": {"dataset": str(root), "image_size": [28, 28]}}))


# ---------------------------------------------------------------- Hugging Face


def _hf_dataset(n: int = 12, image: str = "image", label: str = "label", size=(6, 5)):
    import datasets
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=["no", "yes"])})
    return datasets.Dataset.from_dict({image: images, label: [i % 2 for i in range(n)]}, features=features)


def test_hf_dataset_dict_on_disk_uses_its_splits(tmp_path: Path, private_cache: Path, monkeypatch) -> None:
    import datasets
    datasets.DatasetDict({"train": _hf_dataset(10), "test": _hf_dataset(4)}).save_to_disk(tmp_path / "dd")
    _clear_process_cache()
    b = load_dataset(tmp_path / "dd")
    assert (len(b.train), len(b.test)) == (10, 4) and b.preprocessing.class_names == ("no", "yes")
    assert b.train.images.shape[1:] == (3, 5, 6) and b.test.labels.tolist() == [0, 1, 0, 1]
    image = _hf_dataset(10)[3]["image"]  # the same pixels (same generator seed)
    assert np.array_equal(b.preprocessing.image_to_uint8(image), b.train.images[3].numpy())
    assert len(list(private_cache.glob("hf-dd-*.npz"))) == 1
    _clear_process_cache()
    monkeypatch.setattr(data, "_read_hf", lambda *a: pytest.fail("decoded again instead of using cache"))
    assert torch.equal(load_dataset(tmp_path / "dd").train.images, b.train.images)


def test_hf_single_split_other_columns_is_split_automatically(tmp_path: Path) -> None:
    _hf_dataset(20, image="img", label="fine_label").save_to_disk(tmp_path / "one")
    _clear_process_cache()
    b = load_dataset(tmp_path / "one", image_size=[3, 3], test_fraction=0.2)
    assert (len(b.train), len(b.test)) == (16, 4) and b.test.labels.tolist().count(1) == 2
    assert b.preprocessing.input_shape == (3, 3, 3)

    _hf_dataset(20, image="picture", label="kind").save_to_disk(tmp_path / "odd")
    _clear_process_cache()
    assert len(load_dataset(tmp_path / "odd", image_column="picture", label_column="kind").train) == 16
    # one Image and one ClassLabel column are found without names
    assert len(load_dataset(tmp_path / "odd").train) == 16


def test_hf_bad_columns_and_labels_say_what_to_set(tmp_path: Path) -> None:
    import datasets
    ds = _hf_dataset(6)
    ds.add_column("caption", ["x"] * 6).save_to_disk(tmp_path / "cap")
    _clear_process_cache()
    with pytest.raises(DatasetError, match="data.image_column='nope' is not a column"):
        load_dataset(tmp_path / "cap", image_column="nope")
    with pytest.raises(DatasetError, match="column 'caption' .* not images.*data.image_column"):
        load_dataset(tmp_path / "cap", image_column="caption")
    ds.cast_column("label", datasets.Value("int64")).rename_column("label", "target").add_column(
        "other", [0] * 6).save_to_disk(tmp_path / "nolabel")
    with pytest.raises(DatasetError, match="no label/labels/fine_label column.*data.label_column"):
        load_dataset(tmp_path / "nolabel")
    unlabelled = _hf_dataset(4).cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
    datasets.DatasetDict({"train": _hf_dataset(6), "test": unlabelled}).save_to_disk(tmp_path / "unl")
    with pytest.raises(DatasetError, match=r"test split .* labels \[-1\] outside"):
        load_dataset(tmp_path / "unl")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{}")
    with pytest.raises(DatasetError, match="saved Hugging Face dataset but cannot be loaded"):
        load_dataset(tmp_path / "broken")


def _hub_cache(cache: Path, repo: str, splits: dict) -> None:
    """What datasets.load_dataset(repo) leaves in HF_DATASETS_CACHE: <ns>___<name>/<config>/<version>/<hash>/
    <name>-<split>.arrow and dataset_info.json."""
    namespace, name = repo.split("/")
    snapshot = cache / f"{namespace}___{name}" / "default" / "0.0.0" / "0123abcd"
    snapshot.mkdir(parents=True)
    for split, ds in splits.items():
        ds.save_to_disk(cache / "saved" / split)
        (cache / "saved" / split / "data-00000-of-00001.arrow").rename(snapshot / f"{name}-{split}.arrow")
    info = json.loads((cache / "saved" / "train" / "dataset_info.json").read_text())
    info.update(config_name="default", splits={s: {"name": s, "num_examples": len(d)} for s, d in splits.items()})
    (snapshot / "dataset_info.json").write_text(json.dumps(info))


def test_hf_name_loads_from_the_local_cache_only(tmp_path: Path, monkeypatch) -> None:
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    _hub_cache(tmp_path / "hf", "someone/tiny", {"train": _hf_dataset(8), "test": _hf_dataset(4)})
    offline = datasets.config.HF_HUB_OFFLINE
    _clear_process_cache()
    b = load_dataset("hf:someone/tiny")
    assert (len(b.train), len(b.test), b.source) == (8, 4, "hf:someone/tiny")
    assert datasets.config.HF_HUB_OFFLINE == offline  # forced only during the call
    with pytest.raises(DatasetError, match="'someone/absent' is not in the local cache.*load_dataset\\('someone/absent'\\)"):
        load_dataset("hf:someone/absent")


# ------------------------------------------------------------ torchvision layouts


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_torchvision_fashion_mnist_raw(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    _clear_process_cache()
    b = load_dataset(tmp_path)
    assert b.train.images.shape == (12, 1, 28, 28) and b.test.labels.tolist() == [0, 1, 2, 3]
    assert b.preprocessing.class_names[0] == "T-shirt/top"
    assert load_dataset(tmp_path, image_size=[32, 30]).train.images.shape == (12, 1, 32, 30)
    assert torch.equal(load_dataset(tmp_path, image_size=[28, 28]).train.images, b.train.images)  # its own size


def test_torchvision_cifar10_and_ambiguous_root(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [i, 0]})
    dump("test_batch", {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 2, 3]})
    dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    _clear_process_cache()
    b = load_dataset(tmp_path)
    assert b.train.images.shape == (10, 3, 32, 32) and b.train.labels.tolist()[:4] == [1, 0, 2, 0]
    assert b.num_classes == 10 and len(b.test) == 3

    (tmp_path / "train" / "x").mkdir(parents=True)  # now two datasets under one root
    _clear_process_cache()
    with pytest.raises(DatasetError, match="several datasets"):
        load_dataset(tmp_path)
    assert len(load_dataset(folder).train) == 10  # the dataset folder itself works


class _RunsCode:
    """A pickle that calls a function when loaded: what a crafted CIFAR batch would do."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload", ["code", "list", "garbage"])
def test_a_crafted_cifar_batch_is_refused_without_running_anything(tmp_path: Path, monkeypatch, payload) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    obj = {"code": {"data": _RunsCode(), "labels": [0]}, "list": [1, 2], "garbage": None}[payload]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"\x00not a pickle" if payload == "garbage" else pickle.dumps(obj))
    _clear_process_cache()
    with pytest.raises(DatasetError, match="is not a CIFAR batch"):
        load_dataset(folder)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------- loaders, preprocessing


def _tiny_dataset(n: int = 10) -> TensorImageDataset:
    prep = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (3, 4, 4), ("a", "b"))
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return TensorImageDataset(images, torch.arange(n) % 2, prep)


def test_make_loader_batches() -> None:
    ds = _tiny_dataset()
    batches = list(make_loader(ds, 4, shuffle=False))
    assert [len(y) for _, y in batches] == [4, 4, 2] and len(make_loader(ds, 4, False)) == 3
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 4, 4) and y.dtype == torch.int64
    torch.testing.assert_close(x[1], ds[1][0])
    expected = (ds.images[1, 2].float() / 255 - 0.3) / 0.3
    torch.testing.assert_close(x[1, 2], expected)
    assert [len(y) for _, y in make_loader(ds, 4, shuffle=True, drop_last=True)] == [4, 4]


def test_make_loader_seeded_shuffle() -> None:
    ds = _tiny_dataset(50)

    def order(seed: int) -> list[list[int]]:
        loader = make_loader(ds, 8, shuffle=True, seed=seed)
        # two epochs: each differs, the sequence is reproducible
        return [torch.cat([x[:, 0, 0, 0] for x, _ in loader]).tolist() for _ in range(2)]

    a, b = order(1), order(1)
    assert a == b and a[0] != a[1] and order(2) != a
    seen = torch.cat([y for _, y in make_loader(ds, 8, shuffle=True, seed=1)])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())


def test_make_loader_on_subset() -> None:
    ds = _tiny_dataset()
    nested = Subset(Subset(ds, [9, 8, 7, 6, 5]), [0, 2, 4])  # rows 9, 7, 5
    (x, y), = list(make_loader(nested, 10, shuffle=False))
    torch.testing.assert_close(x, torch.stack([ds[i][0] for i in (9, 7, 5)]))
    assert y.tolist() == [1, 1, 1]


def test_subset_deterministic() -> None:
    ds = _tiny_dataset(30)
    a, b = subset(ds, 10, seed=0), subset(ds, 10, seed=0)
    assert len(a) == 10 and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, subset(ds, 10, seed=1).images)
    assert subset(ds, 100, seed=0) is ds


def test_preprocessing_roundtrip_and_pil() -> None:
    prep = Preprocessing((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (3, 4, 6), ("x", "y"))
    assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    img = Image.new("L", (12, 8), 128)  # grayscale, wrong size -> RGB 4x6
    t = prep.image_to_tensor(img)
    assert t.shape == (3, 4, 6) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.full((3, 4, 6), (128 / 255 - 0.5) / 0.25))
    with pytest.raises(ValueError, match="one per channel"):
        Preprocessing((0.5,), (0.5, 0.5), (2, 4, 4), ())
