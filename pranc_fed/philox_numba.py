"""The basis generator compiled for the CPU: spec v1's Philox4x32-10 values, bit-identical to
`basis.philox4x32`, written straight into the output matrix.

Why numba: it compiles this loop to machine code at first use (cached on disk afterwards), needs
no compiler at install time (a wheel, ~50 MB with llvmlite, against torch's 5 GB), and runs the
row groups on all cores with `prange`. numpy's vectorised version (`basis._philox_grid`) has to
materialise a dozen [G, C] uint64 temporaries per round; here each counter's four words stay in
registers and only the float32 values are stored, which is what makes it several times faster.
A small C extension would be as fast but needs a compiler on every machine that installs the
package; torch.compile needs one at run time.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch
from numba import njit, prange, uint64

_M32 = uint64(0xFFFFFFFF)
_ROUND_A, _ROUND_B = uint64(0xD2511F53), uint64(0xCD9E8D57)
_KEY_A, _KEY_B = uint64(0x9E3779B9), uint64(0xBB67AE85)


# numba's default threading layer aborts the process if two threads launch parallel kernels at once.
_LOCK = threading.Lock()


def fill_values(k0: int, k1: int, stream: int, row0: int, row1: int, col0: int, col1: int,
                row_scale: np.ndarray, out: np.ndarray) -> None:
    """_fill_kernel on as many threads as torch uses (a Ray worker's 1, a benchmark's all)."""
    with _LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        _fill_kernel(k0, k1, stream, row0, row1, col0, col1, row_scale, out)


@njit(inline="always")
def _philox(g, j, stream, k0, k1):
    """Philox4x32-10 of the counter (g, j, stream, 0) under the key (k0, k1): four uint32 words in uint64."""
    x0, x1, x2, x3 = uint64(g), uint64(j), uint64(stream), uint64(0)
    a, b = uint64(k0), uint64(k1)
    for _ in range(10):
        p_a = x0 * _ROUND_A
        p_b = x2 * _ROUND_B
        x0, x1, x2, x3 = ((p_b >> uint64(32)) ^ x1 ^ a) & _M32, p_b & _M32, ((p_a >> uint64(32)) ^ x3 ^ b) & _M32, p_a & _M32
        a, b = (a + _KEY_A) & _M32, (b + _KEY_B) & _M32
    return x0, x1, x2, x3


@njit(inline="always")
def _value(word, scale):
    """float32((2m + 1 - 2^24) * scale), m = the word's top 24 bits: the product is exact in float64."""
    return np.float32(np.float64(np.int64((word >> uint64(7)) & uint64(0x1FFFFFE)) - 16777215) * scale)


@njit(parallel=True, cache=True, nogil=True)
def _fill_kernel(k0: int, k1: int, stream: int, row0: int, row1: int, col0: int, col1: int,
                 row_scale: np.ndarray, out: np.ndarray) -> None:
    """out[r, c] = float32((2m + 1 - 2^24) * row_scale[r]) for element (row0 + r, col0 + c), with m the top
    24 bits of word (row mod 4) of Philox4x32-10((row div 4, col, stream, 0), (k0, k1))."""
    g_first, g_end = row0 // 4, (row1 + 3) // 4
    for gi in prange(g_end - g_first):
        g = g_first + gi
        base = g * 4
        if row0 <= base and base + 4 <= row1:  # a whole row group: four rows, no branch per value
            r = base - row0
            s0, s1, s2, s3 = row_scale[r], row_scale[r + 1], row_scale[r + 2], row_scale[r + 3]
            o0, o1, o2, o3 = out[r], out[r + 1], out[r + 2], out[r + 3]
            for c in range(col1 - col0):
                x0, x1, x2, x3 = _philox(g, col0 + c, stream, k0, k1)
                o0[c], o1[c], o2[c], o3[c] = _value(x0, s0), _value(x1, s1), _value(x2, s2), _value(x3, s3)
        else:  # the first or last group of a block that does not start or end on a multiple of 4
            for c in range(col1 - col0):
                words = _philox(g, col0 + c, stream, k0, k1)
                for q in range(4):
                    if row0 <= base + q < row1:
                        out[base + q - row0, c] = _value(words[q], row_scale[base + q - row0])
