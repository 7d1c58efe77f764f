"""qsgd: the model delta stochastically quantised to s levels per tensor, bit-packed (Alistarh et al. 2017).

For each tensor v (of the flattened delta) with L2 norm ||v|| and s = methods.qsgd_levels:

    r_i = s |v_i| / ||v||,  level_i = floor(r_i) + Bernoulli(r_i - floor(r_i))  in [0, s]
    Q(v)_i = ||v|| * sign(v_i) * level_i / s

E[Q(v)] = v (unbiased) and E||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||^2 (their Lemma 3.1).
No error feedback: the estimate is unbiased. Levels take b = bit_length(s) bits, fixed width (no
Elias coding). Wire, for T tensors of N entries in all:
    `norms`  float32 (T,)                    4 T bytes
    `levels` uint8   (ceil(N b / 8),)        b-bit fields, LSB first
    `signs`  uint8   (ceil(N / 8),)          1 = negative
payload bytes = 4 T + ceil(N b / 8) + ceil(N / 8). Downlink: dense float32 global weights, as FedAvg.
"""

from __future__ import annotations

import numpy as np

from ..codecs import InvalidReply, pack_bits, packed_size, seeded_rng, unpack_bits
from .delta import DenseDelta, Spec, check_scales, segment_ids, segments


def quantize(flat: np.ndarray, sizes: list[int], levels: int, rng: np.random.Generator):
    """(norms float32 (T,), levels uint32 (N,), negative bool (N,)) of QSGD with per-tensor L2 norms."""
    seg = segment_ids(sizes)
    norms = np.array([np.linalg.norm(v) for v in segments(flat, sizes)], dtype=np.float32)
    scale = norms[seg].astype(np.float64)
    r = np.divide(levels * np.abs(flat.astype(np.float64)), scale, out=np.zeros(flat.size), where=scale > 0)
    r = np.minimum(r, levels)
    low = np.floor(r)
    q = low + (rng.random(flat.size) < (r - low))
    return norms, q.astype(np.uint32), flat < 0


class Qsgd(DenseDelta):
    name = "qsgd"

    def __init__(self, cfg):
        super().__init__(cfg)
        self._draws = 0

    @property
    def levels(self) -> int:
        return self.cfg.methods.qsgd_levels

    @property
    def bits(self) -> int:
        return int(self.levels).bit_length()

    def uplink_setting(self) -> str:
        return f"s{self.levels}"

    def wire_spec(self, sizes: list[int]) -> Spec:
        n = sum(sizes)
        return {"norms": ("float32", (len(sizes),)), "levels": ("uint8", (packed_size(n, self.bits),)),
                "signs": ("uint8", (packed_size(n, 1),))}

    def compress(self, flat: np.ndarray, sizes: list[int]) -> dict[str, np.ndarray]:
        self._draws += 1
        norms, q, negative = quantize(flat, sizes, self.levels, seeded_rng(self.cfg.seed, flat, self._draws))
        return {"norms": norms, "levels": pack_bits(q, self.bits), "signs": pack_bits(negative, 1)}

    def decompress(self, arrays: dict[str, np.ndarray], sizes: list[int]) -> np.ndarray:
        n = sum(sizes)
        check_scales("norms", arrays["norms"])
        q = unpack_bits(arrays["levels"], n, self.bits, "levels")
        if (q > self.levels).any():
            raise InvalidReply(f"levels: a level exceeds s={self.levels}")
        negative = unpack_bits(arrays["signs"], n, 1, "signs")
        norms = arrays["norms"][segment_ids(sizes)]
        return (norms * np.where(negative == 1, -1.0, 1.0) * q / self.levels).astype(np.float32)
