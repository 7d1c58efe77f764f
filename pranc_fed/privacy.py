"""Client-level differential privacy on what a method sends (DP-FedAvg, McMahan et al. 2018; the
mechanism of Flower's DifferentialPrivacy{Server,Client}SideFixedClipping wrappers).

A client's update u_i is its reply's delta over every key it sends (PRANC: the change of alpha plus
the shared local params when pranc.share_local_params; dense methods: the change of every float
tensor of the state_dict). With C = privacy.clipping_norm and sigma the noise multiplier:

    clip      u_i <- u_i * min(1, C / |u_i|)                  (|.|: L2 norm over all keys together)
    central   server: mean = (sum_i clip(u_i) + N(0, sigma^2 C^2 I)) / n,   n = valid replies, equal weights
    local     client: sends clip(u_i) + N(0, sigma^2 C^2 I), then encodes it (the codec is post-processing)

One client is the privacy unit (add/remove one client's whole data). Central mode protects against
whoever sees the model after each round, trusting the server; local mode protects a client against
the server too, at the cost of sqrt(n) x more noise on the mean. Noise lives in the dimension of
what travels: K values for PRANC, d for dense FedAvg.

Accounting (Opacus's RDP accountant, `opacus.accountants.RDPAccountant`, the subsampled Gaussian
mechanism): central mode counts one step per round with sample rate q = sampled clients /
num_clients (Flower samples a fixed number without replacement; the analysis assumes Poisson
sampling, as Opacus and TensorFlow Privacy do for batches); local mode has q = 1, since the server
sees who takes part, and counts every round (a client sampled in all of them). privacy.epsilon sets
the target after federation.rounds; the noise multiplier is calibrated for it. Not covered: the
metrics a reply carries (num-examples, train-loss) and client evaluation; the noise comes from
numpy's PCG64 seeded from the OS, not a cryptographically secure generator (as Opacus without
secure_mode), and floating-point attacks on the Gaussian sampler are not addressed.
"""

from __future__ import annotations

import functools

import numpy as np

from .aggregation import update_norm

State = dict[str, np.ndarray]

MODES = ("central", "local")
# RDP orders: Opacus's defaults plus larger ones, which the small-epsilon, unsubsampled settings need
# (without them the bound is looser and Opacus warns that the largest order was optimal).
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]


def clip(update: State, bound: float) -> State:
    """update scaled to L2 norm at most bound (all keys together)."""
    norm = update_norm(update)
    if norm <= bound:
        return update
    return {k: (v * (bound / norm)).astype(np.float32) for k, v in update.items()}


def add_noise(update: State, std: float, rng: np.random.Generator) -> State:
    """update + N(0, std^2) in every coordinate."""
    return {k: (v + rng.normal(0.0, std, size=v.shape)).astype(np.float32) for k, v in update.items()}


def fresh_rng() -> np.random.Generator:
    """A generator seeded from the OS: DP noise nobody can regenerate from the config's seed."""
    return np.random.default_rng(np.random.SeedSequence())


def _accountant_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta, alphas=ORDERS))


@functools.lru_cache(maxsize=64)
def calibrate(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (within Opacus's 0.01 epsilon tolerance) whose epsilon after
    `steps` rounds is at most `epsilon`; ValueError if none up to 1e6 reaches it."""
    from opacus.accountants.utils import get_noise_multiplier
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp", alphas=ORDERS))


def sampled_clients(num_clients: int, fraction: float, minimum: int) -> int:
    """How many clients a round samples (strategy.MethodStrategy._sample's rule)."""
    return min(num_clients, max(int(num_clients * fraction), minimum))


class Privacy:
    """The config's DP mechanism: its noise multiplier, where the noise goes and the epsilon spent."""

    def __init__(self, cfg):
        p, fed = cfg.privacy, cfg.federation
        self.enabled = p.epsilon is not None or p.noise_multiplier is not None
        self.mode, self.clipping_norm, self.delta = p.mode, p.clipping_norm, p.delta
        self.sample_rate = 1.0 if p.mode == "local" else \
            sampled_clients(fed.num_clients, fed.fraction_train, fed.min_train_clients) / fed.num_clients
        self.noise_multiplier = 0.0
        if p.noise_multiplier is not None:
            self.noise_multiplier = p.noise_multiplier
        elif p.epsilon is not None:
            self.noise_multiplier = calibrate(p.epsilon, p.delta, self.sample_rate, fed.rounds)

    @property
    def central(self) -> bool:
        return self.enabled and self.mode == "central"

    @property
    def local(self) -> bool:
        return self.enabled and self.mode == "local"

    def epsilon(self, rounds: int) -> float | None:
        """epsilon spent after `rounds` rounds at delta (None without DP; 0 before any round)."""
        if not self.enabled:
            return None
        return 0.0 if rounds <= 0 else _accountant_epsilon(self.noise_multiplier, self.sample_rate, rounds, self.delta)

    def privatize_client(self, update: State, rng: np.random.Generator) -> State:
        """Local mode, on the client: clip, then add this client's own noise."""
        return add_noise(clip(update, self.clipping_norm), self.noise_multiplier * self.clipping_norm, rng)

    def private_mean(self, updates: list[State], rng: np.random.Generator) -> State:
        """Central mode, on the server: the clipped updates' sum plus noise, over the number of updates."""
        clipped = [clip(u, self.clipping_norm) for u in updates]
        total = {k: np.sum([c[k] for c in clipped], axis=0, dtype=np.float64) for k in updates[0]}
        return self.noised_mean(total, len(updates), rng)

    def noised_mean(self, total: State, count: int, rng: np.random.Generator) -> State:
        """Central mode: a sum of `count` clipped updates plus noise, over `count` (secure aggregation's
        clients clip before masking, so its server has only this sum)."""
        noisy = add_noise(total, self.noise_multiplier * self.clipping_norm, rng)
        return {k: (v / count).astype(np.float32) for k, v in noisy.items()}

    def describe(self, rounds: int) -> str:
        """One line for the run's log."""
        if not self.enabled:
            return "no differential privacy"
        return (f"{self.mode} DP: clipping norm {self.clipping_norm:g}, noise multiplier {self.noise_multiplier:.4g}, "
                f"sample rate {self.sample_rate:g}; epsilon {self.epsilon(rounds):.3g} at delta {self.delta:g} "
                f"after {rounds} rounds")
