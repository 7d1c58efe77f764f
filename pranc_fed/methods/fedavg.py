"""Dense FedAvg: the whole model travels, in float32 or float16, both ways."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from ..data import DatasetBundle
from ..models import build_dense
from .base import Method, State, decode_state, float_state, to_array


class FedAvg(Method):
    name = "fedavg"
    wire_dtype = "float32"
    plain_update = True

    def setting(self) -> str:
        return {"float32": "fp32", "float16": "fp16"}[self.wire_dtype]

    def build_model(self, bundle: DatasetBundle, device: torch.device) -> nn.Module:
        return build_dense(self.cfg, bundle, device)

    def state_of(self, model: nn.Module) -> State:
        return float_state(model.state_dict())

    def encode_down(self, state: State, memory: dict[str, np.ndarray] | None = None) -> ArrayRecord:
        return ArrayRecord({k: to_array(v.astype(self.wire_dtype)) for k, v in state.items()})

    def decode_state(self, record: ArrayRecord, like: State) -> State:
        return decode_state(record, like, lambda key: self.wire_dtype)

    def decode_down(self, record: ArrayRecord, like: State) -> State:
        return self.decode_state(record, like)

    def load_state(self, model: nn.Module, state: State) -> None:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)

    def load_down(self, model: nn.Module, record: ArrayRecord, memory: dict[str, np.ndarray]) -> State:
        state = self.decode_down(record, self.state_of(model))
        self.load_state(model, state)
        return state

    def encode_up(self, model: nn.Module, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        return self.encode_down(self.state_of(model))

    def decode_up(self, record: ArrayRecord, state: State) -> State:
        received = self.decode_state(record, state)
        return {k: received[k] - v.astype(self.wire_dtype).astype(np.float32) for k, v in state.items()}


class FedAvgFp16(FedAvg):
    name = "fedavg_fp16"
    wire_dtype = "float16"
