"""B @ alpha and g^T B over a cached (or streamed) block of B, on worker threads that each run
single-threaded torch ops."""

from __future__ import annotations

import torch

from .generator import _map, _row_parts

# Elements of a low-precision cache converted to float32 at a time (2 MB per worker: L2/L3-sized).
_TILE_ELEMS = 1 << 19


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
