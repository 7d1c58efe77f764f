"""Communication methods compared on one harness; see base.py for the round protocol."""

from ..config import ExperimentConfig
from .base import InvalidReply, Method, State
from .fedavg import FedAvg, FedAvgFp16
from .fedpm import FedPM
from .pranc import Pranc
from .qsgd import Qsgd
from .signsgd import SignSgd
from .topk import TopK

METHODS: dict[str, type[Method]] = {m.name: m for m in (Pranc, FedAvg, FedAvgFp16, TopK, Qsgd, SignSgd, FedPM)}


def get_method(cfg: ExperimentConfig) -> Method:
    name = cfg.federation.method
    if name not in METHODS:
        raise ValueError(f"federation.method {name!r} is not implemented; available: {', '.join(METHODS)}")
    return METHODS[name](cfg)


def gossip_methods() -> tuple[str, ...]:
    """The methods that can run decentralised (federation.topology != star): those that decode a
    broadcast into a state without a model (Method.decode_down)."""
    return tuple(name for name, m in METHODS.items() if m.decode_down is not Method.decode_down)


def secure_methods() -> tuple[str, ...]:
    """The methods a server can aggregate from the sum of the updates alone (secagg.enabled): those whose
    reply is a plain update of the state, averaged by Method.aggregate (not topk/qsgd/signsgd, whose
    compression would be lost under 32-bit masks, nor fedpm, which counts masks)."""
    return tuple(name for name, m in METHODS.items() if m.plain_update)


__all__ = ["METHODS", "InvalidReply", "Method", "State", "get_method", "gossip_methods", "secure_methods"]
