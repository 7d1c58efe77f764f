"""Secure aggregation (secagg.py): the masks cancel in the sum, hide each input, and the fixed-point
code decodes the sum within its resolution; a masked round through the real ClientApp handlers gives
the plain mean; a missing or bad masked reply loses the round, never the model; refused settings."""

import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.supercore.task_identity import TaskIdentity

from pranc_fed import client_app
from pranc_fed.aggregation import update_norm
from pranc_fed.config import ConfigError, load_config
from pranc_fed.methods.base import to_array
from pranc_fed.secagg import (KEYS_ACTION, KEYS_CONFIG, MASKED_ARRAY, SecureAggregation, dequantize_sum, key_pair,
                              mask, masked_input, quantize, shared_seed, unmask_sum)
from pranc_fed.strategy import MethodStrategy

from .conftest import FLOAT32_ALPHA, in_process_federation


def test_masks_cancel_in_the_sum_and_hide_each_input():
    rng = np.random.default_rng(0)
    n, size = 5, 3000
    updates = [rng.uniform(-0.5, 0.5, size).astype(np.float32) for _ in range(n)]
    keys = [key_pair() for _ in range(n)]
    publics = {i: pk for i, (_, pk) in enumerate(keys)}
    codes = [quantize(u, 1.0, n) for u in updates]
    masked = [masked_input(c, i, keys[i][0], publics) for i, c in enumerate(codes)]
    total = dequantize_sum(unmask_sum(masked), 1.0, n)
    # fixed-point resolution 2 / levels per client, then float32 rounding of sums up to n
    np.testing.assert_allclose(total, np.sum(updates, axis=0), atol=n * 2.0 / ((2**32 - 1) // n) + n * 1.2e-7)
    for c, y in zip(codes, masked):
        assert np.mean(c == y) < 0.01  # every coordinate masked
        assert abs(y.astype(np.float64).mean() / 2**32 - 0.5) < 0.02  # uniform-looking, not the codes' range
    # Without one client's masked vector the rest do not decode to anything near the partial sum.
    partial = dequantize_sum(unmask_sum(masked[1:]), 1.0, n)
    assert np.mean(np.abs(partial - np.sum(updates[1:], axis=0))) > 0.1


def test_both_ends_of_a_pair_derive_the_same_mask_and_other_pairs_differ():
    (a, pa), (b, pb), (_, pc) = key_pair(), key_pair(), key_pair()
    assert shared_seed(a, pb) == shared_seed(b, pa) != shared_seed(a, pc)
    np.testing.assert_array_equal(mask(shared_seed(a, pb), 100), mask(shared_seed(b, pa), 100))


def test_codes_of_n_clients_never_wrap():
    n = 7
    top = quantize(np.full(10, 5.0, np.float32), 1.0, n)  # clipped to the range's top
    assert int(top[0]) * n < 2**32
    np.testing.assert_allclose(dequantize_sum(top * np.uint32(n), 1.0, n), n * 1.0, rtol=1e-6)


# ---------------------------------------------------------------- masked rounds through the real ClientApp

K = 64


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def _strategy(n: int, *overrides, secure: bool = True):
    settings = [f"federation.num_clients={n}", f"pranc.num_coeffs={K}", "data.train_subset=600",
                "train.batch_size=64", "federation.local_steps=2", "federation.client_weighting=equal",
                *FLOAT32_ALPHA, f"secagg.enabled={str(secure).lower()}", *overrides]
    return in_process_federation(SecureAggregation if secure else MethodStrategy, "configs/mnist_lenet.yaml",
                                 settings, n, {"train": client_app.train, f"query.{KEYS_ACTION}": client_app.secagg_keys})


@pytest.mark.parametrize("method", ["pranc", "fedavg"])
def test_the_masked_sum_gives_the_plain_equal_weight_mean_and_the_server_sees_no_update(method):
    secure, grid = _strategy(3, f"federation.method={method}")
    plain, plain_grid = _strategy(3, f"federation.method={method}", secure=False)
    masked_replies = []
    grid.on_reply = lambda msg, reply: masked_replies.append(reply) or reply
    for strategy, g in ((secure, grid), (plain, plain_grid)):
        strategy.train_round(g, 1, 10)
        assert strategy.rounds[-1].aggregated and strategy.rounds[-1].received == 3
    for key, value in plain.state.items():  # the same clients train the same steps: only the fixed point differs
        np.testing.assert_allclose(secure.state[key], value, atol=1e-5)
    size = sum(v.size for v in secure.state.values())
    middle = (2**32 - 1) // 3 / 2  # the code of a zero update; a round's small updates code close to it
    for reply in masked_replies[3:]:  # after the three keys: the masked updates
        masked = reply.content["arrays"][MASKED_ARRAY]
        assert masked.dtype == "uint32" and len(masked.data) == 4 * size
        near_codes = np.abs(np.frombuffer(masked.data, "<u4").astype(np.float64) - middle) < 0.01 * middle
        assert near_codes.mean() < 0.2  # uniform noise would put 0.7% of the values there
    phases = [(r["phase"], r["direction"]) for r in secure.ledger]
    assert phases.count(("secagg-keys", "down")) == phases.count(("secagg-keys", "up")) == 3
    up = [r["bytes"] for r in secure.ledger if r["phase"] == "train" and r["direction"] == "up"]
    assert all(0 < b - 4 * size < 300 for b in up)  # 32 bits a value plus the envelope
    assert secure.rounds[-1].up_bytes == sum(r["bytes"] for r in secure.ledger if r["direction"] == "up")
    assert secure.rounds[-1].down_bytes == sum(r["bytes"] for r in secure.ledger if r["direction"] == "down")


def _wrong_dtype(msg, reply):
    arrays = reply.content["arrays"]
    arrays[MASKED_ARRAY] = to_array(np.frombuffer(arrays[MASKED_ARRAY].data, "<u4").astype(np.int64))
    return reply


def _short(msg, reply):
    arrays = reply.content["arrays"]
    arrays[MASKED_ARRAY] = to_array(np.frombuffer(arrays[MASKED_ARRAY].data, "<u4")[:-1].copy())
    return reply


@pytest.mark.parametrize("tamper", ["silent", "wrong dtype", "short", "error"])
def test_a_participant_that_drops_or_sends_a_bad_masked_reply_loses_the_round_never_the_model(tamper):
    strategy, grid = _strategy(3)
    before = {k: v.copy() for k, v in strategy.state.items()}
    victim = 101
    edits = {"silent": lambda msg, reply: None, "wrong dtype": _wrong_dtype, "short": _short,
             "error": lambda msg, reply: Message(Error(0, "the client crashed"), reply_to=msg)}

    def on_reply(msg, reply):
        if msg.metadata.message_type == "train" and msg.metadata.dst_node_id == victim:
            return edits[tamper](msg, reply)
        return reply
    grid.on_reply = on_reply
    strategy.train_round(grid, 1, 10)
    stats = strategy.rounds[-1]
    assert not stats.aggregated and strategy.rounds_lost == 1 and str(victim) in stats.dropped
    for k, v in before.items():
        np.testing.assert_array_equal(strategy.state[k], v)
    grid.on_reply = lambda msg, reply: reply  # the next round, with everyone, is aggregated
    strategy.train_round(grid, 2, 10)
    assert strategy.rounds[-1].aggregated and strategy.summary_extras()["secure_aggregation"]["rounds_lost"] == 1


def test_a_client_without_its_key_not_among_the_keys_or_alone_refuses_to_mask():
    strategy, grid = _strategy(2)
    train = strategy._broadcast(1, grid, 1.0, "train", "train", nodes=[100, 101],
                                extra_config={KEYS_CONFIG: [bytes(32), bytes([1]) * 32]})
    with pytest.raises(ValueError, match="without a key exchange first"):
        client_app.train(train[0], grid.contexts[100])
    keys = strategy._broadcast(1, grid, 1.0, "x", f"query.{KEYS_ACTION}", nodes=[100])
    client_app.secagg_keys(keys[0], grid.contexts[100])
    with pytest.raises(ValueError, match="public key is not among"):
        client_app.train(train[0], grid.contexts[100])
    own = keys[0]  # a server that lists this client alone would read its update: refused
    public = client_app.secagg_keys(own, grid.contexts[100]).content["arrays"]["public-key"].data
    alone = strategy._broadcast(1, grid, 1.0, "train", "train", nodes=[100], extra_config={KEYS_CONFIG: [public]})
    with pytest.raises(ValueError, match="would reveal the update"):
        client_app.train(alone[0], grid.contexts[100])


def test_central_privacy_under_secure_aggregation_clips_on_the_client_and_noises_the_sum():
    strategy, grid = _strategy(3, "privacy.noise_multiplier=1e-6", "privacy.clipping_norm=0.01",
                               "secagg.clip_range=0.05")
    before = {k: v.copy() for k, v in strategy.state.items()}
    strategy.train_round(grid, 1, 10)
    step = {k: strategy.state[k] - before[k] for k in before}
    assert 0 < update_norm(step) <= 0.01 + 1e-6  # a mean of updates each clipped to 0.01 by its client


@pytest.mark.parametrize("overrides,expected", [
    (["federation.method=topk"], "cannot be securely aggregated"),
    (["federation.aggregation=median"], "only the sum"),
    (["federation.norm_bound=clip"], "only the sum"),
    (["pranc.reseed_period=2"], "pranc.reseed_period=0"),
    (["federation.topology=ring"], "federation.topology=star"),
    (["secagg.clip_range=0"], "secagg.clip_range"),
])
def test_what_secure_aggregation_cannot_do_is_refused_in_one_line(overrides, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        load_config("configs/mnist_lenet.yaml", ["secagg.enabled=true", *overrides])
    assert "\n" not in str(e.value)
