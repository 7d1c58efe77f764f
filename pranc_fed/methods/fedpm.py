"""fedpm: Federated Probabilistic Mask training (Isik et al., ICLR 2023; code: BerivanIsik/sparse-random-networks).

The network's weights w are frozen "signed Kaiming constants" (the paper's choice): w = sign(w0) *
sqrt(2 / fan_in) with w0 the seeded default initialisation, so every party builds the same; biases
are frozen at 0.
What is learnt is a keep-probability theta_i per weight, through scores s_i = logit(theta_i):

    forward (training)   w_i * m_i,  m_i ~ Bernoulli(sigmoid(s_i)), straight-through: dm/ds = sigmoid'(s)
    forward (evaluation) w_i * [theta_i > 0.5]
    client               s = logit(theta_global), local epochs of Adam on s (methods.fedpm_lr), then
                         sends one sampled mask m ~ Bernoulli(sigmoid(s)): 1 bit per weight
    server               Beta posterior per weight: a += sum_k m_k, b += n - sum_k m_k,
                         theta = (a - 1) / (a + b - 2), clipped to [0.01, 0.99];
                         a = b = 1 again every methods.fedpm_reset_period rounds

Wire: up `mask` uint8 (ceil(d / 8),), bit i = m_i, LSB first, padding bits 0; down `theta` float32
(d,), or float16 with methods.downlink_dtype, as the dense methods broadcast.

Where this differs from the paper and its code, and why:
- the masked network keeps its biases (frozen at 0, so their masks do nothing) rather than being
  rebuilt without them: one architecture registry for every method; models with running
  statistics (BatchNorm) are refused rather than half-supported;
- the global theta starts at 0.5 everywhere (a flat Beta prior), and evaluation keeps the weights
  with theta > 0.5 rather than sampling a mask, so that the reported accuracy is deterministic;
- the mask is sent at a flat 1 bit per weight; the paper's optional arithmetic coding below 1 bit
  is not implemented;
- the Beta posterior counts each client's mask once (the paper's rule), not by num-examples.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from ..codecs import InvalidReply, pack_bits, packed_size, unpack_bits
from ..data import DatasetBundle
from ..models import build_dense
from .base import Method, State, check_keys, decode_state, from_array, to_array

CLIP = 0.01  # theta stays in [CLIP, 1 - CLIP], so that every score is finite


class MaskedNetwork(nn.Module):
    """A frozen network whose weights are multiplied by a (sampled) binary mask; trains only `scores`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        if any(b.is_floating_point() for b in module.buffers()):
            raise ValueError("fedpm supports models without running statistics (BatchNorm); choose lenet")
        self.module = module.requires_grad_(False)
        self.shapes = {name: p.shape for name, p in module.named_parameters()}
        self.weights = torch.cat([p.detach().ravel() for p in module.parameters()])
        self.scores = nn.Parameter(torch.zeros_like(self.weights))

    def mask(self) -> torch.Tensor:
        theta = torch.sigmoid(self.scores)
        if self.training:
            return torch.bernoulli(theta.detach()) + theta - theta.detach()  # straight-through estimator
        return (self.scores > 0).to(theta.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, params, offset = self.weights * self.mask(), {}, 0
        for name, shape in self.shapes.items():
            n = shape.numel()
            params[name] = flat[offset:offset + n].view(shape)
            offset += n
        return torch.func.functional_call(self.module, params, (x,))


class FedPM(Method):
    name = "fedpm"
    lr_key = "methods.fedpm_lr"

    @property
    def wire_dtype(self) -> str:
        return self.cfg.methods.downlink_dtype

    def setting(self) -> str:
        return "1bit" + ("-down16" if self.wire_dtype == "float16" else "")

    def build_model(self, bundle: DatasetBundle, device: torch.device) -> MaskedNetwork:
        dense = build_dense(self.cfg, bundle, device)
        with torch.no_grad():
            for p in dense.parameters():
                p.copy_(torch.sign(p) * math.sqrt(2.0 / p[0].numel()) if p.dim() > 1 else torch.zeros_like(p))
        net = MaskedNetwork(dense)
        self.load_state(net, {"theta": np.full(net.weights.numel(), 0.5, np.float32)})
        return net

    def network(self, model: MaskedNetwork) -> nn.Module:
        return model.module

    def make_optimizer(self, model: MaskedNetwork) -> torch.optim.Optimizer:
        return torch.optim.Adam([model.scores], lr=self.cfg.methods.fedpm_lr)

    def state_of(self, model: MaskedNetwork) -> State:
        return {"theta": torch.sigmoid(model.scores).detach().cpu().numpy().astype(np.float32)}

    def encode_down(self, state: State, memory: dict[str, np.ndarray] | None = None) -> ArrayRecord:
        return ArrayRecord({"theta": to_array(state["theta"].astype(self.wire_dtype))})

    def load_state(self, model: MaskedNetwork, state: State) -> None:
        theta = torch.from_numpy(np.clip(state["theta"], CLIP, 1 - CLIP)).to(model.scores.device)
        with torch.no_grad():
            model.scores.copy_(torch.logit(theta))

    def load_down(self, model: MaskedNetwork, record: ArrayRecord, memory: dict[str, np.ndarray]) -> State:
        state = decode_state(record, self.state_of(model), lambda key: self.wire_dtype)
        if ((state["theta"] < 0) | (state["theta"] > 1)).any():
            raise InvalidReply("theta: a probability outside [0, 1]")
        self.load_state(model, state)
        return state

    def encode_up(self, model: MaskedNetwork, start: State, memory: dict[str, np.ndarray]) -> ArrayRecord:
        with torch.no_grad():
            mask = torch.bernoulli(torch.sigmoid(model.scores)).cpu().numpy().astype(np.uint32)
        return ArrayRecord({"mask": to_array(pack_bits(mask, 1))})

    def decode_up(self, record: ArrayRecord, state: State) -> State:
        """The client's sampled mask as {"theta": 0/1 values}: aggregate() counts masks, it averages no deltas."""
        n = state["theta"].size
        check_keys(record, {"mask"})
        packed = from_array(record["mask"], "mask", "uint8", (packed_size(n, 1),))
        return {"theta": unpack_bits(packed, n, 1, "mask").astype(np.float32)}

    def aggregate(self, state: State, replies: list[State], weights: np.ndarray, optimizer, memory: dict) -> State:
        """The Beta posterior of the module docstring (num-examples and the server optimiser do not apply)."""
        rounds = int(memory.get("fedpm-rounds", np.zeros(1))[0])
        if rounds % self.cfg.methods.fedpm_reset_period == 0:
            memory["fedpm-a"] = np.ones_like(state["theta"], dtype=np.float64)
            memory["fedpm-b"] = np.ones_like(state["theta"], dtype=np.float64)
        ones = sum(r["theta"].astype(np.float64) for r in replies)
        memory["fedpm-a"] = memory["fedpm-a"] + ones
        memory["fedpm-b"] = memory["fedpm-b"] + len(replies) - ones
        memory["fedpm-rounds"] = np.array([rounds + 1])
        theta = (memory["fedpm-a"] - 1) / (memory["fedpm-a"] + memory["fedpm-b"] - 2)
        return {"theta": np.clip(theta, CLIP, 1 - CLIP).astype(np.float32)}
