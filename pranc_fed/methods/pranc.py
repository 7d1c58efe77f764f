"""PRANC: clients train alpha (K numbers) and send it; the basis never travels.

alpha travels through the codecs of pranc.downlink_codec and pranc.uplink_codec (layouts in
codecs.py); the model's other shared parameters (normalisation layers) travel dense in float32.
A broadcast alpha that is all zeros (the first one, the start of every re-seeded period) travels
as no arrays at all.

    server  broadcast  a' = Q_down(s + e_s);   e_s <- s + e_s - a'     s: the exact global alpha
    client  trains from a', reaches a;  sends  q = Q_up(a - a' + e_c);   e_c <- a - a' + e_c - q
    server  s <- s + mean(q)  (weighted, then the server optimiser)

e_s and e_c are the error-feedback residuals (pranc.error_feedback): what rounding lost is added to
the next message, so it is delayed, never dropped. e_s lives on the server, so its exact state
never degrades and every client decodes the same broadcast; e_c lives in the client's Flower state.

Re-seeded subspaces (pranc.reseed_period P > 0; the fold itself is specified in basis/). When a
period ends, at the start of round kP + 1, the server encodes its alpha (plus e_s) with the downlink
codec as `fold<k>`, decodes it to a_k, appends a_k to the history (the state's `history`, n x K),
and restarts from alpha = 0; both residuals belong to the old basis and are dropped. Every party
folds the same a_k, so all stay bit-identical. Each broadcast carries `period` = [n, h] (int64:
the number of folds and the first 8 bytes of the history's sha256, as little-endian int64); a
client rebuilds the model from the history it keeps in its Flower state plus the `fold<i>` arrays
it lacks, which the server adds to that client's message alone (the ledger counts them): every
fold after the last period the client's accepted replies were in, all of them for a client never
heard from or whose last reply failed. A reply carries the client's `period` too; a mismatch drops
it. Sending dense theta0 instead of the history would pay only after 4d / (bytes of one fold)
periods (35 for LeNet at K = 5000 in int8), so it is not offered.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from ..codecs import BlockScaled, Codec, InvalidReply, make_codec, seeded_rng
from ..data import DatasetBundle
from ..models import build_pranc
from ..pranc import PrancModel
from .base import OPTIMIZER_PREFIX, Method, State, decode_state, float_state, forget_optimizer, from_array, to_array

RESIDUAL_KEY = "error-feedback-residual"
HISTORY_KEY = "history"  # in the state and in a client's memory: the folded alphas, n x K
PERIOD_KEY = "period"


class Pranc(Method):
    name = "pranc"
    lr_key = "pranc.alpha_lr"
    plain_update = True

    def __init__(self, cfg):
        super().__init__(cfg)
        p = cfg.pranc
        self.up = make_codec(p.uplink_codec, p.codec_block, p.codec_rounding)
        self.down = make_codec(p.downlink_codec, p.codec_block, p.codec_rounding)
        self.reseed_period = p.reseed_period
        self._draws = 0

    def checkpoint(self) -> dict:
        return {"draws": self._draws}  # seeds the next stochastic rounding

    def restore(self, saved: dict) -> None:
        self._draws = int(saved["draws"])

    def build_model(self, bundle: DatasetBundle, device: torch.device) -> PrancModel:
        return build_pranc(self.cfg, bundle, device)

    def setting(self) -> str:
        p = self.cfg.pranc
        codecs = list(dict.fromkeys([p.uplink_codec, p.downlink_codec]))
        lossy = [c for c in (self.up, self.down) if not c.lossless]
        extras = ([] if codecs == ["float32"] else codecs) + \
                 (["sr"] if p.codec_rounding == "stochastic" and lossy else []) + \
                 ([f"b{p.codec_block}"] if p.codec_block != 256 and any(isinstance(c, BlockScaled) for c in lossy) else []) + \
                 (["noef"] if not p.error_feedback and lossy else []) + \
                 ([f"P{p.reseed_period}"] if p.reseed_period else [])
        return "-".join([f"K{p.num_coeffs}", *extras])

    def network(self, model: PrancModel) -> torch.nn.Module:
        return model.module

    def fingerprint(self, model: PrancModel) -> str:
        return str(model.seed_fingerprint)  # messages also carry their period (module docstring)

    # ---------------------------------------------------------------- state

    def _shared_local(self, model: PrancModel) -> State:
        return float_state(model.local_state()) if self.cfg.pranc.share_local_params else {}

    def state_of(self, model: PrancModel) -> State:
        state = {"alpha": model.alpha.detach().cpu().numpy().astype(np.float32)} | self._shared_local(model)
        if self.reseed_period:
            state[HISTORY_KEY] = _stack(model.history, model.num_coeffs)
        return state

    def load_state(self, model: PrancModel, state: State) -> None:
        if HISTORY_KEY in state:
            model.sync_history(state[HISTORY_KEY])
        with torch.no_grad():
            model.alpha.copy_(torch.from_numpy(state["alpha"]))
        local = {k: torch.from_numpy(v) for k, v in _trained(state).items() if k != "alpha"}
        if local:
            model.module.load_state_dict(local, strict=False)

    def aggregate(self, state: State, replies: list[State], weights: np.ndarray, optimizer, memory: dict) -> State:
        return super().aggregate(_trained(state), replies, weights, optimizer, memory) | \
            {k: v for k, v in state.items() if k == HISTORY_KEY}

    # ---------------------------------------------------------------- wire

    def _quantize(self, codec: Codec, key: str, values: np.ndarray,
                  residual: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(codec arrays under key, the vector they encode): values plus the residual when error feedback
        is on and the residual fits."""
        target = values
        if residual is not None and self.cfg.pranc.error_feedback and residual.shape == values.shape:
            target = values + residual
        self._draws += 1
        return codec.encode(key, target, seeded_rng(self.cfg.seed, target, self._draws)), target

    def _encode(self, codec: Codec, state: State, memory: dict[str, np.ndarray] | None,
                omit_zeros: bool = False) -> ArrayRecord:
        """alpha through codec, adding and updating the residual in memory (None: no error feedback);
        the other keys dense float32. omit_zeros (the downlink): an all-zero alpha as no arrays."""
        feedback = memory is not None and self.cfg.pranc.error_feedback and not codec.lossless
        arrays, target = self._quantize(codec, "alpha", state["alpha"], memory.get(RESIDUAL_KEY) if feedback else None)
        if omit_zeros and not target.any():
            arrays = {}
        if feedback:
            memory[RESIDUAL_KEY] = (target - (codec.decode("alpha", arrays, target.size) if arrays else 0)).astype(np.float32)
        dense = {k: v for k, v in state.items() if k != "alpha"}
        return ArrayRecord({k: to_array(v) for k, v in (arrays | dense).items()})

    def _decode(self, codec: Codec, record: ArrayRecord, like: State, others: set[str] = frozenset(),
                omit_zeros: bool = False) -> State:
        n = like["alpha"].size
        spec = codec.spec("alpha", n)
        sent = set(spec) if not omit_zeros or any(k in record for k in spec) else set()  # none: all zeros
        dense = decode_state(record, {k: v for k, v in like.items() if k != "alpha"}, lambda key: "float32",
                             sent | others)
        alpha = codec.decode("alpha", {k: from_array(record[k], k, dt, shape) for k, (dt, shape) in spec.items()}, n) \
            if sent else np.zeros(n, np.float32)
        return {"alpha": alpha} | dense

    def _with_period(self, record: ArrayRecord, history: np.ndarray | None) -> ArrayRecord:
        if history is not None:
            record[PERIOD_KEY] = to_array(_period_tag(history))
        return record

    def encode_down(self, state: State, memory: dict[str, np.ndarray] | None = None) -> ArrayRecord:
        return self._with_period(self._encode(self.down, _trained(state), memory, omit_zeros=True),
                                 state.get(HISTORY_KEY))

    def load_down(self, model: PrancModel, record: ArrayRecord, memory: dict[str, np.ndarray]) -> State:
        others: set[str] = set()
        if self.reseed_period:
            history, others = self._receive_history(record, memory, model.num_coeffs)
            model.sync_history(history)
        state = self._decode(self.down, record, _trained(self.state_of(model)), others, omit_zeros=True)
        self.load_state(model, state)
        own = {k: torch.from_numpy(v) for k, v in memory.items()
               if k not in (RESIDUAL_KEY, HISTORY_KEY) and not k.startswith(OPTIMIZER_PREFIX)}
        if not self.cfg.pranc.share_local_params and own:
            # FedBN: this client's own normalisation state survives between rounds.
            model.module.load_state_dict(own, strict=False)
        return state

    def decode_down(self, record: ArrayRecord, like: State) -> State:
        return self._decode(self.down, record, _trained(like), omit_zeros=True)

    def encode_up(self, model: PrancModel, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        if not self.cfg.pranc.share_local_params:
            memory.update({k: v.cpu().numpy() for k, v in model.local_state().items()})
        delta = self._encode(self.up, self.update(model, start), memory)
        return self._with_period(delta, _stack(model.history, model.num_coeffs) if self.reseed_period else None)

    def decode_up(self, record: ArrayRecord, state: State) -> State:
        others = set()
        if HISTORY_KEY in state:
            tag = from_array(record[PERIOD_KEY], PERIOD_KEY, "int64", (2,)) if PERIOD_KEY in record else None
            if tag is None or not np.array_equal(tag, _period_tag(state[HISTORY_KEY])):
                raise InvalidReply(f"period {None if tag is None else tag.tolist()} differs from the server's "
                                   f"{_period_tag(state[HISTORY_KEY]).tolist()}: a stale or foreign client")
            others = {PERIOD_KEY}
        return self._decode(self.up, record, _trained(state), others)

    # ---------------------------------------------------------------- re-seeded periods

    def begin_round(self, state: State, server_round: int, memory: dict) -> State:
        """At the start of round kP + 1: fold (module docstring)."""
        if not self.reseed_period or server_round == 1 or (server_round - 1) % self.reseed_period:
            return state
        history = state[HISTORY_KEY]
        key = f"fold{len(history)}"
        alpha = state["alpha"]
        arrays, _ = self._quantize(self.down, key, alpha, memory.pop(RESIDUAL_KEY, None))
        memory.update(arrays)  # the exact bytes every client folds, kept for catch-up
        folded = self.down.decode(key, arrays, alpha.size)
        return state | {"alpha": np.zeros_like(alpha), HISTORY_KEY: np.vstack([history, folded[None, :]])}

    def period(self, state: State) -> int:
        return len(state[HISTORY_KEY]) if HISTORY_KEY in state else 0

    def catch_up(self, state: State, memory: dict, known: int) -> dict[str, Array]:
        n = state["alpha"].size
        return {k: to_array(memory[k]) for i in range(known, self.period(state)) for k in self.down.spec(f"fold{i}", n)}

    def _receive_history(self, record: ArrayRecord, memory: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, set[str]]:
        """The history the broadcast describes: this client's own plus the folds sent to it; the keys used."""
        if PERIOD_KEY not in record:
            raise InvalidReply("the broadcast has no period: the server does not re-seed (check pranc.reseed_period)")
        tag = from_array(record[PERIOD_KEY], PERIOD_KEY, "int64", (2,))
        periods = int(tag[0])
        history = memory.get(HISTORY_KEY, np.zeros((0, n), np.float32))[:max(periods, 0)]
        sent = {i for i in range(periods) if f"fold{i}" in record}
        used = {PERIOD_KEY} | {k for i in sent for k in self.down.spec(f"fold{i}", n)}
        folds = []
        for i in range(len(history), periods):
            if i not in sent:
                raise InvalidReply(f"the broadcast lacks fold{i}, which this client never received "
                                   "(its Flower state was lost?); its next message will carry every fold")
            spec = self.down.spec(f"fold{i}", n)
            folds.append(self.down.decode(f"fold{i}", {k: from_array(record[k], k, *spec[k]) for k in spec}, n))
        history = np.vstack([history, *[f[None, :] for f in folds]]) if folds else history
        if not np.array_equal(_period_tag(history), tag):
            raise InvalidReply(f"the rebuilt history {_period_tag(history).tolist()} differs from the server's "
                               f"{tag.tolist()}")
        if len(history) != len(memory.get(HISTORY_KEY, ())):
            memory.pop(RESIDUAL_KEY, None)  # the residual and the optimiser moments of another basis
            forget_optimizer(memory)
        memory[HISTORY_KEY] = history
        return history, used


def _trained(state: State) -> State:
    """The state without its history: what training changes and messages average."""
    return {k: v for k, v in state.items() if k != HISTORY_KEY}


def _stack(history: list[torch.Tensor], n: int) -> np.ndarray:
    return np.stack([h.numpy() for h in history]) if history else np.zeros((0, n), np.float32)


def _period_tag(history: np.ndarray) -> np.ndarray:
    """[number of folds, first 8 bytes of sha256(history, float32 little-endian) as int64]."""
    digest = hashlib.sha256(np.ascontiguousarray(history, dtype="<f4").tobytes()).digest()
    return np.array([len(history), int.from_bytes(digest[:8], "little", signed=True)], dtype=np.int64)
