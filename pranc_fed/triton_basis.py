"""GPU engine of the basis: Triton kernels that generate B inside expand and project.

B is never stored: each program regenerates its tile of B from the counters of spec v1
(``basis/generator.py``) with Philox4x32-10 in registers, multiplies it by alpha (expand) or by the
gradient (project), and keeps only the float32 accumulators. The basis values a kernel uses
are bit-identical to the CPU definition (same integer Philox, the same exact u, one float32
multiply by b_i); only the order of the float32 sums differs, so products agree to rounding.

Kernels, for one non-zero block (rows [row0, row1) x cols [col0, col1)) of B:

    expand   grid (row groups / BG,)           theta[4g + r] += sum_j B[4g + r, j] alpha[j]
    project  grid (cols / BJ, row splits)      partial[s, j] = sum_{g in split s} sum_r B[4g + r, j] grad[4g + r]
    values   grid (row groups / BG, cols / BJ) out = B tile (tests compare it to the CPU bits)

One Philox call gives rows 4g..4g+3 of column j, so a program handles BG row groups (4*BG
rows) times BJ columns per step. project sums its partials on the host (a fixed order:
deterministic for a given grid). Runs on CUDA tensors, or on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which the test
suite uses at small sizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

if TYPE_CHECKING:
    from .basis import Basis

PHILOX_ROUND_A = tl.constexpr(0xD2511F53)
PHILOX_ROUND_B = tl.constexpr(0xCD9E8D57)
PHILOX_KEY_A = tl.constexpr(0x9E3779B9)
PHILOX_KEY_B = tl.constexpr(0xBB67AE85)

_BG, _BJ = 16, 32          # row groups (x4 rows) and columns per program step
_SEED_ARGS = ["row0", "row1", "col0", "col1", "seed_lo", "seed_hi", "groups_per_split"]


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors, exactly as basis.philox4x32."""
    for _ in tl.static_range(10):
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(PHILOX_ROUND_B, _c2) ^ c1 ^ k0
        c2 = tl.umulhi(PHILOX_ROUND_A, _c0) ^ c3 ^ k1
        c1 = tl.mul(PHILOX_ROUND_B, _c2, sanitize_overflow=False)
        c3 = tl.mul(PHILOX_ROUND_A, _c0, sanitize_overflow=False)
        k0 = tl.add(k0, PHILOX_KEY_A, sanitize_overflow=False)
        k1 = tl.add(k1, PHILOX_KEY_B, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _unit(w):
    """u = (2m + 1 - 2^24) * 2^-24 with m = w >> 8: exact in float32."""
    m = (w >> 8).to(tl.int32)
    return (m * 2 + (1 - 16777216)).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _tile(g, j, seed_lo, seed_hi):
    """The four u tiles [BG, BJ] of rows 4g + r (r = 0..3) and columns j (stream 0)."""
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    c0 = g.to(tl.uint32)[:, None] + tl.zeros_like(j).to(tl.uint32)[None, :]
    c1 = tl.zeros_like(g).to(tl.uint32)[:, None] + j.to(tl.uint32)[None, :]
    zero = c0 * 0
    w0, w1, w2, w3 = _philox(c0, c1, zero, zero, k0, k1)
    return _unit(w0), _unit(w1), _unit(w2), _unit(w3)


@triton.jit
def _rows(g, r: tl.constexpr, row0, row1, bounds_ptr):
    i = g * 4 + r
    inside = (i >= row0) & (i < row1)
    return i, inside, tl.load(bounds_ptr + i, mask=inside, other=0.0)


@triton.jit(do_not_specialize=_SEED_ARGS)
def _expand_kernel(alpha_ptr, bounds_ptr, theta_ptr, row0, row1, col0, col1, seed_lo, seed_hi,
                   BG: tl.constexpr, BJ: tl.constexpr):
    g = row0 // 4 + tl.program_id(0) * BG + tl.arange(0, BG)
    i0, in0, b0 = _rows(g, 0, row0, row1, bounds_ptr)
    i1, in1, b1 = _rows(g, 1, row0, row1, bounds_ptr)
    i2, in2, b2 = _rows(g, 2, row0, row1, bounds_ptr)
    i3, in3, b3 = _rows(g, 3, row0, row1, bounds_ptr)
    acc0 = tl.zeros([BG, BJ], dtype=tl.float32)
    acc1 = tl.zeros([BG, BJ], dtype=tl.float32)
    acc2 = tl.zeros([BG, BJ], dtype=tl.float32)
    acc3 = tl.zeros([BG, BJ], dtype=tl.float32)
    for j0 in range(col0, col1, BJ):
        j = j0 + tl.arange(0, BJ)
        a = tl.load(alpha_ptr + j, mask=j < col1, other=0.0)[None, :]
        u0, u1, u2, u3 = _tile(g, j, seed_lo, seed_hi)
        acc0 += (b0[:, None] * u0) * a
        acc1 += (b1[:, None] * u1) * a
        acc2 += (b2[:, None] * u2) * a
        acc3 += (b3[:, None] * u3) * a
    tl.store(theta_ptr + i0, tl.load(theta_ptr + i0, mask=in0, other=0.0) + tl.sum(acc0, axis=1), mask=in0)
    tl.store(theta_ptr + i1, tl.load(theta_ptr + i1, mask=in1, other=0.0) + tl.sum(acc1, axis=1), mask=in1)
    tl.store(theta_ptr + i2, tl.load(theta_ptr + i2, mask=in2, other=0.0) + tl.sum(acc2, axis=1), mask=in2)
    tl.store(theta_ptr + i3, tl.load(theta_ptr + i3, mask=in3, other=0.0) + tl.sum(acc3, axis=1), mask=in3)


@triton.jit(do_not_specialize=_SEED_ARGS)
def _project_kernel(grad_ptr, bounds_ptr, partial_ptr, row0, row1, col0, col1, seed_lo, seed_hi,
                    groups_per_split, BG: tl.constexpr, BJ: tl.constexpr):
    j = col0 + tl.program_id(0) * BJ + tl.arange(0, BJ)
    g_begin = row0 // 4 + tl.program_id(1) * groups_per_split
    g_end = tl.minimum(g_begin + groups_per_split, (row1 + 3) // 4)
    acc = tl.zeros([BG, BJ], dtype=tl.float32)
    for gs in range(g_begin, g_end, BG):
        g = gs + tl.arange(0, BG)
        i0, in0, b0 = _rows(g, 0, row0, row1, bounds_ptr)
        i1, in1, b1 = _rows(g, 1, row0, row1, bounds_ptr)
        i2, in2, b2 = _rows(g, 2, row0, row1, bounds_ptr)
        i3, in3, b3 = _rows(g, 3, row0, row1, bounds_ptr)
        in0 = in0 & (g < g_end)
        in1 = in1 & (g < g_end)
        in2 = in2 & (g < g_end)
        in3 = in3 & (g < g_end)
        u0, u1, u2, u3 = _tile(g, j, seed_lo, seed_hi)
        acc += (b0[:, None] * u0) * tl.load(grad_ptr + i0, mask=in0, other=0.0)[:, None]
        acc += (b1[:, None] * u1) * tl.load(grad_ptr + i1, mask=in1, other=0.0)[:, None]
        acc += (b2[:, None] * u2) * tl.load(grad_ptr + i2, mask=in2, other=0.0)[:, None]
        acc += (b3[:, None] * u3) * tl.load(grad_ptr + i3, mask=in3, other=0.0)[:, None]
    ncols = col1 - col0
    tl.store(partial_ptr + tl.program_id(1) * ncols + (j - col0), tl.sum(acc, axis=0), mask=j < col1)


@triton.jit(do_not_specialize=_SEED_ARGS)
def _values_kernel(bounds_ptr, out_ptr, row0, row1, col0, col1, seed_lo, seed_hi,
                   BG: tl.constexpr, BJ: tl.constexpr):
    g = row0 // 4 + tl.program_id(0) * BG + tl.arange(0, BG)
    j = col0 + tl.program_id(1) * BJ + tl.arange(0, BJ)
    jin = (j < col1)[None, :]
    ncols = col1 - col0
    u0, u1, u2, u3 = _tile(g, j, seed_lo, seed_hi)
    i0, in0, b0 = _rows(g, 0, row0, row1, bounds_ptr)
    tl.store(out_ptr + (i0 - row0)[:, None] * ncols + (j - col0)[None, :], b0[:, None] * u0, mask=in0[:, None] & jin)
    i1, in1, b1 = _rows(g, 1, row0, row1, bounds_ptr)
    tl.store(out_ptr + (i1 - row0)[:, None] * ncols + (j - col0)[None, :], b1[:, None] * u1, mask=in1[:, None] & jin)
    i2, in2, b2 = _rows(g, 2, row0, row1, bounds_ptr)
    tl.store(out_ptr + (i2 - row0)[:, None] * ncols + (j - col0)[None, :], b2[:, None] * u2, mask=in2[:, None] & jin)
    i3, in3, b3 = _rows(g, 3, row0, row1, bounds_ptr)
    tl.store(out_ptr + (i3 - row0)[:, None] * ncols + (j - col0)[None, :], b3[:, None] * u3, mask=in3[:, None] & jin)


def _seed(basis: "Basis") -> tuple[int, int]:
    return basis.seed & 0xFFFFFFFF, basis.seed >> 32


def expand(basis: "Basis", alpha: torch.Tensor) -> torch.Tensor:
    """theta0 + B @ alpha with B generated in the kernel."""
    theta = basis.theta0.clone()
    alpha = alpha.contiguous()
    lo, hi = _seed(basis)
    for b in basis.blocks:
        groups = (b.row1 + 3) // 4 - b.row0 // 4
        _expand_kernel[(triton.cdiv(groups, _BG),)](alpha, basis.bounds, theta, b.row0, b.row1, b.col0, b.col1,
                                                   lo, hi, BG=_BG, BJ=_BJ)
    return theta


def project(basis: "Basis", grad_theta: torch.Tensor, splits: int | None = None) -> torch.Tensor:
    """B^T @ grad_theta with B generated in the kernel; rows split over programs, partials summed here."""
    grad = torch.zeros(basis.num_coeffs, device=basis.device)
    grad_theta = grad_theta.contiguous()
    lo, hi = _seed(basis)
    for b in basis.blocks:
        groups = (b.row1 + 3) // 4 - b.row0 // 4
        col_tiles = triton.cdiv(b.col1 - b.col0, _BJ)
        if splits is None:   # enough programs to fill a large GPU, each at least a few steps long
            want = max(1, 1024 // col_tiles)
            splits_b = max(1, min(want, groups // (4 * _BG)))
        else:
            splits_b = splits
        per = triton.cdiv(triton.cdiv(groups, splits_b), _BG) * _BG
        splits_b = triton.cdiv(groups, per)
        partial = torch.empty(splits_b, b.col1 - b.col0, device=basis.device)
        _project_kernel[(col_tiles, splits_b)](grad_theta, basis.bounds, partial, b.row0, b.row1, b.col0, b.col1,
                                               lo, hi, per, BG=_BG, BJ=_BJ)
        grad[b.col0:b.col1] += partial.sum(0)
    return grad


def values(basis: "Basis", row0: int, row1: int, col0: int, col1: int) -> torch.Tensor:
    """B[row0:row1, col0:col1] (one stream-0 block, any rows/cols) as generated inside a kernel."""
    out = torch.empty(row1 - row0, col1 - col0, device=basis.device)
    lo, hi = _seed(basis)
    groups = (row1 + 3) // 4 - row0 // 4
    _values_kernel[(triton.cdiv(groups, _BG), triton.cdiv(col1 - col0, _BJ))](
        basis.bounds, out, row0, row1, col0, col1, lo, hi, BG=_BG, BJ=_BJ)
    return out
