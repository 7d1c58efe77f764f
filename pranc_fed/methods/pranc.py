"""PRANC: clients train alpha (K numbers) and send it; the basis never travels.

alpha travels through the codecs of pranc.downlink_codec and pranc.uplink_codec (layouts in
codecs.py); the model's other shared parameters (normalisation layers) travel dense in float32.

    server  broadcast  a' = Q_down(s + e_s);   e_s <- s + e_s - a'     s: the exact global alpha
    client  trains from a', reaches a;  sends  q = Q_up(a - a' + e_c);   e_c <- a - a' + e_c - q
    server  s <- s + mean(q)  (weighted, then the server optimiser)

e_s and e_c are the error-feedback residuals (pranc.error_feedback): what rounding lost is added to
the next message, so it is delayed, never dropped. e_s lives on the server, so its exact state
never degrades and every client decodes the same broadcast; e_c lives in the client's Flower state.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from ..codecs import Codec, make_codec, seeded_rng
from ..data import DatasetBundle
from ..pranc import PrancModel
from ..training import build_pranc
from .base import Method, State, decode_state, float_state, from_array, to_array

RESIDUAL_KEY = "error-feedback-residual"


class Pranc(Method):
    name = "pranc"
    lr_key = "pranc.alpha_lr"

    def __init__(self, cfg):
        super().__init__(cfg)
        p = cfg.pranc
        self.up = make_codec(p.uplink_codec, p.codec_block, p.codec_rounding)
        self.down = make_codec(p.downlink_codec, p.codec_block, p.codec_rounding)
        self._draws = 0

    def build_model(self, bundle: DatasetBundle, device: torch.device) -> PrancModel:
        return build_pranc(self.cfg, bundle, device)

    def setting(self) -> str:
        p = self.cfg.pranc
        codecs = list(dict.fromkeys([p.uplink_codec, p.downlink_codec]))
        if codecs == ["float32"]:
            return f"K{p.num_coeffs}"
        lossy = [c for c in (self.up, self.down) if not c.lossless]
        extras = (["sr"] if p.codec_rounding == "stochastic" else []) + \
                 ([f"b{p.codec_block}"] if p.codec_block != 256 and any(c.name in ("int8", "int4", "nf4") for c in lossy) else []) + \
                 (["noef"] if not p.error_feedback and lossy else [])
        return "-".join([f"K{p.num_coeffs}", *codecs, *extras])

    def fingerprint(self, model: PrancModel) -> str:
        return str(model.fingerprint)

    def _shared_local(self, model: PrancModel) -> State:
        return float_state(model.local_state()) if self.cfg.pranc.share_local_params else {}

    def initial_state(self, model: PrancModel) -> State:
        return {"alpha": model.alpha.detach().cpu().numpy().astype(np.float32)} | self._shared_local(model)

    def _encode(self, codec: Codec, state: State, memory: dict[str, np.ndarray] | None) -> ArrayRecord:
        """alpha through codec, adding and updating the residual in memory (None: no error feedback);
        the other keys dense float32."""
        target = state["alpha"]
        feedback = memory is not None and self.cfg.pranc.error_feedback and not codec.lossless
        residual = memory.get(RESIDUAL_KEY) if feedback else None
        if residual is not None and residual.shape == target.shape:
            target = target + residual
        self._draws += 1
        arrays = codec.encode("alpha", target, seeded_rng(self.cfg.seed, target, self._draws))
        if feedback:
            memory[RESIDUAL_KEY] = (target - codec.decode("alpha", arrays, target.size)).astype(np.float32)
        dense = {k: v for k, v in state.items() if k != "alpha"}
        return ArrayRecord({k: to_array(v) for k, v in (arrays | dense).items()})

    def _decode(self, codec: Codec, record: ArrayRecord, like: State) -> State:
        n = like["alpha"].size
        spec = codec.spec("alpha", n)
        dense = decode_state(record, {k: v for k, v in like.items() if k != "alpha"}, lambda key: "float32", set(spec))
        alpha = codec.decode("alpha", {k: from_array(record[k], k, dt, shape) for k, (dt, shape) in spec.items()}, n)
        return {"alpha": alpha} | dense

    def encode_down(self, state: State, memory: dict[str, np.ndarray] | None = None) -> ArrayRecord:
        return self._encode(self.down, state, memory)

    def load_state(self, model: PrancModel, state: State) -> None:
        with torch.no_grad():
            model.alpha.copy_(torch.from_numpy(state["alpha"]))
        local = {k: torch.from_numpy(v) for k, v in state.items() if k != "alpha"}
        if local:
            model.module.load_state_dict(local, strict=False)

    def load_down(self, model: PrancModel, record: ArrayRecord, memory: dict[str, np.ndarray]) -> State:
        state = self._decode(self.down, record, self.initial_state(model))
        self.load_state(model, state)
        own = {k: torch.from_numpy(v) for k, v in memory.items() if k != RESIDUAL_KEY}
        if not self.cfg.pranc.share_local_params and own:
            # FedBN: this client's own normalisation state survives between rounds.
            model.module.load_state_dict(own, strict=False)
        return state

    def encode_up(self, model: PrancModel, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        if not self.cfg.pranc.share_local_params:
            memory.update({k: v.cpu().numpy() for k, v in model.local_state().items()})
        now = self.initial_state(model)
        return self._encode(self.up, {k: now[k] - start[k] for k in start}, memory)

    def decode_up(self, record: ArrayRecord, state: State) -> State:
        return self._decode(self.up, record, state)
