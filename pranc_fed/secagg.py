"""Secure aggregation (secagg.enabled): pairwise additive masks on a fixed-point code of each client's
update (Bonawitz et al. 2017; Flower's SecAgg+ is its sparse-graph variant), so that the server learns
only the round's sum. A training round becomes two exchanges of Flower messages:

    keys      server -> each sampled client: query.secagg_keys; the client draws an X25519 key pair,
              keeps the private key in its Flower state and replies its 32-byte public key
    train     server -> every client that replied: the broadcast as usual plus the list of all their
              public keys (config secagg-keys); the client trains, takes its update u_i (state - start,
              clipped to L2 norm privacy.clipping_norm under central DP) and replies only
                  q_i = fixed-point code of clip(u_i, +-secagg.clip_range), in Z_2^32 (quantize)
                  y_i = q_i + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)   (mod 2^32)
              with s_ij = HKDF-SHA256(X25519(sk_i, pk_j)) (the same for i and j), PRG = AES-256-CTR
    server    sum_i y_i = sum_i q_i (mod 2^32): the masks cancel; dequantize_sum gives sum_i u_i; under
              central DP it adds N(0, sigma^2 C^2) to that sum; the mean (equal weights) is applied by the
              server optimiser

Why not Flower's SecAgg+: flwr 1.42's `SecAggPlusWorkflow` runs only inside the legacy
`DefaultWorkflow` with a `LegacyContext`, calling a legacy `flwr.server.strategy.Strategy`'s
`configure_fit`/`aggregate_fit` on `Parameters` through a `ClientManager`; its client half,
`secaggplus_mod`, reads the reply as a legacy `FitRes` (`recorddict_to_fitres`) and re-quantises its
float arrays with its own clipping range. pranc-fed's strategy is a Message-API strategy (strategy.py).

What the server can still check per reply: the fingerprint, the metrics, the masked array's dtype,
shape and size. What it cannot: anything about one update's values (norm bounds, robust rules, the
codecs' checks); config.py refuses those settings with secagg. A client can still push the mean by at
most 2 x clip_range per value over the number of clients (its code is confined to [0, 2^32)).

Limits, stated plainly: no secret sharing of the keys, so one client that drops after sending its key
makes the round's sum unrecoverable: the round is not aggregated and the global model is kept (SecAgg's
extra round trips exist for that); no authentication of the relayed keys (a malicious server could
substitute them; a client only refuses a round of fewer than federation.min_train_clients keys); every
pair is masked (SecAgg+ masks only O(log n) neighbours); 32 bits per value up, whatever
pranc.uplink_codec says, since the masked code must hold the sum of all clients' codes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from .aggregation import flatten, unflatten
from .methods import InvalidReply, Method, State
from .methods.base import check_keys, from_array, record_bytes, to_array
from .privacy import clip
from .strategy import MethodStrategy

log = logging.getLogger("pranc_fed.secagg")

BITS = 32
MODULUS = 1 << BITS
PUBLIC_KEY_BYTES = 32
KEYS_ACTION = "secagg_keys"  # the ClientApp's handler of the key exchange (client_app.secagg_keys)
KEYS_CONFIG = "secagg-keys"  # the train instruction's list of every participant's public key
PRIVATE_KEY_STATE = "secagg-private-key"  # where a client keeps its round's private key (its Flower state)
PUBLIC_KEY_ARRAY = "public-key"
MASKED_ARRAY = "masked"


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


# ---------------------------------------------------------------- the client's side

def public_key_reply(context: Context) -> ArrayRecord:
    """A fresh key pair for this round: the private key stays in the client's Flower state."""
    private, public = key_pair()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    context.state[PRIVATE_KEY_STATE] = ConfigRecord({"private": raw, "public": public})
    return ArrayRecord({PUBLIC_KEY_ARRAY: to_array(np.frombuffer(public, dtype=np.uint8))})


def masked_reply(method: Method, update: State, context: Context, keys, clip_range: float) -> tuple[ArrayRecord, int]:
    """The masked code of `update` for the participants whose public keys are `keys` (this client's among
    them), and how many of its values were clipped to the range. The private key is used once. Fewer
    than federation.min_train_clients keys (and never one) is refused: alone, a client's mask is zero."""
    if PRIVATE_KEY_STATE not in context.state:
        raise ValueError("a masked reply was asked for without a key exchange first (no private key in this "
                         "client's state)")
    saved = context.state[PRIVATE_KEY_STATE]
    del context.state[PRIVATE_KEY_STATE]
    if not isinstance(keys, list) or any(not isinstance(k, bytes) or len(k) != PUBLIC_KEY_BYTES for k in keys) \
            or len(set(keys)) != len(keys):
        raise ValueError(f"{KEYS_CONFIG} must list distinct {PUBLIC_KEY_BYTES}-byte public keys")
    if saved["public"] not in keys:
        raise ValueError(f"this client's public key is not among the round's {len(keys)} keys")
    if len(keys) < max(2, method.cfg.federation.min_train_clients):
        raise ValueError(f"{len(keys)} participant(s) in a masked round, fewer than federation.min_train_clients "
                         f"({method.cfg.federation.min_train_clients}, at least 2): the sum would reveal the update")
    if method.privacy.central:  # the server cannot clip a masked update: the client does
        update = clip(update, method.privacy.clipping_norm)
    values = flatten(update)
    codes = quantize(values, clip_range, len(keys))
    me = keys.index(saved["public"])
    private = X25519PrivateKey.from_private_bytes(saved["private"])
    masked = masked_input(codes, me, private, dict(enumerate(keys)))
    return ArrayRecord({MASKED_ARRAY: to_array(masked)}), int(np.count_nonzero(np.abs(values) > clip_range))


# ---------------------------------------------------------------- the server's side

class SecureAggregation(MethodStrategy):
    """The star's strategy when secagg.enabled: a key exchange, then masked replies whose sum only is read."""

    def __init__(self, cfg, method: Method, state: State, fingerprint: str):
        super().__init__(cfg, method, state, fingerprint)
        self.clipped_values = 0  # values clipped to secagg.clip_range, over every reply so far
        self.rounds_lost = 0  # rounds whose sum could not be recovered (a participant dropped)

    def train_round(self, grid: Grid, server_round: int, timeout: float) -> None:
        self.state = self.method.begin_round(self.state, server_round, self.server_memory)
        nodes = self._sample(grid, self.fraction_train)
        keys = self._exchange_keys(grid, server_round, nodes, timeout)
        stats = self.round_stats(server_round)
        if len(keys) < self.min_train_nodes:
            stats.sampled = len(nodes)
            self._lose(server_round, f"{len(keys)} public keys, fewer than federation.min_train_clients="
                                     f"{self.min_train_nodes}")
            return
        participants = sorted(keys)
        messages = self._broadcast(server_round, grid, 1.0, "train", MessageType.TRAIN, nodes=participants,
                                   extra_config={KEYS_CONFIG: [keys[n] for n in participants]})
        stats.sampled = len(nodes)  # _broadcast counted the participants only
        self._aggregate_masked(server_round, grid.send_and_receive(messages, timeout=timeout), participants)

    def _exchange_keys(self, grid: Grid, server_round: int, nodes: list[int], timeout: float) -> dict[int, bytes]:
        """node -> its 32-byte public key, for the nodes that replied one (the round's stats count the bytes)."""
        config = ConfigRecord({"server-round": server_round, "fingerprint": self.fingerprint})
        self.sent = []
        for node in nodes:
            content = RecordDict({"config": config})
            size = record_bytes(content)
            self.round_stats(server_round).down_bytes += size
            self.ledger.append({"round": server_round, "node": node, "phase": "secagg-keys", "direction": "down",
                                "bytes": size})
            self.sent.append(Message(content=content, message_type=f"{MessageType.QUERY}.{KEYS_ACTION}",
                                     dst_node_id=node))
        keys = {}
        for node, _, _, arrays in self._receive(server_round, grid.send_and_receive(self.sent, timeout=timeout),
                                                "secagg-keys"):
            try:
                check_keys(arrays, {PUBLIC_KEY_ARRAY})
                key = from_array(arrays[PUBLIC_KEY_ARRAY], PUBLIC_KEY_ARRAY, "uint8", (PUBLIC_KEY_BYTES,)).tobytes()
                if key in keys.values():
                    raise InvalidReply("a public key another client of this round already sent")
                keys[node] = key
            except InvalidReply as e:
                self._drop(server_round, "secagg-keys", node, e)
        return keys

    def _aggregate_masked(self, server_round: int, replies: Iterable[Message], participants: list[int]) -> None:
        stats = self.round_stats(server_round)
        size = sum(v.size for v in self.state.values())
        masked, losses, clipped = {}, [], 0
        for node, _, metrics, arrays in self._receive(server_round, replies, "train"):
            try:
                check_keys(arrays, {MASKED_ARRAY})
                masked[node] = from_array(arrays[MASKED_ARRAY], MASKED_ARRAY, "uint32", (size,))
            except InvalidReply as e:
                self._drop(server_round, "train", node, e)
                continue
            losses.append(float(metrics.get("train-loss", float("nan"))))
            clipped += int(metrics.get("secagg-clipped", 0))
        self.clipped_values += clipped
        stats.received = len(masked)
        missing = [n for n in participants if n not in masked]
        if missing:
            self._lose(server_round, f"no valid masked reply from node(s) {', '.join(map(str, missing))}, so the "
                                     "masks do not cancel")
            return
        if clipped:
            log.warning("round %d: %d update values were clipped to secagg.clip_range=%g", server_round, clipped,
                        self.cfg.secagg.clip_range)
        total = dequantize_sum(unmask_sum(list(masked.values())), self.cfg.secagg.clip_range, len(participants))
        summed = unflatten(total, self.state)
        if self.method.privacy.central:  # the clients clipped; the server adds the noise to the sum
            mean = self.method.privacy.noised_mean(summed, len(participants), self.method.noise_rng)
        else:
            mean = {k: v / len(participants) for k, v in summed.items()}
        self.state = {k: v.astype(np.float32) for k, v in self.optimizer.step(self.state, mean).items()}
        for node in participants:
            self.node_periods[node] = self.method.period(self.state)
        stats.aggregated = True
        stats.train_loss = float(np.mean(losses))

    def _lose(self, server_round: int, reason: str) -> None:
        self.rounds_lost += 1
        log.warning("round %d: secure aggregation cannot recover the sum: %s; global model kept", server_round, reason)

    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays, meta = super().checkpoint()
        return arrays, meta | {"secagg": {"clipped_values": self.clipped_values, "rounds_lost": self.rounds_lost}}

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        super().restore(arrays, meta)
        self.clipped_values, self.rounds_lost = meta["secagg"]["clipped_values"], meta["secagg"]["rounds_lost"]

    def summary_extras(self) -> dict:
        return {"secure_aggregation": {"clip_range": self.cfg.secagg.clip_range, "clipped_values": self.clipped_values,
                                       "rounds_lost": self.rounds_lost}}
