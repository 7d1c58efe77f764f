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
(docs/spec.md is the standalone text, with the per-layer rule, the fingerprint recipe and the
limits; tests/spec_vectors.json holds its expected values.)

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

Re-seeded subspaces (``pranc.reseed_period`` P > 0). Rounds come in periods of P; period p uses
the basis above with seed_p = (seed + p * 0x9E3779B97F4A7C15) mod 2^64 (``period_seed``; seed_0 =
seed). At the end of period p every party folds the period's final alpha a_p into theta0:

    theta0_(p+1) = float32( float64(theta0_p) + sum_j float64(B_p[:, j]) * float64(a_p[j]) )

(``Basis.fold``: exact float32 values of B_p, float64 products and sums, one rounding at the end, so
the result does not depend on caches, chunking or thread count), then restarts from alpha = 0 in
B_(p+1). theta0_0 is the seeded theta0 below. The model after n periods is therefore fixed by the
seed and the history (a_0, ..., a_(n-1)) plus the current alpha.

theta0 and alpha = 0: training starts from a standard random init (theta0) and moves in
the K-dimensional random subspace spanned by B. The official PRANC code instead has no
theta0 and initialises alpha so that B @ alpha is a fresh network; a seeded theta0 gives
the same start with an all-zero alpha, which also makes averaged and sparse alphas natural.

Engines, caches and precision (none of them changes the definition above)
-------------------------------------------------------------------------
* Generation on the CPU runs the same Philox compiled by numba (``philox_numba``: each counter's
  words stay in registers, row groups spread over the cores), about 5x the previous engine, which
  remains as the fallback where numba is missing: numpy uint64 arithmetic, a few thousand
  counters at a time in L2-sized chunks over ``torch.get_num_threads()`` threads, the first two
  rounds computed on the (row group) and (column) vectors alone because the counter's c1, c2, c3
  do not depend on the row. Other devices use the torch reference
  (``philox4x32``); a CUDA device with Triton uses ``triton_basis``, which generates B inside
  the expand/project kernels and never stores it.
* ``cache``: ``memory`` keeps the non-zero blocks of B in this process; ``disk`` writes them
  once to a read-only file keyed by the fingerprint (``$PRANC_FED_CACHE/basis``, default
  ``~/.cache/pranc-fed/basis``; a 4096-byte JSON header, then the blocks row-major in
  ``cache_dtype``), written atomically under a lock, then memory-maps it read-only, so every
  process on the machine shares one copy through the page cache; ``none`` streams
  freshly generated chunks under ``budget_mb``; ``auto`` is ``memory`` when it fits the
  budget, else ``none``. A memory or disk cache must fit ``budget_mb``.
* ``cache_dtype``: ``float32`` stores the exact values. ``bfloat16`` / ``float16`` store
  each exact value rounded to nearest-even in that format (half the bytes); products still
  accumulate in float32 with float32 alpha and gradients, so the basis in use is the rounded
  matrix, a fixed perturbation of B of at most 2^-8 (bf16) or 2^-11 (fp16) relative per
  element. The fingerprint names the exact basis; a rounded cache is an approximation of it.
* Products: a float32 B (cached or a streamed chunk) is one BLAS matrix-vector call. A
  bf16/fp16 cache is converted to float32 one cache-sized tile at a time, its rows split over
  ``torch.get_num_threads()`` worker threads that each run single-threaded torch ops (no
  OpenMP barrier per small op, which matters on a busy machine).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from . import cache_root

SPEC_VERSION = 1
LAYOUTS = ("global", "per_layer")
CACHES = ("auto", "memory", "disk", "none")
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ENGINES = ("auto", "torch", "triton")

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_STREAM_BASIS, _STREAM_THETA0 = 0, 1
# Counters per generator chunk: keeps the uint64 temporaries of one thread inside its L2.
_GEN_COUNTERS = 1 << 13
# Elements of a low-precision cache converted to float32 at a time (2 MB per worker: L2/L3-sized).
_TILE_ELEMS = 1 << 19
_CACHE_HEADER = 4096
_CACHE_MAGIC = "pranc-fed basis cache 1"

# Basis values generated by this process (not theta0): lets tests see a cache hit.
generated_values = 0


def period_seed(seed: int, period: int) -> int:
    """The basis seed of a re-seeding period (see "Re-seeded subspaces" above)."""
    return (seed + period * 0x9E3779B97F4A7C15) % 2 ** 64


class FingerprintMismatch(ValueError):
    """Two parties do not hold the same basis (seed, K, architecture, layout or spec)."""


# ----------------------------------------------------------------------------- the generator


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 values (int64 products wrap mod 2^64).

    The readable reference; any device. The CPU engine uses ``_philox_grid`` (same bits).
    """
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


_U = np.uint64
_NA, _NB, _N32, _NM = _U(_ROUND_A), _U(_ROUND_B), _U(32), _U(_M32)


def _philox_grid(key: tuple[int, int], g0: int, g1: int, col0: int, col1: int, stream: int):
    """Philox4x32-10 of the counters (g, j, stream, 0) for g in [g0, g1), j in [col0, col1).

    numpy uint64 arithmetic. Returns the four words as [G, C] uint64 arrays; words 1 and 3
    carry junk above bit 31 (the callers use bits 8..31 only). Rounds 1 and 2 run on the
    [G] and [C] vectors: c1 = j, c2 = stream and c3 = 0 do not depend on the row group.
    """
    k0, k1 = key
    g = np.arange(g0, g1, dtype=_U)
    j = np.arange(col0, col1, dtype=_U)
    shape = (len(g), len(j))
    # round 1: c0 = g, c1 = j, c2 = stream, c3 = 0
    p_a = g * _NA
    p_b = stream * _ROUND_B
    c0 = j ^ _U((p_b >> 32) ^ k0)                   # [C]
    c1 = p_b & _M32                                 # scalar
    c2 = (p_a >> _N32) ^ _U(k1)                     # [G]
    c3 = p_a & _NM                                  # [G]
    k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    # round 2
    p_a = c0 * _NA                                  # [C]
    p_b = c2 * _NB                                  # [G]
    c0, c1, c2, c3 = ((p_b >> _N32) ^ _U(c1 ^ k0),  # [G]
                      p_b & _NM,                    # [G]
                      ((p_a >> _N32) ^ _U(k1))[None, :] ^ c3[:, None],  # [G, C]
                      p_a & _NM)                    # [C]
    k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    # round 3
    p_a = c0 * _NA                                  # [G]
    p_b = c2 * _NB                                  # [G, C]
    n0 = p_b >> _N32
    n0 ^= (c1 ^ _U(k0))[:, None]
    n2 = np.empty(shape, dtype=_U)
    np.bitwise_xor(((p_a >> _N32) ^ _U(k1))[:, None], c3[None, :], out=n2)
    c0, c1, c2, c3 = n0, p_b, n2, np.broadcast_to((p_a & _NM)[:, None], shape)
    k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    # rounds 4..10 on the full grid; c1, c3 hold the whole 64-bit products (junk high half)
    for _ in range(7):
        p_a = c0 * _NA
        p_b = c2 * _NB
        n0 = p_b >> _N32
        n0 ^= c1
        n0 ^= _U(k0)
        n0 &= _NM
        n2 = p_a >> _N32
        n2 ^= c3
        n2 ^= _U(k1)
        n2 &= _NM
        c0, c1, c2, c3 = n0, p_b, n2, p_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


try:
    from .philox_numba import fill_values as _compiled
except (ImportError, RuntimeError) as e:  # numba missing, or no writable cache folder: numpy, same bits
    warnings.warn(f"pranc_fed: the compiled basis generator is unavailable ({e}); using numpy's (slower)")
    _compiled = None

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool whose threads each run torch ops single-threaded (no OpenMP team per op)."""
    with _POOLS_LOCK:
        return _POOLS.get(workers) or _new_pool(workers)


def _new_pool(workers: int) -> ThreadPoolExecutor:
    main_threads = torch.get_num_threads()

    def init() -> None:
        torch.zeros(1 << 16).add_(1)     # torch's lazy per-thread init first ...
        torch.set_num_threads(1)         # ... then one OpenMP/MKL thread for this thread

    pool = ThreadPoolExecutor(workers, thread_name_prefix="pranc-basis", initializer=init)
    barrier = threading.Barrier(workers)
    for future in [pool.submit(barrier.wait) for _ in range(workers)]:   # start every thread now
        future.result()
    torch.set_num_threads(main_threads)  # set_num_threads(1) above also set torch's global default
    _POOLS[workers] = pool
    return pool


def _workers(work: int) -> int:
    return max(1, min(torch.get_num_threads(), work))


def _map(fn, items: list) -> list:
    """[fn(item) for item in items] on _workers threads (numpy and torch ops release the GIL)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    return list(_pool(len(items)).map(fn, items))


def _run_parallel(fn, items: list) -> None:
    """fn(part) over torch.get_num_threads() contiguous parts of items."""
    workers = _workers(len(items))
    per = -(-len(items) // workers)
    _map(fn, [items[w * per:(w + 1) * per] for w in range(workers)])


def _row_parts(rows: int, elems_per_row: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, one per worker (one range for small matrices)."""
    workers = _workers(rows) if rows * elems_per_row >= (1 << 20) else 1
    per = -(-rows // workers)
    return [(r, min(rows, r + per)) for r in range(0, rows, per)]


def _fill_values(seed: int, stream: int, row0: int, row1: int, col0: int, col1: int,
                 row_scale: np.ndarray, out: np.ndarray) -> None:
    """out[r, c] = float32(x * row_scale[r]) with x = 2m + 1 - 2^24 of element (row0 + r, col0 + c):
    the compiled generator (philox_numba), or numpy's where numba is not installed (same bits)."""
    if row1 <= row0 or col1 <= col0:
        return
    if _compiled is None:
        _fill_values_numpy(seed, stream, row0, row1, col0, col1, row_scale, out)
    else:
        _compiled(seed & _M32, (seed >> 32) & _M32, stream, row0, row1, col0, col1,
                  np.ascontiguousarray(row_scale, dtype=np.float64), out)


def _fill_values_numpy(seed: int, stream: int, row0: int, row1: int, col0: int, col1: int,
                       row_scale: np.ndarray, out: np.ndarray) -> None:
    """_fill_values with numpy's vectorised Philox (_philox_grid) on _run_parallel threads.

    row_scale = b_i * 2^-24 (float64, exact), so the float64 product is the exact b_i * u and
    one rounding to float32 gives the spec's float32(b_i * u).
    """
    ncols = col1 - col0
    if row1 <= row0 or ncols <= 0:
        return
    key = (seed & _M32, (seed >> 32) & _M32)
    g_first, g_end = row0 // 4, (row1 + 3) // 4
    pad = np.zeros((g_end - g_first) * 4)
    pad[row0 - g_first * 4:row1 - g_first * 4] = row_scale
    pad = pad.reshape(-1, 4)
    step = max(1, _GEN_COUNTERS // ncols)

    def work(starts: list[int]) -> None:
        for gs in starts:
            ge = min(g_end, gs + step)
            words = _philox_grid(key, gs, ge, col0, col1, stream)
            tmp = np.empty((ge - gs, 4, ncols), dtype=np.float32)
            for r, w in enumerate(words):
                x = w >> _U(7)
                x &= _U(0x1FFFFFE)                 # 2m
                x = x.view(np.int64)
                x -= (1 << 24) - 1                 # 2m + 1 - 2^24
                np.multiply(x, pad[gs - g_first:ge - g_first, r, None], out=tmp[:, r, :], casting="unsafe")
            lo, hi = max(row0, gs * 4), min(row1, ge * 4)
            out[lo - row0:hi - row0] = tmp.reshape(-1, ncols)[lo - gs * 4:hi - gs * 4]

    _run_parallel(work, list(range(g_first, g_end, step)))


def _unit_block_torch(seed: int, row0: int, row1: int, col0: int, col1: int, device: torch.device | str,
                      stream: int = _STREAM_BASIS) -> torch.Tensor:
    """The torch reference of unit_block (any device), 4 rows per Philox call."""
    key = (seed & _M32, (seed >> 32) & _M32)
    ncols = col1 - col0
    g0, g1 = row0 >> 2, (row1 + 3) >> 2
    cols = torch.arange(col0, col1, dtype=torch.int64, device=device)
    out = torch.empty((g1 - g0) * 4, ncols, dtype=torch.float32, device=device)
    step = max(1, (1 << 16) // max(1, ncols))
    for start in range(g0, g1, step):
        stop = min(g1, start + step)
        c0 = torch.arange(start, stop, dtype=torch.int64, device=device)[:, None].expand(-1, ncols)
        c1 = cols[None, :].expand(stop - start, -1)
        zeros = torch.zeros_like(c0)
        words = torch.stack(philox4x32(c0, c1, zeros + stream, zeros, key), dim=1)  # [G, 4, C]
        out[(start - g0) * 4:(stop - g0) * 4] = uniform_bits_to_unit(words.reshape(-1, ncols))
    first = row0 - g0 * 4
    return out[first:first + row1 - row0]


def unit_block(seed: int, row0: int, row1: int, col0: int, col1: int, device: torch.device | str = "cpu",
               stream: int = _STREAM_BASIS) -> torch.Tensor:
    """u for the contiguous block rows [row0, row1) x cols [col0, col1) (float32)."""
    device = torch.device(device)
    if device.type != "cpu":
        return _unit_block_torch(seed, row0, row1, col0, col1, device, stream)
    out = torch.empty(row1 - row0, col1 - col0, dtype=torch.float32)
    _fill_values(seed, stream, row0, row1, col0, col1, np.full(row1 - row0, 2.0 ** -24), out.numpy())
    return out


# ------------------------------------------------------------------------ model structure


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


# ------------------------------------------------------------------------------ disk cache


def _np_storage_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == torch.float32 else np.dtype(np.uint16)


def _map_readonly(path: Path, dtype: torch.dtype, count: int) -> torch.Tensor:
    array = np.memmap(path, dtype=_np_storage_dtype(dtype), mode="r", offset=_CACHE_HEADER, shape=(count,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only mapping: torch warns it is not writable
        tensor = torch.from_numpy(array)
    return tensor if dtype == torch.float32 else tensor.view(dtype)


# ----------------------------------------------------------------------------- products


def _tile_rows(values: torch.Tensor) -> int:
    elems = _TILE_ELEMS if values.device.type == "cpu" else 1 << 26
    return max(1, elems // max(1, values.shape[1]))


def addmv(out: torch.Tensor, values: torch.Tensor, vec: torch.Tensor) -> None:
    """out += values @ vec in float32. A float32 matrix is one BLAS call (its own threads); a
    bfloat16/float16 one is converted to float32 one cache-sized tile at a time on worker threads."""
    if values.dtype == torch.float32:
        out.addmv_(values, vec)
        return

    def part(rows: tuple[int, int]) -> None:
        for t0, t1, tile in _float32_tiles(values, *rows):
            out[t0:t1].addmv_(tile, vec)

    if values.device.type != "cpu":
        part((0, values.shape[0]))
    else:
        _map(part, _row_parts(values.shape[0], values.shape[1]))


def _float32_tiles(values: torch.Tensor, r0: int, r1: int):
    """Rows [r0, r1) of a low-precision cache as float32 tiles small enough to stay in cache."""
    step = _tile_rows(values)
    buf = torch.empty(min(step, r1 - r0), values.shape[1], device=values.device)
    for t0 in range(r0, r1, step):
        t1 = min(r1, t0 + step)
        tile = buf[:t1 - t0]
        tile.copy_(values[t0:t1])
        yield t0, t1, tile


def addvm(out: torch.Tensor, vec: torch.Tensor, values: torch.Tensor) -> None:
    """out += vec @ values in float32, as addmv (low-precision partial sums per worker, added in a fixed order)."""
    if values.dtype == torch.float32:
        out.addmv_(values.T, vec)
        return

    def part(rows: tuple[int, int]) -> torch.Tensor:
        r0, r1 = rows
        acc = torch.zeros(values.shape[1], device=values.device)
        for t0, t1, tile in _float32_tiles(values, r0, r1):
            acc.addmv_(tile.T, vec[t0:t1])
        return acc

    parts = [(0, values.shape[0])] if values.device.type != "cpu" else _row_parts(values.shape[0], values.shape[1])
    for partial in _map(part, parts):
        out += partial


# ---------------------------------------------------------------------------------- Basis


class Basis:
    """B and theta0 of one model, generated on demand; see the module docstring for the spec.

    cache: auto | memory | disk | none; cache_dtype: float32 | bfloat16 | float16 (cached
    copies only); engine: auto | torch | triton (triton: B generated inside GPU kernels,
    used by auto on CUDA when B is not cached; on the CPU only under TRITON_INTERPRET=1).
    """

    def __init__(self, segments: list[Segment], num_coeffs: int, seed: int, arch: str,
                 layout: str = "global", budget_mb: float = 2048, cache: str = "auto",
                 device: torch.device | str = "cpu", cache_dtype: str = "float32",
                 engine: str = "auto", cache_path: str | Path | None = None):
        if num_coeffs < 1:
            raise ValueError(f"num_coeffs must be >= 1, got {num_coeffs}")
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"basis seed must be in [0, 2^64), got {seed}")
        if cache not in CACHES:
            raise ValueError(f"unknown basis cache {cache!r}; choose one of {', '.join(CACHES)}")
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"unknown basis cache_dtype {cache_dtype!r}; choose one of {', '.join(CACHE_DTYPES)}")
        if engine not in ENGINES:
            raise ValueError(f"unknown basis engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.segments, self.num_coeffs, self.seed, self.arch, self.layout = segments, num_coeffs, seed, arch, layout
        self.dim = segments[-1].offset + segments[-1].numel
        if self.dim >= 2 ** 34 or num_coeffs >= 2 ** 32:
            raise ValueError("spec v1 counters hold d < 2^34 and K < 2^32")
        self.blocks = make_blocks(segments, num_coeffs, layout)
        self.budget_bytes = int(budget_mb * 2 ** 20)
        self.device = torch.device(device)
        self.cache_dtype = CACHE_DTYPES[cache_dtype]
        self.bounds = torch.cat([torch.full((s.numel,), s.bound, dtype=torch.float32) for s in segments])
        self.bounds = self.bounds.to(self.device)
        self.theta0 = self._values(_STREAM_THETA0, 0, self.dim, 0, 1)[:, 0].contiguous()
        self.engine = self._pick_engine(engine, cache)
        self.cache_source = "none"          # none | memory | disk-hit | disk-written
        self.cache_file: Path | None = None
        self._cached: list[torch.Tensor] | None = None
        self.fingerprint = self._fingerprint()
        nbytes = self.nonzeros * self.cache_dtype.itemsize
        fits = nbytes <= self.budget_bytes
        if cache in ("memory", "disk") and not fits:
            raise ValueError(f"the {cache_dtype} basis needs {nbytes / 2**20:.0f} MB but pranc.basis_budget_mb is "
                             f"{budget_mb}; raise the budget, use a smaller cache_dtype or cache: none")
        if cache == "memory" or (cache == "auto" and fits and self.engine == "torch"):
            self._cached = [self._materialise(b) for b in self.blocks]
            self.cache_source = "memory"
        elif cache == "disk":
            self._cached = self._open_disk_cache(Path(cache_path) if cache_path else None)

    @classmethod
    def for_module(cls, module: nn.Module, num_coeffs: int, seed: int, arch: str, **kwargs) -> "Basis":
        return cls(covered_segments(module), num_coeffs, seed, arch, **kwargs)

    def _pick_engine(self, engine: str, cache: str) -> str:
        """auto: triton on CUDA when B is not going to be cached (cache none, or auto over budget)."""
        if engine == "auto":
            too_big = self.nonzeros * self.cache_dtype.itemsize > self.budget_bytes
            uncached = cache == "none" or (cache == "auto" and too_big)
            if self.device.type != "cuda" or not uncached:
                return "torch"
            try:
                import triton  # noqa: F401
            except ImportError:
                return "torch"
            return "triton"
        if engine == "triton" and self.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("engine triton on the CPU needs TRITON_INTERPRET=1 (Triton's interpreter); "
                             "use engine auto or torch")
        return engine

    @property
    def nonzeros(self) -> int:
        return sum((b.row1 - b.row0) * (b.col1 - b.col0) for b in self.blocks)

    @property
    def is_cached(self) -> bool:
        return self._cached is not None

    @property
    def cache_bytes(self) -> int:
        """Bytes of the cached copy (0 when B is streamed or generated in-kernel)."""
        return sum(t.numel() * t.element_size() for t in self._cached) if self._cached is not None else 0

    # -- generation

    def _values(self, stream: int, row0: int, row1: int, col0: int, col1: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """float32(b_i * u) for rows [row0, row1) x cols [col0, col1) on self.device (CPU: into out if given)."""
        global generated_values
        if stream == _STREAM_BASIS:
            generated_values += (row1 - row0) * (col1 - col0)
        if self.device.type != "cpu":
            u = _unit_block_torch(self.seed, row0, row1, col0, col1, self.device, stream)
            return u.mul_(self.bounds[row0:row1, None])
        if out is None:
            out = torch.empty(row1 - row0, col1 - col0, dtype=torch.float32)
        scale = self.bounds[row0:row1].numpy().astype(np.float64) * 2.0 ** -24     # b_i * 2^-24, exact
        _fill_values(self.seed, stream, row0, row1, col0, col1, scale, out.numpy())
        return out

    def _generate(self, block: Block, row0: int, row1: int) -> torch.Tensor:
        return self._values(_STREAM_BASIS, row0, row1, block.col0, block.col1)

    def _row_step(self, block: Block, bytes_per_value: int = 4) -> int:
        return max(4, (self.budget_bytes // (bytes_per_value * (block.col1 - block.col0))) // 4 * 4)

    def _materialise(self, block: Block) -> torch.Tensor:
        if self.cache_dtype == torch.float32:
            return self._generate(block, block.row0, block.row1)
        out = torch.empty(block.row1 - block.row0, block.col1 - block.col0, dtype=self.cache_dtype,
                          device=self.device)
        step = max(4, min(self._row_step(block, 16), (64 << 20) // (4 * (block.col1 - block.col0))))
        for r0 in range(block.row0, block.row1, step):
            r1 = min(block.row1, r0 + step)
            out[r0 - block.row0:r1 - block.row0] = self._generate(block, r0, r1)
        return out

    # -- disk cache

    def _cache_header(self) -> dict:
        # the fingerprint fixes the segments, K and layout, hence the blocks and their order
        return {"magic": _CACHE_MAGIC, "fingerprint": str(self.fingerprint), "dtype": str(self.cache_dtype),
                "nonzeros": self.nonzeros}

    def default_cache_path(self) -> Path:
        fp = self.fingerprint
        arch = re.sub(r"[^A-Za-z0-9_.-]", "_", fp.arch)
        name = (f"pranc-v{fp.spec}-{arch}-d{fp.dim}-k{fp.num_coeffs}-{fp.layout}-s{fp.seed}-{fp.checksum}-"
                f"{str(self.cache_dtype).removeprefix('torch.')}.basis")
        return cache_root() / "basis" / name

    def _open_disk_cache(self, path: Path | None) -> list[torch.Tensor]:
        """Map the cache file read-only, writing it first (once per machine, under a lock) when missing."""
        path = path or self.default_cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file = path
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # a second process waits here, then finds the file
            try:
                for stale in path.parent.glob(path.name + ".tmp.*"):   # left by a writer that was killed
                    stale.unlink(missing_ok=True)
                if self._valid_cache_file(path):
                    self.cache_source = "disk-hit"
                else:
                    self._write_cache_file(path)
                    self.cache_source = "disk-written"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        flat = _map_readonly(path, self.cache_dtype, self.nonzeros)
        views, offset = [], 0
        for b in self.blocks:
            n = (b.row1 - b.row0) * (b.col1 - b.col0)
            views.append(flat[offset:offset + n].view(b.row1 - b.row0, b.col1 - b.col0))
            offset += n
        if self.device.type != "cpu":
            views = [v.to(self.device) for v in views]
        return views

    def _valid_cache_file(self, path: Path) -> bool:
        """Header matches and a few spot rows equal freshly generated ones (catches corrupt files)."""
        expected = _CACHE_HEADER + self.nonzeros * self.cache_dtype.itemsize
        try:
            if path.stat().st_size != expected:
                return False
            with open(path, "rb") as f:
                header = json.loads(f.read(_CACHE_HEADER).rstrip(b"\0"))
        except (OSError, ValueError):
            return False
        if header != self._cache_header():
            return False
        flat = _map_readonly(path, self.cache_dtype, self.nonzeros)
        offset = 0
        for b in self.blocks:
            cols = b.col1 - b.col0
            for r0 in sorted({b.row0, (b.row0 + b.row1) // 2 // 4 * 4, max(b.row0, b.row1 - 4)}):
                r1 = min(b.row1, r0 + 4)
                stored = flat[offset + (r0 - b.row0) * cols:offset + (r1 - b.row0) * cols]
                fresh = self._values(_STREAM_BASIS, r0, r1, b.col0, b.col1).to(self.cache_dtype).cpu().reshape(-1)
                if not torch.equal(stored.view(torch.int16 if stored.element_size() == 2 else torch.int32),
                                   fresh.view(torch.int16 if fresh.element_size() == 2 else torch.int32)):
                    warnings.warn(f"basis cache {path} is corrupt; regenerating it")
                    return False
            offset += (b.row1 - b.row0) * cols
        return True

    def _write_cache_file(self, path: Path) -> None:
        size = _CACHE_HEADER + self.nonzeros * self.cache_dtype.itemsize
        free = shutil.disk_usage(path.parent).free + (path.stat().st_size if path.exists() else 0)
        if free < size + (256 << 20):
            raise OSError(f"the basis cache needs {size / 2**20:.0f} MB but {path.parent} has {free / 2**20:.0f} MB "
                          "free; set PRANC_FED_CACHE to a larger disk or use cache: memory / none")
        tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
        header = json.dumps(self._cache_header()).encode()
        try:
            with open(tmp, "wb") as f:
                f.write(header.ljust(_CACHE_HEADER, b"\0"))
                for b in self.blocks:
                    step = max(4, (64 << 20) // (4 * (b.col1 - b.col0)) // 4 * 4)
                    for r0 in range(b.row0, b.row1, step):
                        values = self._values(_STREAM_BASIS, r0, min(b.row1, r0 + step), b.col0, b.col1)
                        values = values.to(self.cache_dtype).cpu()
                        if values.element_size() == 2:
                            values = values.view(torch.int16)
                        f.write(values.numpy().tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)           # atomic: readers see the old state or the whole file
        finally:
            if tmp.exists():
                tmp.unlink()

    # -- streaming, products

    def chunks(self) -> Iterator[tuple[Block, int, int, torch.Tensor]]:
        """(block, row0, row1, B[row0:row1, block cols]) as float32, streamed under the memory budget.

        Read-only, and valid until the next chunk: with cache disk the values are a read-only memory
        map, without a cache the next chunk overwrites them; copy what you keep.
        """
        for n, block in enumerate(self.blocks):
            if self._cached is not None:
                yield block, block.row0, block.row1, self._cached[n].float()
                continue
            # Fused streaming: one cache-sized tile, generated, used by the caller and overwritten by the next
            # one (fresh memory for every chunk would cost more in page faults than generating it).
            cols = block.col1 - block.col0
            rows = min(self._row_step(block, 8), max(4, _TILE_ELEMS * 4 // cols // 4 * 4))
            tile = torch.empty(rows * cols, dtype=torch.float32, device=self.device)
            for r0 in range(block.row0, block.row1, rows):
                r1 = min(block.row1, r0 + rows)
                yield block, r0, r1, self._values(_STREAM_BASIS, r0, r1, block.col0, block.col1,
                                                  tile[:(r1 - r0) * cols].view(r1 - r0, cols))

    def matrix(self) -> torch.Tensor:
        """The dense d x K matrix B: only for tests and small models."""
        out = torch.zeros(self.dim, self.num_coeffs, device=self.device)
        for block, r0, r1, values in self.chunks():
            out[r0:r1, block.col0:block.col1] = values
        return out

    def expand(self, alpha: torch.Tensor) -> torch.Tensor:
        """theta = theta0 + B @ alpha."""
        alpha = alpha.detach().to(self.device, torch.float32)
        if self.engine == "triton" and self._cached is None:
            from . import triton_basis
            return triton_basis.expand(self, alpha)
        theta = self.theta0.clone()
        if self._cached is not None:
            for block, values in zip(self.blocks, self._cached):
                addmv(theta[block.row0:block.row1], values, alpha[block.col0:block.col1])
            return theta
        for block, r0, r1, values in self.chunks():
            addmv(theta[r0:r1], values, alpha[block.col0:block.col1])
        return theta

    def fold(self, alpha: torch.Tensor) -> torch.Tensor:
        """theta0 + B @ alpha computed as the spec's fold: exact float32 values of B, float64 products and
        sums, rounded once to float32; bit-identical on every CPU party whatever its cache or threads."""
        a = alpha.detach().to("cpu", torch.float64)
        acc = self.theta0.detach().to("cpu", torch.float64)
        for block in self.blocks:
            rows = self._row_step(block, 20)
            for r0 in range(block.row0, block.row1, rows):
                r1 = min(block.row1, r0 + rows)
                values = self._values(_STREAM_BASIS, r0, r1, block.col0, block.col1).to("cpu", torch.float64)
                # a row-wise reduction, not BLAS: its order cannot change with the thread count
                acc[r0:r1] += values.mul_(a[block.col0:block.col1]).sum(dim=1)
        return acc.to(torch.float32).to(self.device)

    def project(self, grad_theta: torch.Tensor) -> torch.Tensor:
        """grad_alpha = B^T @ grad_theta."""
        grad_theta = grad_theta.detach().to(self.device, torch.float32)
        if self.engine == "triton" and self._cached is None:
            from . import triton_basis
            return triton_basis.project(self, grad_theta)
        grad = torch.zeros(self.num_coeffs, device=self.device)
        if self._cached is not None:
            for block, values in zip(self.blocks, self._cached):
                addvm(grad[block.col0:block.col1], grad_theta[block.row0:block.row1], values)
            return grad
        for block, r0, r1, values in self.chunks():
            addvm(grad[block.col0:block.col1], grad_theta[r0:r1], values)
        return grad

    def _fingerprint(self) -> Fingerprint:
        digest = hashlib.sha256()
        for s in self.segments:
            digest.update(f"{s.name}{s.shape}{s.bound!r};".encode())
        first = self.blocks[0]
        rows = min(first.row1, first.row0 + 64)
        cols = min(first.col1, first.col0 + 8)
        digest.update(self._values(_STREAM_BASIS, first.row0, rows, first.col0, cols).cpu().numpy().tobytes())
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
