"""What a client trains and what it sends: one interface for every method.

Every method keeps the global model as a *state*, a dict of float32 numpy arrays (PRANC:
alpha plus shared local params; dense methods: the state_dict). A round is

    server  encode_down(state, memory)          -> ArrayRecord broadcast to clients (memory: the server's,
                                                   for a downlink with error feedback)
    client  load_down(model, record, memory)    -> start point, then local training
    client  encode_up(model, start, memory)     -> ArrayRecord reply (may use error feedback)
    server  decode_up(record, state)            -> delta of the state (validated, raises InvalidReply)

and the server aggregates the deltas: by default (Method.aggregate) it averages them weighted by
num-examples and applies its optimiser; a method may replace that rule (fedpm counts masks).
Arrays travel as raw little-endian bytes (stype "raw"): no 128-byte .npy header per array.
Adding a method is one module that subclasses Method, plus its class in METHODS (methods/__init__.py):
that registry is the list of choices of federation.method and methods.compare.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import nn

from .. import aggregation, privacy
from ..codecs import InvalidReply, check_finite
from ..config import ExperimentConfig
from ..data import DatasetBundle

RAW = "raw"
State = dict[str, np.ndarray]


def to_array(values: np.ndarray) -> Array:
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return Array(dtype=values.dtype.name, shape=tuple(values.shape), stype=RAW, data=values.tobytes())


def from_array(array: Array, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one raw Array, checking it is exactly what the protocol says it must be."""
    if array.stype != RAW:
        raise InvalidReply(f"{name}: storage type {array.stype!r}, expected {RAW!r}")
    if array.dtype != dtype:
        raise InvalidReply(f"{name}: dtype {array.dtype}, expected {dtype}")
    if tuple(array.shape) != tuple(shape):
        raise InvalidReply(f"{name}: shape {tuple(array.shape)}, expected {tuple(shape)}")
    expected_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(array.data) != expected_bytes:
        raise InvalidReply(f"{name}: {len(array.data)} data bytes, expected {expected_bytes}")
    return np.frombuffer(array.data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)


def float_state(tensors: dict[str, torch.Tensor]) -> State:
    """float32 copies of the floating-point tensors. Integer buffers (BatchNorm's num_batches_tracked)
    are bookkeeping, not model state, so they neither travel nor get averaged."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in tensors.items() if v.is_floating_point()}


def check_keys(record: ArrayRecord, expected: set[str]) -> None:
    got = set(record.keys())
    if got != expected:
        raise InvalidReply(f"array keys differ: missing {sorted(expected - got)}, unexpected {sorted(got - expected)}")


def decode_state(record: ArrayRecord, like: State, dtype_of: Callable[[str], str], others: set[str] = frozenset()) -> State:
    """Decode like's keys of a record that must carry exactly those keys (and `others`, which the caller
    decodes), with like's shapes, in dtype_of(key), all finite."""
    check_keys(record, set(like) | others)
    out = {}
    for key, ref in like.items():
        values = from_array(record[key], key, dtype_of(key), ref.shape).astype(np.float32)
        check_finite(key, values)
        out[key] = values
    return out


OPTIMIZER_PREFIX = "optimizer:"  # a client's kept optimiser state, in its memory (federation.keep_client_optimizer)


def keep_optimizer(optimizer: torch.optim.Optimizer, memory: dict[str, np.ndarray]) -> None:
    """Store the optimiser's per-parameter state (Adam: step and moments) in a client's memory."""
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            memory[f"{OPTIMIZER_PREFIX}{index}/{name}"] = torch.as_tensor(value).detach().cpu().numpy().copy()


def restore_optimizer(optimizer: torch.optim.Optimizer, memory: dict[str, np.ndarray]) -> None:
    """Load what keep_optimizer stored, unless it no longer fits the parameters (then start afresh)."""
    saved = {k.removeprefix(OPTIMIZER_PREFIX): v for k, v in memory.items() if k.startswith(OPTIMIZER_PREFIX)}
    if not saved:
        return
    current = optimizer.state_dict()
    params = {i: p for group, spec in zip(optimizer.param_groups, current["param_groups"])
              for i, p in zip(spec["params"], group["params"])}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in saved.items():
        index, _, name = key.partition("/")
        if not index.isdigit() or int(index) not in params or (value.ndim and value.shape != tuple(params[int(index)].shape)):
            forget_optimizer(memory)
            return
        state.setdefault(int(index), {})[name] = torch.from_numpy(value)
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def forget_optimizer(memory: dict[str, np.ndarray]) -> None:
    for key in [k for k in memory if k.startswith(OPTIMIZER_PREFIX)]:
        del memory[key]


def record_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serialises it (protobuf)."""
    from flwr.common.serde import recorddict_to_proto
    return recorddict_to_proto(content).ByteSize()


class Method(ABC):
    """A communication method: see the module docstring for the round protocol."""

    name: str = ""
    lr_key = "train.lr"  # the config key of the learning rate this method trains with
    plain_update = False  # its reply is the client's change of the state (load_down's start), averaged as is: it can be masked (secagg.py)

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    @abstractmethod
    def build_model(self, bundle: DatasetBundle, device: torch.device) -> nn.Module:
        """The model a client trains (identical on every party for the same config)."""

    @abstractmethod
    def state_of(self, model: nn.Module) -> State:
        """The state the model holds now: the server's start, a client's after local training."""

    @abstractmethod
    def encode_down(self, state: State, memory: dict[str, np.ndarray] | None = None) -> ArrayRecord:
        """What the server broadcasts; memory persists on the server between broadcasts (None: a
        one-off encoding that reads and changes no memory)."""

    @abstractmethod
    def load_state(self, model: nn.Module, state: State) -> None:
        """Write a global state into a model (clients, and the server's central evaluation)."""

    @abstractmethod
    def load_down(self, model: nn.Module, record: ArrayRecord, memory: dict[str, np.ndarray]) -> State:
        """Decode and validate a broadcast, load it into the client's model; return the start state."""

    @abstractmethod
    def encode_up(self, model: nn.Module, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        """The client's reply after local training; memory persists on the client between rounds."""

    @abstractmethod
    def decode_up(self, record: ArrayRecord, state: State) -> State:
        """The delta a reply proposes for the global state; raises InvalidReply on anything malformed."""

    def decode_down(self, record: ArrayRecord, like: State) -> State:
        """A broadcast (encode_down's record) decoded into the state it stands for, validated (raises
        InvalidReply), touching no model: how a gossiping agent reads a neighbour's message and the relay
        evaluates it. A method that does not override it cannot gossip (methods.gossip_methods)."""
        raise NotImplementedError(f"{self.name} cannot decode a state without a model")

    def network(self, model: nn.Module) -> nn.Module:
        """The plain network the model stands for: its weights are what bits per weight count."""
        return model

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The client's local optimiser."""
        from ..training import make_optimizer
        return make_optimizer(model, self.cfg)

    @cached_property
    def privacy(self) -> privacy.Privacy:
        """The config's differential privacy (privacy.py); calibrated once, when first needed."""
        return privacy.Privacy(self.cfg)

    def aggregate(self, state: State, replies: list[State], weights: np.ndarray, optimizer, memory: dict) -> State:
        """The next global state from the valid replies' deltas: combined by federation.aggregation
        (aggregation.py; mean: weighted by `weights`), or under central privacy clipped, summed with equal
        weights and noised (privacy.py); applied by the server optimiser. memory persists on the server
        between rounds."""
        fed = self.cfg.federation
        if self.privacy.central:
            combined = self.privacy.private_mean(replies, self.noise_rng)
        else:
            combined = aggregation.combine(replies, weights, fed.aggregation, fed.trim_fraction, fed.krum_byzantine,
                                           fed.krum_select)
        return optimizer.step(state, combined)

    @cached_property
    def noise_rng(self) -> np.random.Generator:
        return privacy.fresh_rng()

    def update(self, model: nn.Module, start: State) -> State:
        """A client's update: its state minus the start, over the keys that travel (start's)."""
        now = self.state_of(model)
        return {k: now[k] - start[k] for k in start}

    def privatize_update(self, model: nn.Module, start: State) -> None:
        """Local privacy, on a client after training: replace the model's update by the clipped, noised
        one, which encode_up then sends."""
        noisy = self.privacy.privatize_client(self.update(model, start), self.noise_rng)
        self.load_state(model, {k: start[k] + noisy[k] for k in start})

    def begin_round(self, state: State, server_round: int, memory: dict) -> State:
        """The server's state as a training round starts (re-seeded PRANC folds a finished period here)."""
        return state

    def period(self, state: State) -> int:
        """How many periods of catch-up data (catch_up) a client needs to hold this state."""
        return 0

    def catch_up(self, state: State, memory: dict, known: int) -> dict[str, Array]:
        """Arrays a client that holds `known` periods needs besides the broadcast; sent to it alone."""
        return {}

    def checkpoint(self) -> dict:
        """The server-side method's own counters (JSON), for a resumed run."""
        return {}

    def restore(self, saved: dict) -> None:
        """Take back what checkpoint() returned."""

    def setting(self) -> str:
        """Short label of the settings that change what travels (e.g. K5000, fp16, d0.01-ef): names
        a run in `pranc-fed compare`."""
        return "default"

    def fingerprint(self, model: nn.Module) -> str:
        """Identity of what the model's arrays mean; a mismatch drops the reply."""
        return f"{self.name}:{self.cfg.model.arch}:{sum(p.numel() for p in model.parameters())}"
