"""Which parameters B covers (Segment), how its columns are laid out (Block: global or per-layer)
and the fingerprint that names a basis on the wire and in files."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .generator import SPEC_VERSION, STREAM_BASIS, STREAM_THETA0

LAYOUTS = ("global", "per_layer")
# per_layer_full<S>: per_layer, but a layer of at most S weights gets one column per weight (full rank);
# the config names it pranc.layout=per_layer with pranc.full_rank_upto=S.
FULL_RANK_PREFIX = "per_layer_full"


def layout_name(layout: str, full_rank_upto: int) -> str:
    """The layout the basis, its fingerprint and files name, from the config's two keys."""
    return f"{FULL_RANK_PREFIX}{full_rank_upto}" if layout == "per_layer" and full_rank_upto else layout


def full_rank_upto(layout: str) -> int:
    """S of a per_layer_full<S> layout, 0 for the others; ValueError for an unknown layout."""
    if layout in LAYOUTS:
        return 0
    digits = layout.removeprefix(FULL_RANK_PREFIX) if isinstance(layout, str) else ""
    if layout.startswith(FULL_RANK_PREFIX) and digits.isdigit() and not digits.startswith("0"):
        return int(digits)
    raise ValueError(f"unknown basis layout {layout!r}; choose one of {', '.join(LAYOUTS)} or {FULL_RANK_PREFIX}<S>")


class FingerprintMismatch(ValueError):
    """Two parties do not hold the same basis (seed, K, architecture, layout or spec)."""


@dataclass(frozen=True)
class Segment:
    """One covered parameter tensor: where it sits in theta and its init bound."""
    name: str
    shape: tuple[int, ...]
    offset: int
    layer: str
    bound: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Block:
    """A non-zero block of B: rows [row0, row1) of theta times columns [col0, col1) of alpha."""
    row0: int
    row1: int
    col0: int
    col1: int


# Layers whose weights and biases PRANC covers (nn.Conv1d/2d/3d and transposed convs all derive from _ConvNd).
COVERED_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


def covered_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter, str, int]]:
    """(name, parameter, owning layer, its fan-in) of every weight and bias of a conv/linear layer,
    in named_parameters() order: what B covers (everything else is local)."""
    owners = {}
    for layer_name, layer in module.named_modules():
        if isinstance(layer, COVERED_LAYER_TYPES):
            fan_in = layer.weight[0].numel()
            for param in layer.parameters(recurse=False):
                owners[id(param)] = (layer_name, fan_in)
    return [(name, param, *owners[id(param)]) for name, param in module.named_parameters() if id(param) in owners]


def covered_segments(module: nn.Module) -> list[Segment]:
    """Every covered parameter (covered_parameters) with its offset in theta and its bound."""
    segments, offset = [], 0
    for name, param, layer_name, fan_in in covered_parameters(module):
        bound = float(torch.tensor(1.0 / math.sqrt(fan_in), dtype=torch.float32))
        segments.append(Segment(name, tuple(param.shape), offset, layer_name, bound))
        offset += param.numel()
    if not segments:
        raise ValueError("the module has no conv or linear layers: PRANC has nothing to cover")
    return segments


def split_columns(sizes: list[int], num_coeffs: int) -> list[int]:
    """K_l proportional to sizes by largest remainder, each at least 1, summing to num_coeffs."""
    if num_coeffs < len(sizes):
        raise ValueError(f"per_layer layout needs num_coeffs >= number of layers ({len(sizes)}), got {num_coeffs}")
    spare = num_coeffs - len(sizes)
    total = sum(sizes)
    exact = [spare * s / total for s in sizes]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda l: (counts[l] - exact[l], l))
    for l in by_remainder[:spare - sum(counts)]:
        counts[l] += 1
    return [c + 1 for c in counts]


def make_blocks(segments: list[Segment], num_coeffs: int, layout: str) -> list[Block]:
    dim = segments[-1].offset + segments[-1].numel
    if layout == "global":
        return [Block(0, dim, 0, num_coeffs)]
    full = full_rank_upto(layout)
    layers: dict[str, list[int]] = {}
    for s in segments:
        span = layers.setdefault(s.layer, [s.offset, s.offset])
        span[1] = s.offset + s.numel
    spans = list(layers.values())
    sizes = [r1 - r0 for r0, r1 in spans]
    rest = [n for n in sizes if n > full]
    spare = num_coeffs - (sum(sizes) - sum(rest))
    if full and (spare < len(rest) or (not rest and spare)):
        raise ValueError(f"{layout}: the layers of at most {full} weights take {sum(sizes) - sum(rest)} of the "
                         f"K={num_coeffs} columns, leaving {spare} for the {len(rest)} other layers; raise "
                         "pranc.num_coeffs or lower pranc.full_rank_upto")
    shares = iter(split_columns(rest, spare) if rest else [])
    counts = [n if n <= full else next(shares) for n in sizes]
    blocks, col = [], 0
    for (r0, r1), k in zip(spans, counts):
        blocks.append(Block(r0, r1, col, col + k))
        col += k
    return blocks


@dataclass(frozen=True)
class Fingerprint:
    """What two parties must share to hold the same basis; it travels with every message and file."""
    spec: int
    arch: str
    dim: int
    num_coeffs: int
    layout: str
    seed: int
    checksum: str

    def __str__(self) -> str:
        return f"pranc-v{self.spec}:{self.arch}:d{self.dim}:k{self.num_coeffs}:{self.layout}:s{self.seed}:{self.checksum}"

    @classmethod
    def parse(cls, text: str) -> "Fingerprint":
        try:
            # An arch of the user's own is an import path MODULE:ATTRIBUTE: it holds a colon itself.
            spec, *arch_parts, dim, k, layout, seed, checksum = text.split(":")
            arch = ":".join(arch_parts)
            if not arch:
                raise ValueError(text)
            return cls(int(spec.removeprefix("pranc-v")), arch, int(dim[1:]), int(k[1:]), layout,
                       int(seed[1:]), checksum)
        except ValueError:
            raise FingerprintMismatch(f"malformed basis fingerprint {text!r}") from None

    def check(self, other: "Fingerprint | str", what: str = "received") -> None:
        """Raise FingerprintMismatch naming each differing field."""
        other = Fingerprint.parse(other) if isinstance(other, str) else other
        diffs = [f"{f}: expected {getattr(self, f)!r}, {what} {getattr(other, f)!r}"
                 for f in ("spec", "arch", "dim", "num_coeffs", "layout", "seed", "checksum")
                 if getattr(self, f) != getattr(other, f)]
        if diffs:
            raise FingerprintMismatch("basis mismatch (" + "; ".join(diffs) + "): both sides must use the "
                                      "same pranc.basis_seed, pranc.num_coeffs, pranc.layout and model.arch")


# What the fingerprint hashes of the values (spec section 6): theta0[:64] and B[:64, :8] of the first block.
_FINGERPRINT_ROWS, _FINGERPRINT_COLS = 64, 8


def basis_fingerprint(segments: list[Segment], num_coeffs: int, seed: int, arch: str, layout: str,
                      values: Callable[[int, int, int, int, int], torch.Tensor]) -> Fingerprint:
    """The fingerprint of a basis (spec section 6). ``values(stream, row0, row1, col0, col1)`` gives the
    float32 values of those rows and columns of B (STREAM_BASIS) or theta0 (STREAM_THETA0, column 0):
    only the few the fingerprint reads are asked for, so a caller need not hold theta0 or B."""
    digest = hashlib.sha256()
    for s in segments:
        digest.update(f"{s.name}{s.shape}{s.bound!r};".encode())
    first = make_blocks(segments, num_coeffs, layout)[0]
    rows = min(first.row1, first.row0 + _FINGERPRINT_ROWS)
    cols = min(first.col1, first.col0 + _FINGERPRINT_COLS)
    digest.update(values(STREAM_BASIS, first.row0, rows, first.col0, cols).cpu().numpy().tobytes())
    dim = segments[-1].offset + segments[-1].numel
    digest.update(values(STREAM_THETA0, 0, min(dim, _FINGERPRINT_ROWS), 0, 1).cpu().numpy().tobytes())
    return Fingerprint(SPEC_VERSION, arch, dim, num_coeffs, layout, seed, digest.hexdigest()[:16])
