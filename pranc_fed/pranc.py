"""PrancModel: any nn.Module whose conv/linear weights are theta0 + B @ alpha, and .pranc files.

The wrapped module keeps its covered weights frozen (holding theta0, so it is a valid start
model on its own); forward expands alpha through autograd so ``loss.backward()`` fills
``alpha.grad`` = B^T grad_theta. Everything else in the module (normalisation affine params,
running statistics) is "local": trained normally and stored densely.

.pranc file (format 1), no pickle anywhere, so loading an untrusted file runs no code:

    b"PRANC\\0"  uint16 format  uint32 header_len  header (UTF-8 JSON)  payload  sha256(all before)

The header names the basis (spec, arch, seed, K, layout, fingerprint), the model's build
arguments, the preprocessing the model was trained with, and the tensors in the payload
(alpha first, then local state) as [name, dtype, shape]; the payload is their raw
little-endian bytes in that order. A model trained in re-seeded periods also holds `periods`
(n) in the header and a `history` tensor (n x K float32, the folded alphas): its basis is
period n's (seed `period_seed(seed, n)`, which the fingerprint names) around theta0_n.
``read_pranc_file`` parses and verifies a file into a PrancFile, which every loader also accepts.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import struct
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from . import quoted
from .basis import SPEC_VERSION, full_rank_upto, Basis, Fingerprint, expand_differentiable, period_seed
from .models import build_model

MAGIC = b"PRANC\0"
FILE_FORMAT = 1
_PREFIX = struct.Struct("<6sHI")
_DIGEST_BYTES = 32
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
ALPHA_DTYPES = ("float32", "float16")  # what alpha may be stored as


class PrancFileError(ValueError):
    """A .pranc file that is truncated, corrupted, or of an unsupported format."""


class PrancModel(nn.Module):
    def __init__(self, module: nn.Module, num_coeffs: int, seed: int = 0, arch: str | None = None,
                 layout: str = "global", budget_mb: float = 2048, cache: str = "auto",
                 device: torch.device | str | None = None, cache_dtype: str = "float32"):
        super().__init__()
        device = torch.device(device) if device is not None else next(module.parameters()).device
        self.arch = arch or type(module).__name__.lower()
        self.module = module.to(device)
        self.seed = seed
        self._basis_args = {"layout": layout, "budget_mb": budget_mb, "cache": cache, "device": device,
                            "cache_dtype": cache_dtype}
        self.basis = Basis.for_module(module, num_coeffs, seed, self.arch, **self._basis_args)
        self.history: list[torch.Tensor] = []  # the folded alphas of earlier re-seeding periods
        self.seed_fingerprint = self.basis.fingerprint  # of period 0: names the run whatever the period
        self.alpha = nn.Parameter(torch.zeros(num_coeffs, device=device))
        self.covered_names = [s.name for s in self.basis.segments]
        covered = set(self.covered_names)
        for name, param in module.named_parameters():
            if name in covered:
                param.requires_grad_(False)
        self.load_theta(self.basis.theta0)

    @torch.no_grad()
    def advance(self, folded_alpha: torch.Tensor) -> None:
        """End the period: theta0 <- fold(folded_alpha) (Basis.fold), the next period's basis, alpha = 0."""
        theta0 = self.basis.fold(folded_alpha)
        self.history.append(folded_alpha.detach().to("cpu", torch.float32).clone())
        self._enter(period_seed(self.seed, len(self.history)), theta0)

    @torch.no_grad()
    def rewind(self) -> None:
        """Back to period 0: the seed's own basis and theta0, alpha = 0."""
        self.history = []
        self._enter(self.seed, None)

    def sync_history(self, history: np.ndarray) -> None:
        """Reach the period that `history` (n x K folded alphas) describes, replaying only what is new."""
        known = [h.numpy() for h in self.history]
        if len(known) > len(history) or any(not np.array_equal(a, b) for a, b in zip(known, history)):
            self.rewind()
            known = []
        for h in history[len(known):]:
            self.advance(torch.from_numpy(np.ascontiguousarray(h, dtype=np.float32)))

    def _enter(self, seed: int, theta0: torch.Tensor | None) -> None:
        self.basis = Basis.for_module(self.module, self.num_coeffs, seed, self.arch, **self._basis_args,
                                      share=not self.history)
        if theta0 is not None:
            self.basis.theta0 = theta0
        self.load_theta(self.basis.theta0)
        self.alpha.zero_()

    @property
    def num_coeffs(self) -> int:
        return self.basis.num_coeffs

    @property
    def fingerprint(self) -> Fingerprint:
        return self.basis.fingerprint

    def local_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside the basis (normalisation affine params)."""
        covered = set(self.covered_names)
        return [p for n, p in self.module.named_parameters() if n not in covered]

    def local_state(self) -> dict[str, torch.Tensor]:
        """Everything the basis does not cover: local params and buffers, by state_dict name."""
        covered = set(self.covered_names)
        return {n: t.detach() for n, t in self.module.state_dict().items() if n not in covered}

    def load_local_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.local_state())
        if set(state) != expected:
            raise ValueError(f"local state keys differ: missing {sorted(expected - set(state))}, "
                             f"unexpected {sorted(set(state) - expected)}")
        self.module.load_state_dict(state, strict=False)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {s.name: theta[s.offset:s.offset + s.numel].view(s.shape) for s in self.basis.segments}

    @torch.no_grad()
    def load_theta(self, theta: torch.Tensor) -> None:
        """Write theta into the wrapped module's (frozen) covered weights."""
        params = dict(self.module.named_parameters())
        for name, value in self.unflatten(theta).items():
            params[name].copy_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = expand_differentiable(self.basis, self.alpha)
        return functional_call(self.module, self.unflatten(theta), (x,), strict=False)

    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """The wrapped module with theta0 + B @ alpha written into it: a plain nn.Module for inference."""
        self.load_theta(self.basis.expand(self.alpha))
        return self.module

    def save(self, path: str | Path, alpha_dtype: str = "float32", model_args: dict | None = None,
             preprocessing: dict | None = None, metadata: dict | None = None) -> int:
        """Write a .pranc file; returns its size in bytes."""
        if alpha_dtype not in ALPHA_DTYPES:
            raise ValueError(f"alpha_dtype must be one of {', '.join(ALPHA_DTYPES)}, got {alpha_dtype!r}")
        tensors = {"alpha": self.alpha.detach().to(_DTYPES[alpha_dtype])} | self.local_state()
        if self.history:
            tensors["history"] = torch.stack(self.history)
        fp = self.fingerprint
        header = {
            "spec": fp.spec, "arch": fp.arch, "seed": self.seed, "periods": len(self.history), "num_coeffs": fp.num_coeffs,
            "layout": fp.layout, "dim": fp.dim, "fingerprint": str(fp),
            "model_args": model_args or {}, "preprocessing": preprocessing, "metadata": metadata or {},
            "tensors": [[n, _dtype_name(t), list(t.shape)] for n, t in tensors.items()],
        }
        blob = write_pranc_bytes(header, tensors)
        Path(path).write_bytes(blob)
        return len(blob)

    @classmethod
    def load(cls, source: str | Path | PrancFile, module: nn.Module | None = None,
             expect: Fingerprint | str | None = None, device: torch.device | str = "cpu", budget_mb: float = 2048,
             cache: str = "auto", trust_code: bool = False) -> "PrancModel":
        """Rebuild a model from a .pranc file: its path, or the PrancFile that read_pranc_file returned
        (read it first when you also want its header: the file is then parsed and verified once).

        Without ``module`` the architecture is built from the registry with the file's model_args; an
        architecture that is an import path (code of the user's own) is imported only with ``trust_code``.
        ``expect`` (a fingerprint) rejects a file made with another seed, K, layout or architecture.
        """
        file = as_pranc_file(source)
        if module is None:
            from .inference import build_module  # one place decides whether a file's code may run
            module = build_module(file, device, trust_code)
        model = cls(module, file.num_coeffs, file.seed, file.arch, file.layout,
                    budget_mb=budget_mb, cache=cache, device=device)
        if file.history is not None:
            model.sync_history(file.history.numpy())
        model.fingerprint.check(file.fingerprint, what=f"{file.path} holds")
        if expect is not None:
            (Fingerprint.parse(expect) if isinstance(expect, str) else expect).check(model.fingerprint, f"{file.path} holds")
        with torch.no_grad():
            model.alpha.copy_(file.alpha.float())
        model.load_local_state({n: t.to(device) for n, t in file.local_state.items()})
        return model


@dataclass(frozen=True, eq=False)
class PrancFile:
    """A .pranc file as read_pranc_file parsed and verified it (checksum, header fields, tensors).

    Every loader (``PrancModel.load``, ``inference.load_model``, ``OnTheFlyModel.from_file``,
    ``inference.inspect_model``) takes one in place of a path::

        file = read_pranc_file("model.pranc")
        net = load_model(file)                  # not read again
        print(file.fingerprint, file.preprocessing, file.header["metadata"])
    """
    path: Path
    header: dict[str, Any] = field(repr=False)           # the JSON header as written (module docstring)
    tensors: dict[str, torch.Tensor] = field(repr=False)  # in file order: alpha, the local state, history
    nbytes: int                                          # the file's size

    @property
    def arch(self) -> str:
        return self.header["arch"]

    @property
    def model_args(self) -> dict[str, int]:
        return self.header["model_args"]

    @property
    def spec(self) -> int:
        return self.header["spec"]

    @property
    def seed(self) -> int:
        """The seed of period 0 (the basis in use is period_seed(seed, periods)'s)."""
        return self.header["seed"]

    @property
    def periods(self) -> int:
        return self.header.get("periods", 0)  # files written before re-seeding have none

    @property
    def num_coeffs(self) -> int:
        return self.header["num_coeffs"]

    @property
    def layout(self) -> str:
        return self.header["layout"]

    @property
    def fingerprint(self) -> str:
        """The basis fingerprint the writer recorded; loading checks it against the regenerated one."""
        return self.header["fingerprint"]

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        return self.header.get("preprocessing")

    @property
    def metadata(self) -> dict[str, Any]:
        return self.header["metadata"]

    @property
    def alpha(self) -> torch.Tensor:
        return self.tensors["alpha"]

    @property
    def history(self) -> torch.Tensor | None:
        """periods x K float32, the folded alphas of the re-seeded periods; None without periods."""
        return self.tensors.get("history")

    @property
    def local_state(self) -> dict[str, torch.Tensor]:
        """Everything the basis does not cover (BatchNorm parameters and statistics), by state_dict name."""
        return {n: t for n, t in self.tensors.items() if n not in ("alpha", "history")}


def _dtype_name(t: torch.Tensor) -> str:
    for name, dtype in _DTYPES.items():
        if t.dtype == dtype:
            return name
    raise ValueError(f"cannot store a tensor of dtype {t.dtype} in a .pranc file")


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def write_pranc_bytes(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    payload = b"".join(_little_endian(t.detach().cpu().numpy()).tobytes() for t in tensors.values())
    body = _PREFIX.pack(MAGIC, FILE_FORMAT, len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def read_pranc_file(path: str | Path) -> PrancFile:
    """Parse and verify a .pranc file; every defect is a PrancFileError naming the file."""
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise PrancFileError(f"cannot read model file {path}: {e.strerror}") from None
    if len(blob) < _PREFIX.size + _DIGEST_BYTES or blob[:len(MAGIC)] != MAGIC:
        raise PrancFileError(f"{path} is not a .pranc model file (bad magic or too short)")
    body, digest = blob[:-_DIGEST_BYTES], blob[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise PrancFileError(f"{path} is corrupted or truncated: its checksum does not match; get a fresh copy")
    _, fmt, head_len = _PREFIX.unpack_from(body)
    if fmt != FILE_FORMAT:
        raise PrancFileError(f"{path} has file format {fmt}; this pranc-fed reads format {FILE_FORMAT}")
    if _PREFIX.size + head_len > len(body):
        raise PrancFileError(f"{path}: its header runs past the end of the file")
    try:
        header = json.loads(body[_PREFIX.size:_PREFIX.size + head_len])
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise PrancFileError(f"{path} has a malformed header: not JSON ({type(e).__name__})") from None
    if isinstance(header, dict) and "spec" in header and header["spec"] != SPEC_VERSION and _is_int(header["spec"]):
        raise PrancFileError(f"{path} was written with basis spec v{header['spec']}; this pranc-fed implements "
                             f"v{SPEC_VERSION}: use a pranc-fed release that implements v{header['spec']}")
    problem = _header_problem(header, len(body))
    if problem:
        raise PrancFileError(f"{path} has a malformed header: {problem}")
    specs = [(n, _DTYPES[d], tuple(s)) for n, d, s in header["tensors"]]
    tensors, offset = {}, _PREFIX.size + head_len
    for name, dtype, shape in specs:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np_dtype.itemsize
        if offset + nbytes > len(body):
            raise PrancFileError(f"{path}: tensor {name!r} runs past the end of the payload")
        array = np.frombuffer(body, dtype=np_dtype, count=count, offset=offset).reshape(shape)
        tensors[name] = torch.from_numpy(array.astype(array.dtype.newbyteorder("=")))
        offset += nbytes
    if offset != len(body):
        raise PrancFileError(f"{path}: {len(body) - offset} unexplained bytes after the tensors")
    if "alpha" not in tensors or tensors["alpha"].shape != (header["num_coeffs"],):
        raise PrancFileError(f"{path}: alpha is missing or does not have num_coeffs={header['num_coeffs']} values")
    periods = header.get("periods", 0)  # checked by _header_problem
    history = tensors.get("history")
    if periods and (history is None or history.shape != (periods, header["num_coeffs"]) or history.dtype != torch.float32):
        raise PrancFileError(f"{path}: periods={periods!r} needs a float32 history of {periods} x {header['num_coeffs']}")
    if not periods and history is not None:
        raise PrancFileError(f"{path}: a history tensor but periods={periods!r}")
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise PrancFileError(f"{path}: tensor {name!r} holds NaN or Inf values")
    return PrancFile(Path(path), header, tensors, len(blob))


def as_pranc_file(source: str | Path | PrancFile) -> PrancFile:
    """What a loader was given: a file already read, or a path to read."""
    return source if isinstance(source, PrancFile) else read_pranc_file(source)


# Limits a real model stays far inside; a header beyond them is refused before anything is allocated.
MAX_NUM_COEFFS, MAX_PERIODS, MAX_DIM, MAX_TENSORS = 10**8, 10**6, 10**10, 10_000
MAX_MODEL_ARG, MAX_TEXT = 2**16, 1000
_MODEL_ARGS = tuple(name for name in inspect.signature(build_model).parameters if name != "arch")
_short = partial(quoted, head=60, tail=20)  # a header value in an error message: about a line of it


def _is_int(value: Any, low: int = 0, high: int = 2**64 - 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def _is_layout(value: Any) -> bool:
    try:
        return _is_text(value) and full_rank_upto(value) >= 0
    except ValueError:
        return False


def _header_problem(header: Any, body_bytes: int) -> str | None:
    """What is wrong with a parsed header (types, ranges, sizes), or None. Field by field, so that a
    crafted file fails here with its reason and not later with an exception of the code that reads it."""
    if not isinstance(header, dict):
        return f"expected a JSON object, got {type(header).__name__}"
    checks = {
        "spec": lambda v: _is_int(v, SPEC_VERSION, SPEC_VERSION),
        "arch": _is_text,
        "seed": lambda v: _is_int(v, 0, 2**64 - 1),
        "periods": lambda v: _is_int(v, 0, MAX_PERIODS),
        "num_coeffs": lambda v: _is_int(v, 1, MAX_NUM_COEFFS),
        "layout": _is_layout,
        "dim": lambda v: _is_int(v, 1, MAX_DIM),
        "fingerprint": _is_text,
        "model_args": lambda v: isinstance(v, dict) and all(
            k in _MODEL_ARGS and _is_int(x, 1, MAX_MODEL_ARG)
            for k, x in v.items()),
        "metadata": lambda v: isinstance(v, dict),
        "tensors": lambda v: isinstance(v, list) and len(v) <= MAX_TENSORS,
    }
    for key, ok in checks.items():
        if key == "periods" and key not in header:
            continue  # files written before re-seeding
        if key not in header:
            return f"field {key!r} is missing"
        if not ok(header[key]):
            return f"field {key!r} has an invalid value {_short(header[key])}"
    names = set()
    for entry in header["tensors"]:
        if not (isinstance(entry, list) and len(entry) == 3 and _is_text(entry[0]) and isinstance(entry[1], str) and entry[1] in _DTYPES
                and isinstance(entry[2], list) and len(entry[2]) <= 8 and all(_is_int(x, 0, body_bytes) for x in entry[2])):
            return f"tensor entry {_short(entry)} is not [name, one of {', '.join(_DTYPES)}, shape]"
        if entry[0] in names:
            return f"tensor {entry[0]!r} is listed twice"
        names.add(entry[0])
        if int(np.prod(entry[2], dtype=object)) > body_bytes:
            return f"tensor {entry[0]!r} of shape {entry[2]} is larger than the file"
    prep = header.get("preprocessing")
    if prep is not None and not _preprocessing_ok(prep):
        return f"field 'preprocessing' has an invalid value {_short(prep)}"
    return None


def _preprocessing_ok(prep: Any) -> bool:
    if not isinstance(prep, dict) or set(prep) != {"mean", "std", "input_shape", "class_names"}:
        return False
    shape, mean, std, names = prep["input_shape"], prep["mean"], prep["std"], prep["class_names"]
    finite = lambda xs: isinstance(xs, list) and all(  # noqa: E731
        isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in xs)
    return (isinstance(shape, list) and len(shape) == 3 and all(_is_int(x, 1, MAX_MODEL_ARG) for x in shape)
            and finite(mean) and finite(std) and len(mean) == len(std) == shape[0] and all(x > 0 for x in std)
            and isinstance(names, list) and len(names) <= MAX_MODEL_ARG and all(isinstance(n, str) for n in names))
