"""How the server turns the valid replies of a round into the next global state: client weights,
a norm bound and a combining rule (robust aggregation: what one client, or a minority, can do to
the global model), then the server optimiser.

Every rule acts on the deltas that Method.decode_up returns (PRANC: the change of alpha and of the
shared local params; dense methods: the change of the weights), per round, in three steps:

    1. weights   examples: w_i = n_i (claimed num-examples, FedAvg)
                 capped:   w_i = min(n_i, cap * median_j n_j)       a claim cannot buy more than cap x
                 equal:    w_i = 1
    2. norm      none;  clip: d_i <- d_i * min(1, c / |d_i|);  drop: refuse d_i if |d_i| > c,
                 with c = factor * median_j |d_j| (|.| the L2 norm over every key of the delta)
    3. combine   mean:          sum_i w_i d_i / sum_i w_i
                 trimmed_mean:  per coordinate, drop the floor(trim * n) smallest and largest values,
                                average the rest (unweighted, as Flower's FedTrimmedAvg)
                 median:        per coordinate median (unweighted, as Flower's FedMedian)
                 krum:          score_i = sum of the squared distances from d_i to its n - f - 2
                                nearest d_j; the `select` lowest scores are averaged with their
                                weights (as Flower's Krum and MultiKrum; f = `byzantine`)

The bound scales with the round's median norm, so it needs no tuning per model or learning rate and
holds while honest clients are the majority. The median and the trimmed mean ignore the weights:
a claimed size is what an attacker controls most cheaply.
"""

from __future__ import annotations

import numpy as np

State = dict[str, np.ndarray]

WEIGHTINGS = ("examples", "capped", "equal")
NORM_BOUNDS = ("none", "clip", "drop")
AGGREGATIONS = ("mean", "trimmed_mean", "median", "krum")
SERVER_OPTIMIZERS = ("avg", "avgm", "adam")


def client_weights(claimed: list[int], rule: str, cap: float) -> np.ndarray:
    """Step 1: each reply's weight (float64, not normalised)."""
    n = np.asarray(claimed, dtype=np.float64)
    if rule == "examples":
        return n
    if rule == "capped":
        return np.minimum(n, cap * np.median(n))
    if rule == "equal":
        return np.ones_like(n)
    raise ValueError(f"unknown client weighting {rule!r}; choose one of {', '.join(WEIGHTINGS)}")


def flatten(state: State, keys: list[str] | None = None) -> np.ndarray:
    """The tensors of `keys` (default: all, sorted) as one float32 vector."""
    return np.concatenate([state[k].astype(np.float32).ravel() for k in (sorted(state) if keys is None else keys)])


def unflatten(vector: np.ndarray, like: State, keys: list[str] | None = None) -> State:
    """flatten's inverse: the tensors of `keys` (default: all of like's, sorted) in like's shapes."""
    out, offset = {}, 0
    for k in sorted(like) if keys is None else keys:
        out[k] = vector[offset:offset + like[k].size].reshape(like[k].shape).astype(np.float32)
        offset += like[k].size
    return out


def update_norm(delta: State) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in delta.values())))


def bound_norms(deltas: list[State], rule: str, factor: float) -> tuple[list[State], dict[int, str]]:
    """Step 2: (the deltas, clipped where needed; {index: reason} of those refused by `drop`)."""
    if rule == "none" or not deltas:
        return deltas, {}
    norms = [update_norm(d) for d in deltas]
    bound = factor * float(np.median(norms))
    if rule == "drop":
        refused = {i: f"update norm {norm:.4g} exceeds {factor:g} x the round's median norm ({bound:.4g})"
                   for i, norm in enumerate(norms) if norm > bound}
        return deltas, refused
    if rule == "clip":
        return [d if norm <= bound else {k: (v * (bound / norm)).astype(np.float32) for k, v in d.items()}
                for d, norm in zip(deltas, norms)], {}
    raise ValueError(f"unknown norm bound {rule!r}; choose one of {', '.join(NORM_BOUNDS)}")


def combine(deltas: list[State], weights: np.ndarray, rule: str, trim: float = 0.0, byzantine: int = 0,
            select: int = 1) -> State:
    """Step 3: one delta from several, per key."""
    if rule == "mean":
        w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        return {k: sum(wi * d[k] for wi, d in zip(w, deltas)).astype(np.float32) for k in deltas[0]}
    if rule == "krum":
        chosen = krum_select(deltas, byzantine, select)
        return combine([deltas[i] for i in chosen], np.asarray(weights)[chosen], "mean")
    stacked = {k: np.stack([d[k] for d in deltas]) for k in deltas[0]}
    if rule == "median":
        return {k: np.median(v, axis=0).astype(np.float32) for k, v in stacked.items()}
    if rule == "trimmed_mean":
        cut = int(trim * len(deltas))
        return {k: np.sort(v, axis=0)[cut:len(deltas) - cut].mean(axis=0).astype(np.float32) for k, v in stacked.items()}
    raise ValueError(f"unknown aggregation {rule!r}; choose one of {', '.join(AGGREGATIONS)}")


def krum_select(deltas: list[State], byzantine: int, select: int) -> np.ndarray:
    """Indices of the `select` deltas with the lowest Krum scores (Blanchard et al. 2017), in score order."""
    flat = np.stack([flatten(d).astype(np.float64) for d in deltas])
    squared = np.square(flat).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * flat @ flat.T, 0)
    closest = max(1, len(deltas) - byzantine - 2)
    scores = [np.sort(np.delete(row, i))[:closest].sum() for i, row in enumerate(distances)]
    return np.argsort(scores, kind="stable")[:select]


class ServerOptimizer:
    """Applies the weighted-mean client delta d to the global state.

    avg:  s += lr * d
    avgm: m = momentum * m + d;  s += lr * m                       (FedAvgM, Hsu et al. 2019)
    adam: m = b1 m + (1 - b1) d;  v = b2 v + (1 - b2) d^2;
          s += lr * m / (sqrt(v) + tau),  b1 = momentum, b2 = 0.99, tau = 1e-3  (FedAdam, Reddi et al. 2021)

    adam follows Algorithm 2 of Reddi et al. (no bias correction; tau bounds the first steps), not
    Flower's FedAdam, which adds bias correction; it is written here because it acts on a Method's
    state (alpha for PRANC), which Flower's strategies do not see.
    """

    def __init__(self, kind: str, lr: float, momentum: float, beta2: float = 0.99, tau: float = 1e-3):
        self.kind, self.lr, self.momentum, self.beta2, self.tau = kind, lr, momentum, beta2, tau
        self.m: State = {}
        self.v: State = {}

    def step(self, state: State, delta: State) -> State:
        if self.kind == "avg":
            return {k: state[k] + self.lr * delta[k] for k in state}
        if self.kind == "avgm":
            self.m = {k: self.momentum * self.m.get(k, 0) + delta[k] for k in state}
            return {k: state[k] + self.lr * self.m[k] for k in state}
        if self.kind == "adam":
            b1, b2 = self.momentum, self.beta2
            self.m = {k: b1 * self.m.get(k, 0) + (1 - b1) * delta[k] for k in state}
            self.v = {k: b2 * self.v.get(k, 0) + (1 - b2) * delta[k] ** 2 for k in state}
            return {k: state[k] + self.lr * self.m[k] / (np.sqrt(self.v[k]) + self.tau) for k in state}
        raise ValueError(f"unknown server optimizer {self.kind!r}; choose one of {', '.join(SERVER_OPTIMIZERS)}")
