"""topk: the model delta's k largest-magnitude entries, with client-side error feedback.

Sparsified SGD with memory (Stich et al. 2018): one global top-k over the whole flattened delta
(plus the residual the client kept), k = max(1, ceil(methods.topk_density * n)) for n parameters.
Wire: `values` float16 (k,) and `indices` int32 (k,), flat positions in strictly increasing order;
payload bytes = 6 k. Downlink: dense float32 global weights, as FedAvg.
"""

from __future__ import annotations

import math

import numpy as np

from ..codecs import InvalidReply, check_finite
from .delta import DenseDelta, Spec

FP16_MAX = float(np.finfo(np.float16).max)


class TopK(DenseDelta):
    name = "topk"
    supports_error_feedback = True

    def uplink_setting(self) -> str:
        return f"d{self.cfg.methods.topk_density:g}-{super().uplink_setting()}"

    def k(self, n: int) -> int:
        return min(n, max(1, math.ceil(self.cfg.methods.topk_density * n)))

    def wire_spec(self, sizes: list[int]) -> Spec:
        n = sum(sizes)
        if n >= 2**31:
            raise ValueError(f"{n} parameters do not fit int32 indices")
        k = self.k(n)
        return {"values": ("float16", (k,)), "indices": ("int32", (k,))}

    def compress(self, flat: np.ndarray, sizes: list[int]) -> dict[str, np.ndarray]:
        k = self.k(flat.size)
        indices = np.sort(np.argpartition(-np.abs(flat), k - 1)[:k]) if k < flat.size else np.arange(flat.size)
        values = np.clip(flat[indices], -FP16_MAX, FP16_MAX).astype(np.float16)
        return {"values": values, "indices": indices.astype(np.int32)}

    def decompress(self, arrays: dict[str, np.ndarray], sizes: list[int]) -> np.ndarray:
        n = sum(sizes)
        values, indices = arrays["values"], arrays["indices"].astype(np.int64)
        check_finite("values", values)
        if indices.size and (indices[0] < 0 or indices[-1] >= n):
            raise InvalidReply(f"indices: outside [0, {n})")
        if (np.diff(indices) <= 0).any():
            raise InvalidReply("indices: not strictly increasing")
        out = np.zeros(n, dtype=np.float32)
        out[indices] = values.astype(np.float32)
        return out
