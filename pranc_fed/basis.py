"""The PRANC basis: K pseudo-random frozen networks that anyone regenerates from one seed.

Math
----
Flatten a model's covered parameters (every weight and bias of its conv and linear
layers, in ``named_parameters()`` order) into theta in R^d. PRANC writes

    theta = theta0 + B @ alpha,        B in R^(d x K),   alpha in R^K,

and trains only alpha. By the chain rule the gradient of a loss L is

    dL/dalpha = B^T (dL/dtheta),

so a training step needs one ``expand`` (B @ alpha) and one ``project`` (B^T g).
Both are linear, so averaging alphas averages the models: theta(mean alpha) =
mean theta(alpha). Neither ever needs the d x K matrix in memory: they stream over
row chunks that fit a memory budget, or use a materialised copy when it fits.

Spec, version 1 (``SPEC_VERSION``): the definition every device must reproduce bit for bit
------------------------------------------------------------------------------------------
For parameter index i (0 <= i < d), basis index j (0 <= j < K) and a 64-bit seed:

    key     = (seed mod 2^32, seed div 2^32)
    counter = (i div 4, j, stream, 0)            stream 0: basis B, stream 1: theta0 (j = 0)
    w       = Philox4x32-10(counter, key)[i mod 4]   (Salmon et al. 2011; Random123,
                                                      cuRAND and Triton's tl.rand)
    m       = w div 2^8                           24 random bits
    u       = (2m + 1 - 2^24) * 2^-24             odd multiple of 2^-24 in (-1, 1): exact in float32
    B[i, j] = float32(b_i * u)                    one IEEE multiply, round to nearest
    theta0_i = float32(b_i * u(stream=1, j=0))

b_i = float32(1 / sqrt(fan_in)) of the layer that owns i: PyTorch's default init bound for
conv and linear weights and biases, so each column of B (and theta0) is a freshly
initialised network. Only integer arithmetic and one float multiply are involved, so the
bits do not depend on the device, thread count, chunking or the order indices are asked in.

Layouts. ``global`` (the paper): every column spans all d parameters. ``per_layer``
(block diagonal): layer l owns the columns [c_l, c_l + K_l) and B[i, j] = 0 when i and
j belong to different layers. K_l is proportional to the layer's parameter count
(largest remainder, at least 1 each); the non-zero elements keep the values above.

theta0 and alpha = 0: training starts from a standard random init (theta0) and moves in
the K-dimensional random subspace spanned by B. The official PRANC code instead has no
theta0 and initialises alpha so that B @ alpha is a fresh network; a seeded theta0 gives
the same start with an all-zero alpha, which also makes averaged and sparse alphas natural.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

SPEC_VERSION = 1
LAYOUTS = ("global", "per_layer")

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_STREAM_BASIS, _STREAM_THETA0 = 0, 1
# Counters processed per generator call: keeps the int64 temporaries in cache.
_GEN_COUNTERS = 1 << 16


class FingerprintMismatch(ValueError):
    """Two parties do not hold the same basis (seed, K, architecture, layout or spec)."""


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 values (int64 products wrap mod 2^64)."""
    k0, k1 = key
    for _ in range(10):
        p_a = c0 * _ROUND_A
        p_b = c2 * _ROUND_B
        c0, c1, c2, c3 = (
            ((p_b >> 32) & _M32) ^ c1 ^ k0,
            p_b & _M32,
            ((p_a >> 32) & _M32) ^ c3 ^ k1,
            p_a & _M32,
        )
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def uniform_bits_to_unit(words: torch.Tensor) -> torch.Tensor:
    """Map uint32 words (in int64) to u = (2m + 1 - 2^24) * 2^-24, exact in float32."""
    m = words >> 8
    return (2 * m + 1 - (1 << 24)).to(torch.float32) * (2.0 ** -24)


def unit_block(seed: int, row0: int, row1: int, col0: int, col1: int, device: torch.device | str = "cpu",
               stream: int = _STREAM_BASIS) -> torch.Tensor:
    """u for the contiguous block rows [row0, row1) x cols [col0, col1), generated 4 rows per Philox call."""
    key = (seed & _M32, (seed >> 32) & _M32)
    ncols = col1 - col0
    g0, g1 = row0 >> 2, (row1 + 3) >> 2
    cols = torch.arange(col0, col1, dtype=torch.int64, device=device)
    out = torch.empty((g1 - g0) * 4, ncols, dtype=torch.float32, device=device)
    step = max(1, _GEN_COUNTERS // max(1, ncols))
    for start in range(g0, g1, step):
        stop = min(g1, start + step)
        c0 = torch.arange(start, stop, dtype=torch.int64, device=device)[:, None].expand(-1, ncols)
        c1 = cols[None, :].expand(stop - start, -1)
        zeros = torch.zeros_like(c0)
        words = torch.stack(philox4x32(c0, c1, zeros + stream, zeros, key), dim=1)  # [G, 4, C]
        out[(start - g0) * 4:(stop - g0) * 4] = uniform_bits_to_unit(words.reshape(-1, ncols))
    first = row0 - g0 * 4
    return out[first:first + row1 - row0]


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


def covered_segments(module: nn.Module) -> list[Segment]:
    """Every weight and bias of conv/linear layers, in named_parameters() order, with its bound."""
    owners = {}
    for layer_name, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            fan_in = layer.weight[0].numel()
            for pname, param in layer.named_parameters(recurse=False):
                owners[id(param)] = (layer_name, fan_in)
    segments, offset = [], 0
    for name, param in module.named_parameters():
        if id(param) in owners:
            layer_name, fan_in = owners[id(param)]
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
    if layout != "per_layer":
        raise ValueError(f"unknown basis layout {layout!r}; choose one of {LAYOUTS}")
    layers: dict[str, list[int]] = {}
    for s in segments:
        span = layers.setdefault(s.layer, [s.offset, s.offset])
        span[1] = s.offset + s.numel
    spans = list(layers.values())
    counts = split_columns([r1 - r0 for r0, r1 in spans], num_coeffs)
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
            spec, arch, dim, k, layout, seed, checksum = text.split(":")
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


class Basis:
    """B and theta0 of one model, generated on demand; see the module docstring for the spec."""

    def __init__(self, segments: list[Segment], num_coeffs: int, seed: int, arch: str,
                 layout: str = "global", budget_mb: float = 2048, cache: str = "auto",
                 device: torch.device | str = "cpu"):
        if num_coeffs < 1:
            raise ValueError(f"num_coeffs must be >= 1, got {num_coeffs}")
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"basis seed must be in [0, 2^64), got {seed}")
        if cache not in ("auto", "memory", "none"):
            raise ValueError(f"unknown basis cache {cache!r}; choose auto, memory or none")
        self.segments, self.num_coeffs, self.seed, self.arch, self.layout = segments, num_coeffs, seed, arch, layout
        self.dim = segments[-1].offset + segments[-1].numel
        self.blocks = make_blocks(segments, num_coeffs, layout)
        self.budget_bytes = int(budget_mb * 2 ** 20)
        self.device = torch.device(device)
        self.bounds = torch.cat([torch.full((s.numel,), s.bound, dtype=torch.float32) for s in segments])
        self.bounds = self.bounds.to(self.device)
        self.theta0 = self.bounds * unit_block(seed, 0, self.dim, 0, 1, self.device, _STREAM_THETA0)[:, 0]
        fits = self.nonzeros * 4 <= self.budget_bytes
        if cache == "memory" and not fits:
            raise ValueError(f"basis needs {self.nonzeros * 4 / 2**20:.0f} MB but pranc.basis_budget_mb is "
                             f"{budget_mb}; raise the budget or use cache: none")
        self._cached: list[torch.Tensor] | None = None
        if cache == "memory" or (cache == "auto" and fits):
            self._cached = [self._generate(b, b.row0, b.row1) for b in self.blocks]
        self.fingerprint = self._fingerprint()

    @classmethod
    def for_module(cls, module: nn.Module, num_coeffs: int, seed: int, arch: str, **kwargs) -> "Basis":
        return cls(covered_segments(module), num_coeffs, seed, arch, **kwargs)

    @property
    def nonzeros(self) -> int:
        return sum((b.row1 - b.row0) * (b.col1 - b.col0) for b in self.blocks)

    @property
    def is_cached(self) -> bool:
        return self._cached is not None

    def _generate(self, block: Block, row0: int, row1: int) -> torch.Tensor:
        u = unit_block(self.seed, row0, row1, block.col0, block.col1, self.device)
        return u.mul_(self.bounds[row0:row1, None])

    def chunks(self) -> Iterator[tuple[Block, int, int, torch.Tensor]]:
        """(block, row0, row1, B[row0:row1, block cols]) streamed under the memory budget."""
        for n, block in enumerate(self.blocks):
            if self._cached is not None:
                yield block, block.row0, block.row1, self._cached[n]
                continue
            # Two live chunks (values + int64 generator temporaries) must fit the budget.
            rows = max(4, (self.budget_bytes // (8 * (block.col1 - block.col0))) // 4 * 4)
            for r0 in range(block.row0, block.row1, rows):
                r1 = min(block.row1, r0 + rows)
                yield block, r0, r1, self._generate(block, r0, r1)

    def matrix(self) -> torch.Tensor:
        """The dense d x K matrix B: only for tests and small models."""
        out = torch.zeros(self.dim, self.num_coeffs, device=self.device)
        for block, r0, r1, values in self.chunks():
            out[r0:r1, block.col0:block.col1] = values
        return out

    def expand(self, alpha: torch.Tensor) -> torch.Tensor:
        """theta = theta0 + B @ alpha."""
        theta = self.theta0.clone()
        alpha = alpha.to(self.device, torch.float32)
        for block, r0, r1, values in self.chunks():
            theta[r0:r1] += values @ alpha[block.col0:block.col1]
        return theta

    def project(self, grad_theta: torch.Tensor) -> torch.Tensor:
        """grad_alpha = B^T @ grad_theta."""
        grad = torch.zeros(self.num_coeffs, device=self.device)
        grad_theta = grad_theta.to(self.device, torch.float32)
        for block, r0, r1, values in self.chunks():
            grad[block.col0:block.col1] += grad_theta[r0:r1] @ values
        return grad

    def _fingerprint(self) -> Fingerprint:
        digest = hashlib.sha256()
        for s in self.segments:
            digest.update(f"{s.name}{s.shape}{s.bound!r};".encode())
        first = self.blocks[0]
        rows = min(first.row1, first.row0 + 64)
        digest.update(self._generate(first, first.row0, rows)[:, :8].cpu().numpy().tobytes())
        digest.update(self.theta0[:64].cpu().numpy().tobytes())
        return Fingerprint(SPEC_VERSION, self.arch, self.dim, self.num_coeffs, self.layout, self.seed,
                           digest.hexdigest()[:16])


class _Expand(torch.autograd.Function):
    """theta(alpha) with the backward pass d theta / d alpha = B, i.e. grad_alpha = B^T grad_theta."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, basis: Basis) -> torch.Tensor:
        ctx.basis = basis
        return basis.expand(alpha)

    @staticmethod
    def backward(ctx, grad_theta: torch.Tensor):
        return ctx.basis.project(grad_theta), None


def expand_differentiable(basis: Basis, alpha: torch.Tensor) -> torch.Tensor:
    return _Expand.apply(alpha, basis)
