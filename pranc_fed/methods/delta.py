"""What topk, qsgd and signsgd share: the uplink is a compressed *model delta*, the downlink is
FedAvg's dense global weights, in float32 or (methods.downlink_dtype) float16.

A client flattens its delta (weights after local training minus the start state) into one
float32 vector over the state's keys in sorted order (each key's tensor raveled in C order) and,
with error feedback on, adds the residual it kept from its previous round:

    target   = delta + residual                  (residual = 0 without error feedback)
    arrays   = compress(target)                  the reply: a few raw arrays, fixed keys
    sent     = decompress(arrays)                exactly what the server will decode
    residual = target - sent                     kept in the client's memory for the next round

Running statistics (BatchNorm's running_mean/var, the float buffers) are not trained and are
not compressed: their deltas travel dense in float32 under their own names. Compressed like
weights, a variance could come out negative and turn the global model's evaluation into NaN.
They are a small share of a model (ResNet20: 1,376 of 271,098 values).

The server decodes the same arrays (checking keys, dtypes, shapes, value ranges, padding bits,
finiteness; anything else raises InvalidReply) and unflattens the vector into a delta per key.
Each subclass declares its wire layout in `wire_spec(sizes)`: the arrays it sends, their dtypes
and shapes, all determined by the config and the model (so the server knows them up front),
and `payload_bytes` = the sum of their data bytes (Flower's protobuf adds a few dozen bytes
of key, dtype and shape per array; the byte ledger counts those too).
"""

from __future__ import annotations

import zlib
from abc import abstractmethod
from functools import cached_property

import numpy as np
from flwr.app import ArrayRecord
from torch import nn

from .base import InvalidReply, State, check_finite, check_keys, from_array, to_array
from .fedavg import FedAvg

RESIDUAL_KEY = "error-feedback-residual"
Spec = dict[str, tuple[str, tuple[int, ...]]]  # array key -> (dtype, shape)


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


class DenseDelta(FedAvg):
    """Base of the dense-model methods that send a compressed delta; see the module docstring."""

    supports_error_feedback = False  # whether methods.error_feedback applies to this method

    @property
    def wire_dtype(self) -> str:
        """The downlink: the dense global weights, as FedAvg sends them. A client's delta is taken from
        the weights it received, so an fp16 downlink never rounds the server's float32 state."""
        return self.cfg.methods.downlink_dtype

    @property
    def error_feedback(self) -> bool:
        return self.supports_error_feedback and self.cfg.methods.error_feedback

    def setting(self) -> str:
        return self.uplink_setting() + ("-down16" if self.wire_dtype == "float16" else "")

    def uplink_setting(self) -> str:
        return "ef" if self.error_feedback else "noef"

    def fingerprint(self, model: nn.Module) -> str:
        # The wire layout depends on the method's settings: both sides must agree on them.
        return f"{super().fingerprint(model)}:{self.setting()}"

    # ---------------------------------------------------------------- what a subclass defines

    @abstractmethod
    def wire_spec(self, sizes: list[int]) -> Spec:
        """The arrays a reply carries for tensors of these sizes (sorted-key order)."""

    @abstractmethod
    def compress(self, flat: np.ndarray, sizes: list[int]) -> dict[str, np.ndarray]:
        """Encode the float32 vector `flat` (the tensors of `sizes`, concatenated) as wire_spec's arrays."""

    @abstractmethod
    def decompress(self, arrays: dict[str, np.ndarray], sizes: list[int]) -> np.ndarray:
        """The float32 vector the arrays encode; raises InvalidReply on any value the encoder cannot produce."""

    # ---------------------------------------------------------------- shared machinery

    @cached_property
    def stat_keys(self) -> frozenset[str]:
        """The architecture's float buffers (running statistics): sent dense, never compressed."""
        from ..models import build_model
        return frozenset(k for k, b in build_model(self.cfg.model.arch).named_buffers() if b.is_floating_point())

    def compressed_keys(self, state: State) -> list[str]:
        return sorted(k for k in state if k not in self.stat_keys)

    def sizes(self, state: State) -> list[int]:
        return [int(state[k].size) for k in self.compressed_keys(state)]

    def payload_bytes(self, sizes: list[int]) -> int:
        """Data bytes of one reply's compressed part: the byte formula of each subclass, computed from its
        wire_spec (running statistics add 4 B per value)."""
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for dtype, shape in self.wire_spec(sizes).values())

    def flatten(self, state: State) -> np.ndarray:
        """The compressed tensors of state as one float32 vector (sorted-key order)."""
        return np.concatenate([state[k].astype(np.float32).ravel() for k in self.compressed_keys(state)])

    def unflatten(self, flat: np.ndarray, like: State) -> State:
        out, offset = {}, 0
        for key in self.compressed_keys(like):
            n = like[key].size
            out[key] = flat[offset:offset + n].reshape(like[key].shape).astype(np.float32)
            offset += n
        return out

    def encode_up(self, model: nn.Module, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        now = self.initial_state(model)
        delta = {k: now[k] - start[k] for k in start}
        target = self.flatten(delta)
        residual = memory.get(RESIDUAL_KEY)
        if self.error_feedback and residual is not None and residual.shape == target.shape:
            target = target + residual.astype(np.float32)
        sizes = self.sizes(start)
        arrays = self.compress(target, sizes)
        if self.error_feedback:
            memory[RESIDUAL_KEY] = (target - self.decompress(arrays, sizes)).astype(np.float32)
        stats = {k: delta[k] for k in start if k in self.stat_keys}
        return ArrayRecord({k: to_array(v) for k, v in (arrays | stats).items()})

    def decode_up(self, record: ArrayRecord, state: State) -> State:
        sizes = self.sizes(state)
        spec = self.wire_spec(sizes)
        stats = {k: state[k] for k in state if k in self.stat_keys}
        check_keys(record, set(spec) | set(stats))
        flat = self.decompress({k: from_array(record[k], k, dtype, shape) for k, (dtype, shape) in spec.items()},
                               sizes)
        check_finite("delta", flat)
        delta = self.unflatten(flat, state)
        for key, like in stats.items():
            delta[key] = from_array(record[key], key, "float32", like.shape)
            check_finite(key, delta[key])
        return {k: delta[k] for k in state}


def check_scales(name: str, values: np.ndarray) -> None:
    """Per-tensor norms/scales: finite and non-negative."""
    check_finite(name, values)
    if (values < 0).any():
        raise InvalidReply(f"{name}: negative value")


def segment_ids(sizes: list[int]) -> np.ndarray:
    """Index of the tensor each element of the flat vector belongs to."""
    return np.repeat(np.arange(len(sizes)), sizes)


def segments(flat: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """The flat vector split back into its tensors (float64 views for exact reductions)."""
    return np.split(flat.astype(np.float64), np.cumsum(sizes)[:-1])


def seeded_rng(seed: int, flat: np.ndarray, draw: int) -> np.random.Generator:
    """A generator determined by the config seed, the vector being encoded and a per-instance counter:
    reproducible runs, yet independent draws for different clients, rounds and repeated calls."""
    return np.random.default_rng([seed % 2**32, seed >> 32, zlib.crc32(flat.tobytes()), draw])
