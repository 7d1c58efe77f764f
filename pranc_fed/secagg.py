"""Pairwise additive masking of a fixed-point-coded update: the core of secure aggregation (Bonawitz
et al. 2017; Flower's SecAgg+ is its sparse-graph variant), used to measure what it costs pranc-fed
(`simulations/secagg_cost.py`). It is not wired into a run: no run of pranc-fed is securely aggregated.

Why not Flower's SecAgg+: flwr 1.42's `SecAggPlusWorkflow` runs only inside the legacy
`DefaultWorkflow` with a `LegacyContext`, calling a legacy `flwr.server.strategy.Strategy`'s
`configure_fit`/`aggregate_fit` on `Parameters` through a `ClientManager`; its client half,
`secaggplus_mod`, reads the reply as a legacy `FitRes` (`recorddict_to_fitres`) and re-quantises its
float arrays with its own clipping range. pranc-fed's strategy is a Message-API strategy
(`flwr.serverapp`, strategy.py) whose replies carry codec-specific arrays (int4/int2 alpha with
scales), a fingerprint and metrics that it checks per reply before anything is averaged; under
SecAgg+ the server sees only the sum, so those checks cannot run, and the codec's integers would be
decoded to floats and re-quantised before masking.

The masking here, per round, for n clients with ids 0..n-1:

    keys      each client draws an X25519 key pair and sends its 32-byte public key; the server
              relays every key to every client (one extra message pair per round)
    seeds     s_ij = HKDF-SHA256(X25519(sk_i, pk_j)), the same for i and j
    input     q_i = fixed-point code of the clipped update, in Z_2^32 (quantize)
    masked    y_i = q_i + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)   (mod 2^32; PRG: AES-256-CTR)
    server    sum_i y_i = sum_i q_i (mod 2^32): the masks cancel; dequantize_sum decodes the mean

Limits, stated plainly: no secret sharing of the keys, so one client that drops after sending its
keys makes the round's sum unrecoverable (SecAgg's second round trip exists for that); no
authentication of the relayed keys (a malicious server could substitute them); every pair is
masked (SecAgg+ masks only O(log n) neighbours).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

BITS = 32
MODULUS = 1 << BITS
PUBLIC_KEY_BYTES = 32


def quantize(values: np.ndarray, clip_range: float, clients: int) -> np.ndarray:
    """values clipped to [-clip_range, clip_range], as uint32 codes small enough that `clients` of
    them sum without wrapping: [0, floor((2^32 - 1) / clients)]."""
    levels = (MODULUS - 1) // clients
    # float64: in float32 the top code could round past levels, and n of them would wrap
    scaled = (np.clip(values.astype(np.float64), -clip_range, clip_range) + clip_range) / (2 * clip_range) * levels
    return np.rint(scaled).astype(np.uint32)


def dequantize_sum(total: np.ndarray, clip_range: float, clients: int) -> np.ndarray:
    """The float sum of the clients' values from the sum of their codes."""
    levels = (MODULUS - 1) // clients
    return (total.astype(np.float64) / levels * (2 * clip_range) - clients * clip_range).astype(np.float32)


def key_pair() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def shared_seed(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pranc-fed pairwise mask").derive(secret)


def mask(seed: bytes, size: int) -> np.ndarray:
    """size uint32 values of AES-256-CTR keystream under seed."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * size)) + encryptor.finalize(), dtype="<u4")


def masked_input(codes: np.ndarray, me: int, private: X25519PrivateKey, publics: dict[int, bytes]) -> np.ndarray:
    """codes plus the pairwise masks shared with every other client (publics: id -> public key)."""
    out = codes.astype(np.uint32).copy()
    for peer, public in publics.items():
        if peer == me:
            continue
        m = mask(shared_seed(private, public), codes.size)
        out = out + m if peer > me else out - m  # uint32 arithmetic wraps mod 2^32
    return out


def unmask_sum(masked: list[np.ndarray]) -> np.ndarray:
    """The sum of the clients' codes (mod 2^32): every pairwise mask cancels."""
    total = np.zeros_like(masked[0], dtype=np.uint32)
    for y in masked:
        total += y
    return total
