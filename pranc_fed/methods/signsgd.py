"""signsgd: scaled sign of the model delta with client-side error feedback (EF-SignSGD,
Karimireddy et al. 2019), bit-packed.

For each tensor p of the flattened delta plus residual: C(p) = (||p||_1 / n) * sign(p), i.e. one
float32 scale (the mean |p|) and one bit per entry (1 = negative; 0 maps to +scale). With
methods.error_feedback the client keeps p - C(p) and adds it next round. Wire, T tensors of N
entries in all: `scales` float32 (T,) and `signs` uint8 (ceil(N / 8),);
payload bytes = 4 T + ceil(N / 8). Downlink: dense float32 global weights, as FedAvg.
"""

from __future__ import annotations

import numpy as np

from ..codecs import pack_bits, packed_size, unpack_bits
from .delta import DenseDelta, Spec, check_scales, segment_ids, segments


class SignSgd(DenseDelta):
    name = "signsgd"
    supports_error_feedback = True

    def wire_spec(self, sizes: list[int]) -> Spec:
        return {"scales": ("float32", (len(sizes),)), "signs": ("uint8", (packed_size(sum(sizes), 1),))}

    def compress(self, flat: np.ndarray, sizes: list[int]) -> dict[str, np.ndarray]:
        scales = np.array([np.abs(v).mean() if v.size else 0.0 for v in segments(flat, sizes)], dtype=np.float32)
        return {"scales": scales, "signs": pack_bits(flat < 0, 1)}

    def decompress(self, arrays: dict[str, np.ndarray], sizes: list[int]) -> np.ndarray:
        check_scales("scales", arrays["scales"])
        negative = unpack_bits(arrays["signs"], sum(sizes), 1, "signs")
        return (arrays["scales"][segment_ids(sizes)] * np.where(negative == 1, -1.0, 1.0)).astype(np.float32)
