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

from abc import abstractmethod
from functools import cached_property

import numpy as np
from flwr.app import ArrayRecord
from torch import nn

from .. import aggregation
from ..codecs import InvalidReply, Spec, check_finite, spec_bytes
from .base import State, check_keys, from_array, to_array
from .fedavg import FedAvg

RESIDUAL_KEY = "error-feedback-residual"


class DenseDelta(FedAvg):
    """Base of the dense-model methods that send a compressed delta; see the module docstring."""

    supports_error_feedback = False  # whether methods.error_feedback applies to this method
    plain_update = False  # its reply is a compressed delta, which 32-bit masks would undo

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
        from ..data import load_configured
        from ..models import build_model, model_args
        from ..user_code import is_import_path
        arch = self.cfg.model.arch
        # A model of the user's own has no default input: build it for the data (cached in-process).
        module = build_model(arch, **model_args(load_configured(self.cfg.data))) if is_import_path(arch) else build_model(arch)
        return frozenset(k for k, b in module.named_buffers() if b.is_floating_point())

    def compressed_keys(self, state: State) -> list[str]:
        return sorted(k for k in state if k not in self.stat_keys)

    def sizes(self, state: State) -> list[int]:
        return [int(state[k].size) for k in self.compressed_keys(state)]

    def payload_bytes(self, sizes: list[int]) -> int:
        """Data bytes of one reply's compressed part: the byte formula of each subclass, computed from its
        wire_spec (running statistics add 4 B per value)."""
        return spec_bytes(self.wire_spec(sizes))

    def flatten(self, state: State) -> np.ndarray:
        """The compressed tensors of state as one float32 vector (sorted-key order)."""
        return aggregation.flatten(state, self.compressed_keys(state))

    def unflatten(self, flat: np.ndarray, like: State) -> State:
        return aggregation.unflatten(flat, like, self.compressed_keys(like))

    def encode_up(self, model: nn.Module, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        delta = self.update(model, start)
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
