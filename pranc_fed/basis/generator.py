"""The spec-v1 generator: Philox4x32-10 counters keyed by the seed, their mapping to uniform
values, and the CPU engines that fill blocks of B with them (compiled by numba, numpy's fallback,
the torch reference). The spec itself is in the package docstring and docs/spec.md."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

SPEC_VERSION = 1

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
STREAM_BASIS, STREAM_THETA0 = 0, 1  # the counter's third word (spec section 4): B's values, theta0's
# Counters per generator chunk: keeps the uint64 temporaries of one thread inside its L2.
_GEN_COUNTERS = 1 << 13


def period_seed(seed: int, period: int) -> int:
    """The basis seed of a re-seeding period (see "Re-seeded subspaces" in the package docstring)."""
    return (seed + period * 0x9E3779B97F4A7C15) % 2 ** 64


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
    from ..philox_numba import fill_values as _compiled
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
                      stream: int = STREAM_BASIS) -> torch.Tensor:
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
               stream: int = STREAM_BASIS) -> torch.Tensor:
    """u for the contiguous block rows [row0, row1) x cols [col0, col1) (float32)."""
    device = torch.device(device)
    if device.type != "cpu":
        return _unit_block_torch(seed, row0, row1, col0, col1, device, stream)
    out = torch.empty(row1 - row0, col1 - col0, dtype=torch.float32)
    _fill_values(seed, stream, row0, row1, col0, col1, np.full(row1 - row0, 2.0 ** -24), out.numpy())
    return out
