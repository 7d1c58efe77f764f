"""PRANC: clients train alpha (K numbers) and send it; the basis never travels."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from ..data import DatasetBundle
from ..pranc import PrancModel
from ..training import build_pranc
from .base import Method, State, decode_state, float_state, to_array


class Pranc(Method):
    name = "pranc"
    lr_key = "pranc.alpha_lr"

    def build_model(self, bundle: DatasetBundle, device: torch.device) -> PrancModel:
        return build_pranc(self.cfg, bundle, device)

    def setting(self) -> str:
        return f"K{self.cfg.pranc.num_coeffs}" + ("-fp16" if self.cfg.pranc.alpha_dtype == "float16" else "")

    def fingerprint(self, model: PrancModel) -> str:
        return str(model.fingerprint)

    def _shared_local(self, model: PrancModel) -> State:
        return float_state(model.local_state()) if self.cfg.pranc.share_local_params else {}

    def _wire(self, alpha: np.ndarray) -> np.ndarray:
        return alpha.astype(self.cfg.pranc.alpha_dtype)

    def initial_state(self, model: PrancModel) -> State:
        return {"alpha": model.alpha.detach().cpu().numpy().astype(np.float32)} | self._shared_local(model)

    def encode_down(self, state: State) -> ArrayRecord:
        return ArrayRecord({k: to_array(self._wire(v) if k == "alpha" else v) for k, v in state.items()})

    def _decode(self, record: ArrayRecord, like: State) -> State:
        return decode_state(record, like, lambda key: self.cfg.pranc.alpha_dtype if key == "alpha" else "float32")

    def load_state(self, model: PrancModel, state: State) -> None:
        with torch.no_grad():
            model.alpha.copy_(torch.from_numpy(state["alpha"]))
        local = {k: torch.from_numpy(v) for k, v in state.items() if k != "alpha"}
        if local:
            model.module.load_state_dict(local, strict=False)

    def load_down(self, model: PrancModel, record: ArrayRecord, memory: dict[str, np.ndarray]) -> State:
        state = self._decode(record, self.initial_state(model))
        self.load_state(model, state)
        if not self.cfg.pranc.share_local_params and memory:
            # FedBN: this client's own normalisation state survives between rounds.
            model.module.load_state_dict({k: torch.from_numpy(v) for k, v in memory.items()}, strict=False)
        return state

    def encode_up(self, model: PrancModel, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        if not self.cfg.pranc.share_local_params:
            memory.update({k: v.cpu().numpy() for k, v in model.local_state().items()})
        return self.encode_down(self.initial_state(model))

    def decode_up(self, record: ArrayRecord, state: State) -> State:
        sent = {k: self._wire(v).astype(np.float32) if k == "alpha" else v for k, v in state.items()}
        received = self._decode(record, state)
        return {k: received[k] - sent[k] for k in state}
