"""Codecs for a float32 vector on the wire, and the bit-packing helpers every method shares.

A codec turns n float32 values into a few raw little-endian arrays and back. Its arrays travel
under the vector's key (`alpha`) and, for the block-scaled codecs, `<key>.scale`. Every layout,
for n values in blocks of b (nb = ceil(n / b) blocks, the last one possibly shorter):

    codec     arrays                                     bytes               error per value
    float32   key float32 (n,)                           4 n                 0
    float16   key float16 (n,)                           2 n                 half an fp16 ulp (nearest)
    bfloat16  key uint16 (n,): the high 16 bits of the   2 n                 half a bf16 ulp (nearest)
              float32 pattern
    int8      key int8 (n,): q in [-127, 127]            n + 4 nb            s / 2 (nearest)
              key.scale float32 (nb,): s = max|x| / 127
    int4      key uint8 (ceil(n/2),): q + 7, q in        ceil(n/2) + 4 nb    s / 2 (nearest)
              [-7, 7], two 4-bit fields per byte, LSB first
              key.scale float32 (nb,): s = max|x| / 7
    nf4       key uint8 (ceil(n/2),): index into NF4     ceil(n/2) + 4 nb    s * 0.152 (nearest; the
              (16 levels in [-1, 1], QLoRA), packed                          widest gap is 0.304)
              as int4
              key.scale float32 (nb,): s = max|x|
    int2      key uint8 (ceil(n/4),): q + 1, q in        ceil(n/4) + 4 nb    s / 2 (nearest)
              {-1, 0, 1}, four 2-bit fields per byte,
              LSB first (ternary, as TernGrad)
              key.scale float32 (nb,): s = max|x|

The value is level(q) * s. A block that is all zero gets s = 1 (scales are always positive).
Rounding is `nearest` (float16 and bfloat16: ties to even; block-scaled: ties to the lower level) or `stochastic`: the value goes to one of its two neighbouring
codes with the probabilities that make the expectation exact (E[decode] = x), at most one step off.
Decoding checks everything an encoder cannot produce (dtype, shape, packed length, padding bits,
codes out of range, scales not finite or not positive, a non-finite result) and raises InvalidReply.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np


class InvalidReply(ValueError):
    """A client reply that must not touch the global model; the message says why."""


Spec = dict[str, tuple[str, tuple[int, ...]]]  # array key -> (dtype, shape)
ROUNDINGS = ("nearest", "stochastic")


# ---------------------------------------------------------------- bit packing

def packed_size(count: int, bits: int) -> int:
    """Bytes that `count` fields of `bits` bits take when packed: ceil(count * bits / 8)."""
    return -(-count * bits // 8)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers < 2**bits into a uint8 array, `bits` bits each, LSB first
    (field i occupies bits [i*bits, (i+1)*bits) of the little-endian bit stream); padding bits are 0."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    v = np.ascontiguousarray(values, dtype="<u4").ravel()
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    fields = np.unpackbits(v.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")[:, :bits]
    return np.packbits(fields.ravel(), bitorder="little")


def unpack_bits(packed: np.ndarray, count: int, bits: int, name: str) -> np.ndarray:
    """Inverse of pack_bits; raises InvalidReply if the buffer has the wrong size or padding bits set."""
    if packed.dtype != np.uint8 or packed.size != packed_size(count, bits):
        raise InvalidReply(f"{name}: {packed.size} bytes, expected {packed_size(count, bits)}")
    stream = np.unpackbits(packed, bitorder="little")
    if stream[count * bits:].any():
        raise InvalidReply(f"{name}: padding bits are not zero")
    fields = np.zeros((count, 32), dtype=np.uint8)
    fields[:, :bits] = stream[:count * bits].reshape(count, bits)
    return np.packbits(fields, axis=1, bitorder="little").view("<u4").ravel().astype(np.uint32)


def seeded_rng(seed: int, flat: np.ndarray, draw: int) -> np.random.Generator:
    """A generator determined by the config seed, the vector being encoded and a per-instance counter:
    reproducible runs, yet independent draws for different clients, rounds and repeated calls."""
    return np.random.default_rng([seed % 2**32, seed >> 32, zlib.crc32(flat.tobytes()), draw])


def check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise InvalidReply(f"{name}: contains NaN or Inf")


# ---------------------------------------------------------------- codecs

class Codec(ABC):
    """n float32 values <-> the arrays of one layout in the module docstring."""

    name: str = ""

    def __init__(self, block: int, rounding: str):
        self.block, self.stochastic = block, rounding == "stochastic"

    @abstractmethod
    def spec(self, key: str, n: int) -> Spec:
        """The arrays (key -> dtype, shape) that carry n values."""

    @abstractmethod
    def encode(self, key: str, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The arrays of spec(key, x.size) for the float32 values x."""

    @abstractmethod
    def decode(self, key: str, arrays: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The float32 values the arrays carry; raises InvalidReply on anything encode cannot produce."""

    @property
    def lossless(self) -> bool:
        return False


class Float32(Codec):
    name = "float32"

    @property
    def lossless(self) -> bool:
        return True

    def spec(self, key, n):
        return {key: ("float32", (n,))}

    def encode(self, key, x, rng):
        return {key: x.astype(np.float32)}

    def decode(self, key, arrays, n):
        values = arrays[key].astype(np.float32)
        check_finite(key, values)
        return values


def _stochastic_between(x: np.ndarray, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per element, True where x (low <= x <= high) goes up to high, with probability (x - low) / (high - low)."""
    gap = high.astype(np.float64) - low
    p = np.divide(x.astype(np.float64) - low, gap, out=np.zeros(x.shape), where=gap > 0)
    return rng.random(x.shape) < p


class Float16(Codec):
    name = "float16"

    def spec(self, key, n):
        return {key: ("float16", (n,))}

    def encode(self, key, x, rng):
        top = float(np.finfo(np.float16).max)
        x = np.clip(x, -top, top)  # out of range would round to Inf, which no decoder accepts
        near = x.astype(np.float16)
        if self.stochastic:
            other = np.nextafter(near, np.where(near.astype(np.float32) > x, -np.inf, np.inf).astype(np.float16))
            low, high = np.minimum(near, other), np.maximum(near, other)
            near = np.where(_stochastic_between(x, low, high, rng), high, low)
        return {key: near}

    def decode(self, key, arrays, n):
        values = arrays[key].astype(np.float32)
        check_finite(key, values)
        return values


class BFloat16(Codec):
    name = "bfloat16"

    def spec(self, key, n):
        return {key: ("uint16", (n,))}

    def encode(self, key, x, rng):
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        if self.stochastic:  # add 16 random bits below the kept ones, then truncate: unbiased in magnitude
            bits = bits + rng.integers(0, 1 << 16, size=bits.shape, dtype=np.uint64)
        else:  # round to nearest, ties to even
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
        high = (bits >> 16).astype(np.uint16)
        # A carry into the exponent that reaches Inf: step back to the largest finite bf16 of that sign.
        inf = (high & 0x7FFF) == 0x7F80
        high[inf] -= 1
        return {key: high}

    def decode(self, key, arrays, n):
        values = (arrays[key].astype(np.uint32) << 16).view(np.float32)
        check_finite(key, values)
        return values


class BlockScaled(Codec):
    """Codes in per-block units of a positive float32 scale: the int8, int4 and nf4 layouts."""

    levels: np.ndarray  # the value of each code, in units of the block's scale, ascending
    scale_divisor: float  # s = max|x| / scale_divisor

    def blocks(self, n: int) -> int:
        return -(-n // self.block)

    def scales(self, x: np.ndarray) -> np.ndarray:
        n = x.size
        padded = np.zeros(self.blocks(n) * self.block, dtype=np.float32)
        padded[:n] = np.abs(x)
        s = (padded.reshape(-1, self.block).max(axis=1) / np.float32(self.scale_divisor)).astype(np.float32)
        return np.where(s > 0, s, np.float32(1.0))

    def spec(self, key, n):
        return {key: self.code_spec(n), f"{key}.scale": ("float32", (self.blocks(n),))}

    def encode(self, key, x, rng):
        s = self.scales(x)
        v = np.clip(x.astype(np.float64) / np.repeat(s, self.block)[:x.size], self.levels[0], self.levels[-1])
        up = np.searchsorted(self.levels, v, side="left").clip(1, len(self.levels) - 1)
        low, high = self.levels[up - 1], self.levels[up]
        if self.stochastic:
            idx = np.where(_stochastic_between(v, low, high, rng), up, up - 1)
        else:
            idx = np.where(high - v < v - low, up, up - 1)
        return {key: self.pack(idx.astype(np.uint32)), f"{key}.scale": s}

    def decode(self, key, arrays, n):
        s = arrays[f"{key}.scale"]
        if not np.all(np.isfinite(s)) or not np.all(s > 0):
            raise InvalidReply(f"{key}.scale: a block scale is not finite and positive")
        idx = self.unpack(arrays[key], n, key)
        with np.errstate(over="ignore"):  # a crafted scale may overflow float32: refused just below
            values = (self.levels[idx] * np.repeat(s.astype(np.float64), self.block)[:n]).astype(np.float32)
        check_finite(key, values)
        return values

    @abstractmethod
    def code_spec(self, n: int) -> tuple[str, tuple[int, ...]]:
        """(dtype, shape) of the codes array."""

    @abstractmethod
    def pack(self, idx: np.ndarray) -> np.ndarray:
        """Level indices -> the codes array."""

    @abstractmethod
    def unpack(self, codes: np.ndarray, n: int, key: str) -> np.ndarray:
        """The codes array -> level indices, checked in range."""


class Int8(BlockScaled):
    name = "int8"
    levels = np.arange(-127, 128, dtype=np.float64)
    scale_divisor = 127.0

    def code_spec(self, n):
        return "int8", (n,)

    def pack(self, idx):
        return (idx.astype(np.int16) - 127).astype(np.int8)

    def unpack(self, codes, n, key):
        if (codes == -128).any():
            raise InvalidReply(f"{key}: code -128 is outside [-127, 127]")
        return codes.astype(np.int64) + 127


class Packed(BlockScaled):
    """Level indices of `bits` bits each, packed LSB first."""

    bits: int

    def code_spec(self, n):
        return "uint8", (packed_size(n, self.bits),)

    def pack(self, idx):
        return pack_bits(idx, self.bits)

    def unpack(self, codes, n, key):
        idx = unpack_bits(codes, n, self.bits, key).astype(np.int64)
        if (idx >= len(self.levels)).any():
            raise InvalidReply(f"{key}: a {self.bits}-bit code exceeds {len(self.levels) - 1}")
        return idx


class Int4(Packed):
    name = "int4"
    bits = 4
    levels = np.arange(-7, 8, dtype=np.float64)  # 15 levels: code 15 is never sent
    scale_divisor = 7.0


class NF4(Packed):
    name = "nf4"
    bits = 4
    # The NormalFloat-4 levels of QLoRA (Dettmers et al. 2023): quantiles of N(0, 1), scaled to [-1, 1].
    levels = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])
    scale_divisor = 1.0


class Int2(Packed):
    name = "int2"
    bits = 2
    levels = np.array([-1.0, 0.0, 1.0])  # code 3 is never sent
    scale_divisor = 1.0


CODECS: dict[str, Callable[[int, str], Codec]] = {c.name: c for c in (Float32, Float16, BFloat16, Int8, Int4, NF4, Int2)}


def make_codec(name: str, block: int = 256, rounding: str = "nearest") -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    return CODECS[name](block, rounding)


def spec_bytes(spec: Spec) -> int:
    """Data bytes of the arrays of a spec."""
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for dtype, shape in spec.values())
