"""Use a received .pranc model: inspect it, evaluate it, predict with it.

A .pranc file holds only the basis seed, alpha (K numbers) and the local state (BatchNorm);
the weights theta = theta0 + B @ alpha are regenerated from the seed. Two ways to run it:

* **full reconstruction** (``load_model(path)``): expand theta once and return the plain
  ``nn.Module`` with the weights written into it. Fast per batch; holds every weight.
* **on the fly** (``load_model(path, on_the_fly=True)``): an ``OnTheFlyModel`` whose conv/linear
  layers own no weights. A forward pre-hook generates a layer's weights from the seed
  (theta0[rows] + B[rows, :] @ alpha, streamed in row chunks of ``chunk_mb``) just before the
  layer runs, and a forward hook drops them after, so at most one layer's weights (plus one
  generator chunk) are alive at a time and theta is never held whole. Same logits as full
  reconstruction (up to float32 summation order); every forward call regenerates all layers,
  so it pays one full expansion per batch: use large batches.

Python API::

    import torch
    from pranc_fed.inference import load_model, read_preprocessing, predict_images, inspect_model
    from pranc_fed.pranc import read_pranc_file

    net = load_model("model.pranc")                    # nn.Module in eval mode, weights written
    lite = load_model("model.pranc", on_the_fly=True)  # OnTheFlyModel, same logits, ~one layer in memory
    with torch.inference_mode():
        logits = net(torch.randn(8, 1, 28, 28))
    file = read_pranc_file("model.pranc")              # PrancFile: header and tensors, verified once
    net = load_model(file)                             # not read again (loaders take a path or a PrancFile)
    print(file.arch, file.fingerprint, file.metadata)
    prep = read_preprocessing(file)                    # data.Preprocessing the model was trained with
    for p in predict_images(net, prep, ["digit.png", "more_digits/"], top_k=3):
        print(p.path, p.top)                           # [(class name, index, probability), ...]
    print(inspect_model("model.pranc"))                 # what the file holds, as a dict

``load_model`` builds the architecture from the registry (``models.build_model``) with the
file's ``model_args``; pass ``module=`` for a network of your own with the same structure.
Every defect of the file (truncated, corrupted, unknown or mismatched architecture) raises
``PrancFileError`` or ``FingerprintMismatch``; unreadable inputs raise ``ImageInputError``
(a ``DatasetError``) or ``FileNotFoundError``.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.overrides import TorchFunctionMode

from .basis import (STREAM_THETA0, Fingerprint, FingerprintMismatch, Segment, basis_fingerprint, covered_segments,
                    make_blocks, period_seed, unit_block)
from .data import IMAGE_EXTENSIONS, DatasetError, Preprocessing, TensorImageDataset, make_loader, subset
from .pranc import FILE_FORMAT, PrancFile, PrancFileError, PrancModel, as_pranc_file, read_pranc_file
from .training import evaluate
from .user_code import UserCodeError, is_import_path

__all__ = ["ImageInputError", "OnTheFlyModel", "Prediction", "evaluate_model", "inspect_model", "load_model",
           "predict_images", "read_preprocessing", "collect_images", "format_inspection"]

DEFAULT_CHUNK_MB = 2.0  # generator temporaries: ~2x this, plus unit_block's fixed ~5 MB


class ImageInputError(DatasetError):
    """An input image that cannot be read, or a folder without images."""


# ----------------------------------------------------------------------------- building


class _SkipInitOnMeta(TorchFunctionMode):
    """Skip in-place initialisation of meta tensors (there is no data to fill).

    Building a model on the meta device costs nothing, except that ``normal_`` on meta runs a
    Python reference that imports torch._dynamo (seconds, ~140 MB); this avoids it.
    """

    _INIT_OPS = frozenset({"normal_", "uniform_", "fill_", "zero_", "erfinv_", "mul_", "add_", "clamp_",
                           "copy_", "exponential_", "bernoulli_", "random_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (getattr(func, "__name__", None) in self._INIT_OPS and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


def trust_code_needed(file: PrancFile) -> PrancFileError:
    """The refusal to import the code a file names without the user's say."""
    return PrancFileError(f"{file.path}: its architecture is {file.arch!r}, code of your own that the file names; "
                          "pass --trust-code (trust_code=True in Python) to import and run it, only for a file you trust")


def build_module(file: PrancFile, device: torch.device | str = "cpu", trust_code: bool = False) -> nn.Module:
    """The file's architecture from the registry, with its model_args (meta device allowed). An
    architecture of the user's own (an import path) is imported only with ``trust_code``: a file
    can name any code, and reading one must never run it unasked."""
    from .models import build_model
    if is_import_path(file.arch):
        if not trust_code:
            raise trust_code_needed(file)
        try:
            with torch.device(device), _SkipInitOnMeta():
                return build_model(file.arch, **file.model_args)
        except UserCodeError as e:
            raise PrancFileError(f"{file.path}: {e}") from None
    try:
        with torch.device(device), _SkipInitOnMeta():
            return build_model(file.arch, **file.model_args)
    except (ValueError, TypeError) as e:
        raise PrancFileError(f"{file.path}: cannot build its architecture {file.arch!r} with model_args "
                             f"{file.model_args}: {e}; pass module= for a model outside the registry") from None


def _row_bounds(segments: Sequence[Segment], row0: int, row1: int, device: torch.device) -> torch.Tensor:
    """b_i for theta rows [row0, row1) as float32 (the basis spec's per-layer init bound)."""
    out = torch.empty(row1 - row0, dtype=torch.float32, device=device)
    for s in segments:
        a, b = max(row0, s.offset), min(row1, s.offset + s.numel)
        if a < b:
            out[a - row0:b - row0] = s.bound
    return out


class _StreamingBasis:
    """A basis' fingerprint and theta rows, generated a layer at a time with nothing d-sized held.

    ``Basis`` allocates theta0 and per-row scales for all d rows; on-the-fly inference must not.
    Values come from the public ``unit_block`` times the layer's bound (the spec's float32(b_i * u):
    u is exact in float32, so one float32 multiply rounds the exact product once, as Basis does), so
    the fingerprint (``basis_fingerprint``, as Basis computes it) matches Basis' bit for bit (tested).
    """

    def __init__(self, segments: list[Segment], num_coeffs: int, seed: int, arch: str, layout: str = "global",
                 device: torch.device | str = "cpu"):
        if num_coeffs < 1:
            raise ValueError(f"num_coeffs must be >= 1, got {num_coeffs}")
        self.segments, self.seed, self.device = segments, seed, torch.device(device)
        self.dim = segments[-1].offset + segments[-1].numel
        self.blocks = make_blocks(segments, num_coeffs, layout)
        self.fingerprint = basis_fingerprint(segments, num_coeffs, seed, arch, layout, self._values)

    def _values(self, stream: int, row0: int, row1: int, col0: int, col1: int) -> torch.Tensor:
        """float32(b_i * u) for rows [row0, row1) x cols [col0, col1)."""
        u = unit_block(self.seed, row0, row1, col0, col1, self.device, stream)
        return u.mul_(_row_bounds(self.segments, row0, row1, self.device)[:, None])

    @torch.no_grad()
    def layer_theta(self, alpha: torch.Tensor, row0: int, row1: int, chunk_bytes: int) -> torch.Tensor:
        """theta[row0:row1] = theta0[rows] + B[rows, :] @ alpha, streamed in row chunks.

        The same products as ``Basis.expand`` restricted to these rows (chunk boundaries differ,
        so only the float32 summation order of the matrix-vector product can differ).
        """
        bounds = _row_bounds(self.segments, row0, row1, self.device)
        theta = unit_block(self.seed, row0, row1, 0, 1, self.device, STREAM_THETA0)[:, 0].mul_(bounds)
        for block in self.blocks:
            a, b = max(row0, block.row0), min(row1, block.row1)
            if a >= b:
                continue
            cols = block.col1 - block.col0
            # values (float32) + the generator's temporaries: 8 bytes per element, like Basis.chunks
            step = max(4, chunk_bytes // (8 * cols) // 4 * 4)
            coeffs = alpha[block.col0:block.col1]
            for r0 in range(a, b, step):
                r1 = min(b, r0 + step)
                values = unit_block(self.seed, r0, r1, block.col0, block.col1, self.device)
                values.mul_(bounds[r0 - row0:r1 - row0, None])
                theta[r0 - row0:r1 - row0].addmv_(values, coeffs)
                del values
        return theta


@dataclass
class _Layer:
    name: str
    row0: int
    row1: int
    params: list[tuple[str, int, int, tuple[int, ...]]] = field(default_factory=list)  # (attr, start, stop, shape)


class OnTheFlyModel(nn.Module):
    """Inference wrapper that generates each conv/linear layer's weights just before it runs.

    The wrapped module's covered parameters are removed (it owns no conv/linear weights); a
    forward pre-hook on each such layer sets them as plain tensors computed from the seed, and a
    forward hook deletes them after the layer ran. Local state (BatchNorm) stays in the module.
    Inference only: the generated weights do not require grad (input gradients still flow).
    """

    def __init__(self, module: nn.Module, alpha: torch.Tensor, seed: int, arch: str, layout: str = "global",
                 local_state: dict[str, torch.Tensor] | None = None, chunk_mb: float = DEFAULT_CHUNK_MB,
                 device: torch.device | str = "cpu"):
        super().__init__()
        device = torch.device(device)
        segments = covered_segments(module)
        self.basis = _StreamingBasis(segments, int(alpha.numel()), seed, arch, layout, device)
        self.chunk_bytes = int(chunk_mb * 2 ** 20)
        self.register_buffer("alpha", alpha.detach().to(device, torch.float32).reshape(-1))
        modules = dict(module.named_modules())
        layers: dict[str, _Layer] = {}
        for s in segments:
            layer = layers.setdefault(s.layer, _Layer(s.layer, s.offset, s.offset))
            if s.offset != layer.row1:
                raise ValueError(f"parameters of layer {s.layer!r} are not contiguous in named_parameters() order")
            attr = s.name[len(s.layer) + 1:] if s.layer else s.name
            layer.params.append((attr, s.offset, s.offset + s.numel, s.shape))
            layer.row1 = s.offset + s.numel
            # The layer owns no weights between calls (None, as for a conv without bias; the hooks put
            # plain tensors in the instance dict, which attribute lookup finds first).
            modules[s.layer]._parameters[attr] = None
        self.layers = list(layers.values())
        self.live_bytes = 0  # bytes of generated weights alive right now (0 between layers)
        self.peak_live_bytes = 0
        for layer in self.layers:
            target = modules[layer.name]
            target.register_forward_pre_hook(self._make_pre_hook(layer))
            target.register_forward_hook(self._make_post_hook(layer), always_call=True)
        if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
            module.to_empty(device=device)
        self.module = module.to(device)
        if local_state is not None:
            self.load_local_state(local_state)
        self.eval()

    def load_local_state(self, state: dict[str, torch.Tensor]) -> None:
        """Everything outside the basis (BatchNorm affine params and statistics), by state_dict name."""
        device = self.alpha.device
        try:
            self.module.load_state_dict({n: t.to(device) for n, t in state.items()}, strict=True)
        except RuntimeError as e:
            raise ValueError(f"local state does not fit the module: {e}") from None

    @classmethod
    def from_file(cls, source: str | Path | PrancFile, module: nn.Module | None = None, expect: Any = None,
                  chunk_mb: float = DEFAULT_CHUNK_MB, device: torch.device | str = "cpu",
                  trust_code: bool = False) -> "OnTheFlyModel":
        """Open a .pranc file (a path or a read PrancFile) without ever reconstructing the whole model;
        ``trust_code`` as for build_module."""
        file = as_pranc_file(source)
        if file.history is not None:
            raise PrancFileError(f"{file.path} was trained in {file.periods} re-seeded periods, which on-the-fly "
                                 "inference does not replay; evaluate it without --on-the-fly")
        if module is None:
            module = build_module(file, "meta", trust_code)  # no dense weights are ever allocated
        try:
            # a copy: on the CPU the buffer would otherwise share the file's alpha
            model = cls(module, file.alpha.clone(), file.seed, file.arch, file.layout, None, chunk_mb, device)
            model.basis.fingerprint.check(file.fingerprint, what=f"{file.path} holds")  # before the local state
            if expect is not None:
                (Fingerprint.parse(expect) if isinstance(expect, str) else expect).check(
                    model.basis.fingerprint, f"{file.path} holds")
            model.load_local_state(file.local_state)
        except FingerprintMismatch:
            raise
        except ValueError as e:
            raise PrancFileError(f"{file.path} does not fit architecture {file.arch!r}: {e}") from None
        return model

    @property
    def fingerprint(self):
        return self.basis.fingerprint

    def layer_weights(self, layer: _Layer) -> dict[str, torch.Tensor]:
        theta = self.basis.layer_theta(self.alpha, layer.row0, layer.row1, self.chunk_bytes)
        return {attr: theta[a - layer.row0:b - layer.row0].view(shape) for attr, a, b, shape in layer.params}

    def _make_pre_hook(self, layer: _Layer) -> Callable:
        def pre_hook(target: nn.Module, args: Any) -> None:
            weights = self.layer_weights(layer)
            for attr, value in weights.items():
                object.__setattr__(target, attr, value)
            self.live_bytes += (layer.row1 - layer.row0) * 4
            self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
        return pre_hook

    def _make_post_hook(self, layer: _Layer) -> Callable:
        def post_hook(target: nn.Module, args: Any, output: Any) -> None:
            for attr, *_ in layer.params:
                target.__dict__.pop(attr, None)
            self.live_bytes -= (layer.row1 - layer.row0) * 4
        return post_hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def extra_repr(self) -> str:
        return (f"on the fly: {len(self.layers)} layers, {self.basis.dim:,} weights generated from "
                f"{self.fingerprint}")

    @property
    def largest_layer_bytes(self) -> int:
        """float32 bytes of the largest layer's weights: what is alive at most at once."""
        return max(layer.row1 - layer.row0 for layer in self.layers) * 4


# ------------------------------------------------------------------------------ loading


def load_model(source: str | Path | PrancFile, on_the_fly: bool = False, device: torch.device | str = "cpu",
               module: nn.Module | None = None, expect: Any = None, budget_mb: float = 64.0,
               cache: str = "none", chunk_mb: float = DEFAULT_CHUNK_MB, trust_code: bool = False) -> nn.Module:
    """A .pranc file (its path, or the PrancFile ``read_pranc_file`` returned) as an nn.Module in eval
    mode, ready for inference.

    on_the_fly=False: the registry architecture (or ``module``) with theta0 + B @ alpha written into
    it (expanded once, streaming the basis in chunks of ``budget_mb``; ``cache="auto"`` keeps the
    basis in memory when it fits, which only pays off if you expand again). on_the_fly=True: an
    ``OnTheFlyModel`` (see the module docstring), chunks of ``chunk_mb``. ``expect`` (a fingerprint)
    rejects a file made with another seed, K, layout or architecture. For the file's header as well,
    read it first: ``file = read_pranc_file(path); net = load_model(file)``; the file is read once.
    A file whose architecture is the import path of the user's own code is built by importing it only
    with ``trust_code=True`` (or pass ``module=``).
    """
    file = as_pranc_file(source)
    if on_the_fly:
        net = OnTheFlyModel.from_file(file, module, expect, chunk_mb, device, trust_code)
    else:
        if module is None:
            module = build_module(file, trust_code=trust_code)
        try:
            pranc = PrancModel.load(file, module=module, expect=expect, device=device, budget_mb=budget_mb,
                                    cache=cache)
        except (PrancFileError, FingerprintMismatch):
            raise
        except ValueError as e:  # local state that does not fit the architecture
            raise PrancFileError(f"{file.path} does not fit architecture {file.arch!r}: {e}") from None
        net = pranc.materialize()
        for p in net.parameters():
            p.requires_grad_(True)  # a plain module again (PrancModel froze the covered weights)
        del pranc
    return net.eval()


def read_preprocessing(source: str | Path | PrancFile) -> Preprocessing | None:
    """The preprocessing recorded in a .pranc file, a path or a read PrancFile (None when it records none)."""
    prep = as_pranc_file(source).preprocessing
    if not prep:
        return None
    try:
        return Preprocessing.from_dict(prep)
    except (KeyError, TypeError, ValueError) as e:
        raise PrancFileError(f"malformed preprocessing in the model file: {e!r}") from None


# ------------------------------------------------------------------------------ inspect


def _dense_state_dict_bytes(module: nn.Module) -> int:
    """Size of torch.save(state_dict) for this architecture (uncompressed zip: values do not matter)."""
    module = module.to_empty(device="cpu") if any(p.is_meta for p in module.parameters()) else module
    sink = io.BytesIO()
    torch.save(module.state_dict(), sink)
    return sink.tell()


def inspect_model(source: str | Path | PrancFile, trust_code: bool = False) -> dict[str, Any]:
    """What a .pranc file (a path or a read PrancFile) holds; regenerates the basis fingerprint.
    A file saved from a module the registry does not know (PrancModel(module, K) without arch=) is
    reported from its header and tensors alone: only PrancModel.load with the module can check it.
    One whose architecture is an import path (a model of the user's own) is reported from its header
    too, unless ``trust_code`` lets it import that code and check the fingerprint.

    Raises PrancFileError (truncated, corrupted, unfit for its architecture) or FingerprintMismatch.
    """
    file = as_pranc_file(source)  # reading verifies the sha256 checksum
    info = _file_facts(file)
    if is_import_path(file.arch) and not trust_code:
        return info | {"note": f"architecture {file.arch!r} is the import path of code of your own: not imported; "
                               "--trust-code imports it (and checks the fingerprint), as evaluate and predict need"}
    if not registered(file.arch) and not is_import_path(file.arch):
        return info | {"note": f"architecture {file.arch!r} is not in pranc_fed.models: load it in Python with "
                               f"PrancModel.load(path, module=YourModule()), which also checks the fingerprint"}
    module = build_module(file, "meta", trust_code)
    segments = covered_segments(module)
    basis = _StreamingBasis(segments, file.num_coeffs, period_seed(file.seed, file.periods), file.arch, file.layout)
    basis.fingerprint.check(file.fingerprint, what=f"{file.path} holds")  # so the header's dim is the basis's
    covered_names = {s.name for s in segments}
    expected_local = {n for n in module.state_dict() if n not in covered_names}
    if set(file.local_state) != expected_local:
        raise PrancFileError(f"{file.path}: its local state does not fit architecture {file.arch!r} "
                             f"(missing {sorted(expected_local - set(file.local_state))}, "
                             f"unexpected {sorted(set(file.local_state) - expected_local)})")
    dense = _dense_state_dict_bytes(module)
    return info | {"fingerprint_verified": True, "dense_state_dict_bytes": dense, "dense_over_file": dense / file.nbytes}


def registered(arch: str) -> bool:
    from .models import MODELS
    return arch.lower() in MODELS


def _file_facts(file: PrancFile) -> dict[str, Any]:
    """What the header and tensors say, before anything is checked against the architecture."""
    alpha, history, local = file.alpha, file.history, file.local_state
    local_values = sum(t.numel() for t in local.values() if t.is_floating_point())
    dim = file.header["dim"]
    return {
        "path": str(file.path), "file_bytes": file.nbytes, "checksum": "ok", "file_format": FILE_FORMAT,
        "spec": file.spec, "arch": file.arch, "model_args": file.model_args,
        "seed": file.seed, "periods": file.periods,
        "history_bytes": 0 if history is None else history.numel() * 4,
        "num_coeffs": file.num_coeffs, "layout": file.layout,
        "fingerprint": file.fingerprint, "fingerprint_verified": False,
        "alpha_dtype": str(alpha.dtype).removeprefix("torch."), "alpha_bytes": alpha.numel() * alpha.element_size(),
        "local_tensors": len(local), "local_values": local_values,
        "local_bytes": sum(t.numel() * t.element_size() for t in local.values()),
        "covered_params": dim, "total_params": dim + local_values,
        "dense_state_dict_bytes": None, "dense_over_file": None,
        "preprocessing": file.preprocessing, "metadata": file.metadata,
    }


def format_inspection(info: dict[str, Any]) -> str:
    prep = info["preprocessing"]
    args = ", ".join(f"{k}={v}" for k, v in info["model_args"].items())
    if prep:
        names = prep["class_names"]
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} classes)" if len(names) > 10 else "")
        prep_line = (f"{'x'.join(map(str, prep['input_shape']))}, mean {[round(m, 4) for m in prep['mean']]}, "
                     f"std {[round(s, 4) for s in prep['std']]}; classes: {shown}")
    else:
        prep_line = "none recorded (predict needs it)"
    rows = [
        ("file", f"{info['path']}  {info['file_bytes']:,} bytes, sha256 checksum ok"),
        ("format", f"pranc file format {info['file_format']}, basis spec v{info['spec']}"),
        ("architecture", f"{info['arch']} ({args})" if args else info["arch"]),
        ("basis", f"seed {info['seed']}, K = {info['num_coeffs']:,}, layout {info['layout']}"),
        ("fingerprint", f"{info['fingerprint']} " + ("(regenerated from the seed: ok)" if info["fingerprint_verified"]
                                                      else "(not checked: the architecture is not imported)"
                                                      if is_import_path(info["arch"])
                                                      else "(not checked: the architecture is not in the registry)")),
        ("alpha", f"{info['num_coeffs']:,} x {info['alpha_dtype']} ({info['alpha_bytes']:,} bytes)"),
        *([("periods", f"{info['periods']} re-seeded periods: history of {info['periods']} x {info['num_coeffs']:,} "
                        f"float32 ({info['history_bytes']:,} bytes)")] if info["periods"] else []),
        ("local params", f"{info['local_tensors']} tensors, {info['local_values']:,} values "
                         f"({info['local_bytes']:,} bytes)" if info["local_tensors"] else "none"),
        ("expands to", f"{info['total_params']:,} parameters ({info['covered_params']:,} from the basis + "
                       f"{info['local_values']:,} local)"),
        *([("dense model", f"{info['dense_state_dict_bytes']:,} bytes as torch.save(state_dict): "
                           f"this file is {info['dense_over_file']:.1f}x smaller")] if info["dense_state_dict_bytes"] else []),
        ("preprocessing", prep_line),
    ]
    if info["metadata"]:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in info["metadata"].items())))
    if info.get("note"):
        rows.append(("note", info["note"]))
    return "\n".join(f"{k:<14} {v}" for k, v in rows)


# ----------------------------------------------------------------------------- evaluate


def dataset_for_model(split: TensorImageDataset, prep: Preprocessing | None, num_classes: int | None,
                      source: str = "the dataset") -> TensorImageDataset:
    """The split normalised the way the model was trained; a clear error when it does not fit."""
    if prep is None:
        return split
    shape = tuple(split.images.shape[1:])
    if shape != prep.input_shape:
        raise DatasetError(f"{source} has {'x'.join(map(str, shape))} images but the model takes "
                           f"{'x'.join(map(str, prep.input_shape))} inputs: evaluate it on the data it was trained for")
    top = int(split.labels.max()) + 1 if len(split) else 0
    if num_classes is not None and top > num_classes:
        raise DatasetError(f"{source} has labels up to {top - 1} but the model predicts {num_classes} classes")
    return TensorImageDataset(split.images, split.labels, prep)


@torch.inference_mode()
def evaluate_model(net: nn.Module, dataset: TensorImageDataset, batch_size: int = 1000,
                   device: torch.device | str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Cross-entropy loss and accuracy of ``net`` over ``dataset`` (training.evaluate's loop);
    progress(done, total) after each batch."""
    n = len(dataset)
    loss, accuracy = evaluate(net, make_loader(dataset, batch_size, shuffle=False, device=device), device,
                              None if progress is None else lambda done: progress(done, n))
    return {"loss": loss, "accuracy": accuracy, "examples": n}


def evaluate_file(path: str | Path, data: str, split: str = "test", on_the_fly: bool = False,
                  batch_size: int = 1000, limit: int | None = None, seed: int = 0,
                  device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None,
                  **load_kwargs: Any) -> dict[str, Any]:
    """`pranc-fed evaluate`: the model in ``path`` on ``split`` of dataset ``data``.

    ``limit`` draws that many examples as ``data.test_subset`` does (``subset(..., seed)``).
    """
    from .data import load_dataset
    if split not in ("test", "train"):
        raise DatasetError(f"split must be test or train, got {split!r}")
    file = read_pranc_file(path)
    prep = read_preprocessing(file)
    # Image files are decoded at the size the model was trained on, as predict does (a loader of the
    # user's own gives its tensors as they are).
    bundle = load_dataset(data, image_size=None if prep is None or is_import_path(data) else prep.input_shape[1:])
    rows = bundle.test if split == "test" else bundle.train
    if limit is not None:
        rows = subset(rows, limit, seed)
    rows = dataset_for_model(rows, prep, file.model_args.get("num_classes"), f"{data} ({split})")
    if prep is not None and tuple(prep.class_names) != tuple(bundle.preprocessing.class_names):
        print("note: the dataset's class names differ from the model's; labels are compared by index",
              file=sys.stderr)
    started = time.perf_counter()
    net = load_model(file, on_the_fly=on_the_fly, device=device, **load_kwargs)
    loaded = time.perf_counter()
    result = evaluate_model(net, rows, batch_size, device, progress)
    return {**result, "model": str(path), "data": bundle.source, "split": split,
            "mode": "on-the-fly" if on_the_fly else "full", "load_seconds": loaded - started,
            "eval_seconds": time.perf_counter() - loaded}


# ------------------------------------------------------------------------------ predict


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named directly, plus every image under named folders (sorted, recursive)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"image path {p} does not exist")
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not inside:
                raise ImageInputError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            found.extend(inside)
        else:
            found.append(p)
    return found


def load_image(path: Path, prep: Preprocessing) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return prep.image_to_tensor(image)
    except (UnidentifiedImageError, OSError) as e:
        raise ImageInputError(f"cannot read image {path}: {e}") from None


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, int, float]]  # (class name, class index, probability), most likely first

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": [{"class": c, "index": i, "probability": p} for c, i, p in self.top]}


@torch.inference_mode()
def predict_images(net: nn.Module, prep: Preprocessing, paths: Iterable[str | Path], top_k: int = 3,
                   batch_size: int = 256, device: torch.device | str = "cpu") -> list[Prediction]:
    """Top-k classes with softmax probabilities for image files and folders of images."""
    files = collect_images(paths)
    names = list(prep.class_names)
    net.eval()
    out: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        x = torch.stack([load_image(f, prep) for f in batch]).to(device)
        probs = torch.softmax(net(x).float(), dim=1)
        k = max(1, min(top_k, probs.shape[1]))
        values, indices = probs.topk(k, dim=1)
        for f, v, i in zip(batch, values.tolist(), indices.tolist()):
            out.append(Prediction(str(f), [(names[j] if j < len(names) else str(j), j, p) for j, p in zip(i, v)]))
    return out


def predict_file(path: str | Path, images: Sequence[str | Path], top_k: int = 3, on_the_fly: bool = False,
                 batch_size: int = 256, device: torch.device | str = "cpu", **load_kwargs: Any) -> list[Prediction]:
    """`pranc-fed predict`: images are prepared with the preprocessing recorded in the file."""
    file = read_pranc_file(path)
    prep = read_preprocessing(file)
    if prep is None:
        raise PrancFileError(f"{path} records no preprocessing (it was saved without preprocessing=...), "
                             "so its input size and normalisation are unknown; re-save it with them")
    dataset = file.metadata.get("dataset")
    if isinstance(dataset, str) and is_import_path(dataset):
        raise PrancFileError(f"{path} was trained on the tensors of your own loader {dataset!r}; predict decodes "
                             "image files and cannot know how that loader made its inputs: use "
                             f"`pranc-fed evaluate {path} --data {dataset} --trust-code`, or load_model in Python")
    collect_images(images)  # a missing path fails before the model is rebuilt
    net = load_model(file, on_the_fly=on_the_fly, device=device, **load_kwargs)
    return predict_images(net, prep, images, top_k, batch_size, device)
