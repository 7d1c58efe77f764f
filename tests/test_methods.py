"""Each method's wire format, called directly (no Flower run): round trips, byte formulas,
error feedback, unbiasedness, and rejection of malformed replies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from pranc_fed.config import method_names
from pranc_fed.config import load_config
from pranc_fed.data import load_dataset
from pranc_fed.methods import METHODS, InvalidReply
from pranc_fed.methods.base import to_array
from pranc_fed.codecs import pack_bits, packed_size, unpack_bits
from pranc_fed.methods.delta import RESIDUAL_KEY
from pranc_fed.methods.qsgd import quantize
from pranc_fed.models import build_model
from pranc_fed.pranc import PrancModel

DELTA_METHODS = ["topk", "qsgd", "signsgd"]


def method(name: str, *overrides: str):
    return METHODS[name](load_config(None, [f"federation.method={name}", *overrides]))


def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet")


def perturb(model: torch.nn.Module, scale: float = 0.01, seed: int = 1) -> None:
    """Stand-in for local training: move every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def true_delta(m, model, start):
    now = m.state_of(model)
    return {k: now[k] - start[k] for k in start}


def payload(record: ArrayRecord) -> int:
    return sum(len(record[k].data) for k in record.keys())


def values(array: Array) -> np.ndarray:
    """A raw Array's values (a writable copy)."""
    return np.frombuffer(array.data, dtype=np.dtype(array.dtype).newbyteorder("<")).reshape(array.shape).copy()


def replace(record: ArrayRecord, key: str, array: Array | None) -> ArrayRecord:
    arrays = {k: record[k] for k in record.keys() if k != key}
    if array is not None:
        arrays[key] = array
    return ArrayRecord(arrays)


def test_every_configurable_method_is_registered() -> None:
    assert method_names() == tuple(METHODS)
    for name in method_names():
        assert METHODS[name].name == name


# ---------------------------------------------------------------- lossless and fp16 methods

def test_fedavg_fp32_round_trip_is_exact() -> None:
    m, model = method("fedavg"), lenet()
    start = m.load_down(model, m.encode_down(m.state_of(model)), {})
    perturb(model)
    delta = m.decode_up(m.encode_up(model, start, {}), start)
    for k, v in true_delta(m, model, start).items():
        np.testing.assert_array_equal(delta[k], v)


def test_fedavg_fp16_round_trip_error_is_bounded() -> None:
    m, model = method("fedavg_fp16"), lenet()
    start = m.state_of(model)
    perturb(model)
    record = m.encode_up(model, start, {})
    assert payload(record) == 2 * 44_426
    delta, now = m.decode_up(record, start), m.state_of(model)
    for k, v in true_delta(m, model, start).items():
        bound = 2.0 ** -11 * (np.abs(now[k]) + np.abs(start[k])) + 1e-7  # half an fp16 ulp each side
        assert (np.abs(delta[k] - v) <= bound).all()


@pytest.fixture(scope="module")
def pranc_model() -> PrancModel:
    torch.manual_seed(0)
    return PrancModel(build_model("lenet"), 16, seed=0, arch="lenet", cache="memory")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pranc_round_trip(pranc_model: PrancModel, dtype: str) -> None:
    m = method("pranc", "pranc.num_coeffs=16", f"pranc.uplink_codec={dtype}")
    with torch.no_grad():
        pranc_model.alpha.zero_()
    start = m.load_down(pranc_model, m.encode_down(m.state_of(pranc_model)), {})
    with torch.no_grad():
        pranc_model.alpha.copy_(torch.linspace(-0.5, 0.7, 16))
    record = m.encode_up(pranc_model, start, {})
    assert payload(record) == 16 * np.dtype(dtype).itemsize
    delta = m.decode_up(record, start)["alpha"]
    expected = pranc_model.alpha.detach().numpy() - start["alpha"]
    if dtype == "float32":
        np.testing.assert_array_equal(delta, expected)
    else:
        assert np.abs(delta - expected).max() <= 2.0 ** -11 * 0.7


@pytest.mark.parametrize("codec", ["float32", "int4"])
def test_an_all_zero_broadcast_travels_as_no_arrays_and_a_partial_one_is_refused(pranc_model: PrancModel,
                                                                                 codec: str) -> None:
    m = method("pranc", "pranc.num_coeffs=16", f"pranc.downlink_codec={codec}", "pranc.codec_block=8")
    state = m.state_of(pranc_model) | {"alpha": np.zeros(16, np.float32)}
    assert not any(k.startswith("alpha") for k in m.encode_down(state, {}).keys())
    np.testing.assert_array_equal(m.load_down(pranc_model, m.encode_down(state, {}), {})["alpha"], np.zeros(16))
    record = m.encode_down(state | {"alpha": np.linspace(-1, 1, 16, dtype=np.float32)}, {})
    alpha_keys = [k for k in record.keys() if k.startswith("alpha")]
    assert alpha_keys
    del record[alpha_keys[-1]]
    if len(alpha_keys) > 1:  # some codec arrays but not all
        with pytest.raises(InvalidReply):
            m.load_down(pranc_model, record, {})


# ---------------------------------------------------------------- compressed deltas: shared behaviour

@pytest.mark.parametrize("name", DELTA_METHODS)
def test_downlink_is_dense_fp32_and_exact(name: str) -> None:
    m, model = method(name), lenet()
    state = m.state_of(model)
    record = m.encode_down(state)
    assert {record[k].dtype for k in record.keys()} == {"float32"}
    assert payload(record) == 4 * 44_426
    fresh = build_model("lenet")
    start = m.load_down(fresh, record, {})
    for k in state:
        np.testing.assert_array_equal(start[k], state[k])
        np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), state[k])


@pytest.mark.parametrize("name", DELTA_METHODS)
def test_fp16_downlink_halves_the_broadcast_and_deltas_start_from_what_arrived(name: str) -> None:
    m, model = method(name, "methods.downlink_dtype=float16"), lenet()
    assert m.setting().endswith("-down16") and m.fingerprint(model) != method(name).fingerprint(model)
    state = m.state_of(model)
    record = m.encode_down(state)
    assert {record[k].dtype for k in record.keys()} == {"float16"} and payload(record) == 2 * 44_426
    client = build_model("lenet")
    start = m.load_down(client, record, {})
    for k in state:  # the client starts from the fp16-rounded weights ...
        np.testing.assert_array_equal(start[k], state[k].astype(np.float16).astype(np.float32))
    # ... and its delta is measured from them: a client that did not move sends exactly zero, so the
    # rounding never reaches the server's float32 state
    delta = m.decode_up(m.encode_up(client, start, {}), state)
    assert set(delta) == set(state) and all(not delta[k].any() for k in delta)


@pytest.mark.parametrize("name", DELTA_METHODS)
def test_running_statistics_travel_dense_and_exact(name: str) -> None:
    """BatchNorm's running_var, compressed like a weight, could turn negative: it is sent as is."""
    m = method(name, "model.arch=resnet20")
    torch.manual_seed(0)
    model = build_model("resnet20")
    start = m.state_of(model)
    stats = {k for k in start if k.endswith(("running_mean", "running_var"))}
    assert stats and m.stat_keys >= stats
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # moves every running statistic
    record = m.encode_up(model, start, {})
    delta = m.decode_up(record, start)
    now = m.state_of(model)
    for k in stats:
        assert record[k].dtype == "float32"
        np.testing.assert_array_equal(delta[k], now[k] - start[k])
    assert sum(len(record[k].data) for k in stats) == 4 * 1376
    bad = values(record["layer1.0.bn1.running_var"])
    bad[0] = np.nan
    with pytest.raises(InvalidReply, match="running_var"):
        m.decode_up(replace(record, "layer1.0.bn1.running_var", to_array(bad)), start)
    with pytest.raises(InvalidReply, match="missing"):
        m.decode_up(replace(record, "layer1.0.bn1.running_var", None), start)


@pytest.mark.parametrize("name", DELTA_METHODS)
def test_server_decodes_exactly_what_the_client_sent(name: str) -> None:
    """decode_up(encode_up) is the client's own decompression, so error feedback is exact."""
    m, model = method(name), lenet()
    start = m.state_of(model)
    perturb(model)
    memory: dict[str, np.ndarray] = {}
    record = m.encode_up(model, start, memory)
    delta = m.decode_up(record, start)
    target = m.flatten(true_delta(m, model, start))
    sent = m.flatten(delta)
    if m.error_feedback:
        np.testing.assert_allclose(memory[RESIDUAL_KEY], target - sent, atol=0, rtol=0)
    else:
        assert memory == {}
    assert set(delta) == set(start) and all(delta[k].shape == start[k].shape for k in start)


@pytest.mark.parametrize("name", ["topk", "signsgd"])
def test_error_feedback_carries_the_residual(name: str) -> None:
    """Over rounds, what was sent plus the final residual equals the sum of the true deltas."""
    m = method(name)
    model = lenet()
    memory: dict[str, np.ndarray] = {}
    total_true = total_sent = 0
    for round_ in range(3):
        start = m.state_of(model)
        perturb(model, seed=10 + round_)
        residual_before = memory.get(RESIDUAL_KEY, 0)
        record = m.encode_up(model, start, memory)
        sent = m.flatten(m.decode_up(record, start))
        true = m.flatten(true_delta(m, model, start))
        # this round compressed true delta + previous residual
        np.testing.assert_allclose(memory[RESIDUAL_KEY], true + residual_before - sent, atol=1e-7)
        total_true, total_sent = total_true + true, total_sent + sent
    np.testing.assert_allclose(total_sent + memory[RESIDUAL_KEY], total_true, atol=1e-6)
    # the residual survives the client's memory store (numpy -> flwr Array -> numpy)
    stored = ArrayRecord({k: Array(v) for k, v in memory.items()})
    np.testing.assert_array_equal(stored[RESIDUAL_KEY].numpy(), memory[RESIDUAL_KEY])


@pytest.mark.parametrize("name", ["topk", "signsgd"])
def test_error_feedback_can_be_turned_off(name: str) -> None:
    m, model = method(name, "methods.error_feedback=false"), lenet()
    start = m.state_of(model)
    perturb(model)
    memory: dict[str, np.ndarray] = {}
    m.encode_up(model, start, memory)
    assert memory == {}
    assert m.setting().endswith("noef")


def test_fingerprint_names_the_wire_settings() -> None:
    model = lenet()
    a = method("topk", "methods.topk_density=0.01").fingerprint(model)
    b = method("topk", "methods.topk_density=0.02").fingerprint(model)
    assert a != b
    assert method("qsgd", "methods.qsgd_levels=4").fingerprint(model) != method("qsgd").fingerprint(model)


# ---------------------------------------------------------------- topk

def test_topk_keeps_exactly_k_largest() -> None:
    m, model = method("topk", "methods.topk_density=0.01", "methods.error_feedback=false"), lenet()
    start = m.state_of(model)
    perturb(model)
    record = m.encode_up(model, start, {})
    k = math.ceil(0.01 * 44_426)
    assert m.k(44_426) == k == 445
    assert payload(record) == 6 * k == m.payload_bytes(m.sizes(start))
    sent = m.flatten(m.decode_up(record, start))
    true = m.flatten(true_delta(m, model, start))
    kept = np.flatnonzero(sent)
    assert kept.size == k
    assert np.abs(true[kept]).min() >= np.sort(np.abs(true))[-k]
    np.testing.assert_array_equal(sent[kept], true[kept].astype(np.float16).astype(np.float32))


# ---------------------------------------------------------------- bit packing, qsgd, signsgd

@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 9, 13, 16, 32])
def test_bit_packing_round_trip_and_size(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for count in (0, 1, 7, 8, 9, 1001):
        values = rng.integers(0, 2**bits, size=count, dtype=np.uint64).astype(np.uint32)
        packed = pack_bits(values, bits)
        assert packed.dtype == np.uint8 and packed.size == packed_size(count, bits) == math.ceil(count * bits / 8)
        np.testing.assert_array_equal(unpack_bits(packed, count, bits, "x"), values)


def test_bit_packing_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pack_bits(np.array([4]), 2)
    packed = pack_bits(np.array([1, 2, 3]), 2)  # 6 bits used of 8
    packed[-1] |= 0x80
    with pytest.raises(InvalidReply, match="padding"):
        unpack_bits(packed, 3, 2, "x")
    with pytest.raises(InvalidReply):
        unpack_bits(np.zeros(2, np.uint8), 3, 2, "x")


@pytest.mark.parametrize("levels", [1, 4, 16, 255])
def test_qsgd_bytes_equal_the_formula(levels: int) -> None:
    m, model = method("qsgd", f"methods.qsgd_levels={levels}"), lenet()
    start = m.state_of(model)
    perturb(model)
    record = m.encode_up(model, start, {})
    tensors, n, bits = len(start), 44_426, levels.bit_length()
    formula = 4 * tensors + math.ceil(n * bits / 8) + math.ceil(n / 8)
    assert payload(record) == formula == m.payload_bytes(m.sizes(start))


def test_signsgd_bytes_and_values() -> None:
    m, model = method("signsgd", "methods.error_feedback=false"), lenet()
    start = m.state_of(model)
    perturb(model)
    record = m.encode_up(model, start, {})
    assert payload(record) == 4 * len(start) + math.ceil(44_426 / 8) == m.payload_bytes(m.sizes(start))
    delta, true = m.decode_up(record, start), true_delta(m, model, start)
    for k in start:
        scale = np.abs(true[k].astype(np.float64)).mean()
        np.testing.assert_allclose(np.abs(delta[k]), scale, rtol=1e-6)
        assert (np.sign(delta[k]) == np.where(true[k] < 0, -1, 1)).all()


@pytest.mark.parametrize("levels", [2, 16])
def test_qsgd_is_unbiased_with_bounded_variance(levels: int) -> None:
    m = method("qsgd", f"methods.qsgd_levels={levels}")
    sizes = [40, 7, 13]
    v = np.random.default_rng(0).normal(size=sum(sizes)).astype(np.float32)
    v[3] = 0.0
    draws = 3000
    decoded = np.stack([m.decompress(m.compress(v, sizes), sizes) for _ in range(draws)]).astype(np.float64)
    offsets = np.cumsum([0, *sizes])
    for t, n in enumerate(sizes):
        block, x = decoded[:, offsets[t]:offsets[t + 1]], v[offsets[t]:offsets[t + 1]].astype(np.float64)
        norm = np.linalg.norm(x)
        # per-entry variance <= norm^2 / (4 s^2): the mean is within 5 standard errors
        stderr = norm / (2 * levels) / math.sqrt(draws)
        assert np.abs(block.mean(axis=0) - x).max() <= 5 * stderr
        # Alistarh et al. Lemma 3.1: E||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||^2
        mse = ((block - x) ** 2).sum(axis=1).mean()
        assert mse <= min(n / levels**2, math.sqrt(n) / levels) * norm**2 * 1.1
        # every decoded entry is +-norm * l / s with an integer level
        lv = np.abs(block) * levels / norm
        np.testing.assert_allclose(lv, np.round(lv), atol=1e-4)
    assert (decoded[:, 3] == 0).all()


def test_qsgd_draws_differ_between_calls_but_runs_reproduce() -> None:
    sizes, v = [50], np.linspace(-1, 1, 50).astype(np.float32)
    a, b = method("qsgd"), method("qsgd")
    first = [a.decompress(a.compress(v, sizes), sizes) for _ in range(3)]
    again = [b.decompress(b.compress(v, sizes), sizes) for _ in range(3)]
    assert not np.array_equal(first[0], first[1])
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    norms, q, negative = quantize(v, sizes, 4, np.random.default_rng(0))
    assert q.max() <= 4 and norms.dtype == np.float32 and negative.sum() == 25


# ---------------------------------------------------------------- malformed replies

def _valid(name: str):
    m, model = method(name), lenet()
    start = m.state_of(model)
    perturb(model)
    return m, start, m.encode_up(model, start, {})


def _mutations(name: str, m, start, record: ArrayRecord) -> dict[str, ArrayRecord]:
    key = sorted(record.keys())[0]
    arr = record[key]
    first = values(arr)
    raw = arr.data
    cases = {
        "missing key": replace(record, key, None),
        "extra key": ArrayRecord({**{k: record[k] for k in record.keys()}, "extra": to_array(np.zeros(1, np.float32))}),
        "wrong dtype": replace(record, key, to_array(first.astype(np.float64))),
        "wrong shape": replace(record, key, to_array(first.ravel()[:-1].copy())),
        "short data": replace(record, key, Array(dtype=arr.dtype, shape=tuple(arr.shape), stype=arr.stype,
                                                 data=raw[:-1])),
        "wrong stype": replace(record, key, Array(dtype=arr.dtype, shape=tuple(arr.shape), stype="numpy.ndarray",
                                                  data=raw)),
    }
    floats = [k for k in record.keys() if record[k].dtype.startswith("float")]
    for k in floats:
        v = values(record[k])
        v.flat[0] = np.nan
        cases[f"NaN in {k}"] = replace(record, k, to_array(v))
        v.flat[0] = np.inf
        cases[f"Inf in {k}"] = replace(record, k, to_array(v))
    if name == "topk":
        idx = values(record["indices"])
        bad = idx.copy()
        bad[-1] = 44_426
        cases["index out of range"] = replace(record, "indices", to_array(bad))
        bad = idx.copy()
        bad[0] = -1
        cases["negative index"] = replace(record, "indices", to_array(bad))
        bad = idx.copy()
        bad[1] = bad[0]
        cases["duplicate index"] = replace(record, "indices", to_array(bad))
        cases["unsorted indices"] = replace(record, "indices", to_array(idx[::-1].copy()))
    if name in ("qsgd", "signsgd"):
        scale_key = "norms" if name == "qsgd" else "scales"
        v = values(record[scale_key])
        v[0] = -abs(v[0]) - 1
        cases["negative scale"] = replace(record, scale_key, to_array(v))
        signs = values(record["signs"])
        signs[-1] |= 0x80  # 44426 = 8 * 5553 + 2: the last byte has 6 padding bits
        cases["sign padding bits"] = replace(record, "signs", to_array(signs))
    if name == "qsgd":
        levels = values(record["levels"])
        levels[0] |= 0x1F  # first 5-bit field = 31 > s = 16
        cases["level above s"] = replace(record, "levels", to_array(levels))
    return cases


@pytest.mark.parametrize("name", DELTA_METHODS + ["fedavg", "fedavg_fp16"])
def test_malformed_replies_raise_invalid_reply(name: str) -> None:
    m, start, record = _valid(name)
    m.decode_up(record, start)  # the valid one decodes
    cases = _mutations(name, m, start, record)
    assert len(cases) >= 6
    for label, bad in cases.items():
        with pytest.raises(InvalidReply):
            m.decode_up(bad, start)
            pytest.fail(f"{name}: {label} was accepted")


def test_pranc_malformed_alpha_raises(pranc_model: PrancModel) -> None:
    m = method("pranc", "pranc.num_coeffs=16")
    start = m.state_of(pranc_model)
    for bad in (ArrayRecord({}), ArrayRecord({"alpha": to_array(np.zeros(15, np.float32))}),
                ArrayRecord({"alpha": to_array(np.full(16, np.nan, np.float32))}),
                ArrayRecord({"alpha": to_array(np.zeros(16, np.float16))})):
        with pytest.raises(InvalidReply):
            m.decode_up(bad, start)


# ---------------------------------------------------------------- fedpm

def test_fedpm_mask_round_trips_at_one_bit_per_weight() -> None:
    m = method("fedpm")
    net = m.build_model(load_dataset("mnist"), torch.device("cpu"))
    start = m.load_down(net, m.encode_down(m.state_of(net)), {})
    record = m.encode_up(net, start, {})
    assert payload(record) == packed_size(44_426, 1)
    mask = m.decode_up(record, start)["theta"]
    assert set(np.unique(mask)) <= {0.0, 1.0} and 0.4 < mask.mean() < 0.6  # sampled at theta = 0.5
    # the same bits back: pack what the server decoded and compare with the wire bytes
    np.testing.assert_array_equal(pack_bits(mask.astype(np.uint32), 1), np.frombuffer(record["mask"].data, np.uint8))


def test_fedpm_aggregating_identical_masks_returns_that_mask() -> None:
    m = method("fedpm", "methods.fedpm_reset_period=3")
    mask = (np.random.default_rng(0).random(1000) < 0.3).astype(np.float32)
    state, memory = {"theta": np.full(1000, 0.5, np.float32)}, {}
    for _ in range(2):
        state = m.aggregate(state, [{"theta": mask}] * 4, [10, 20, 30, 40], None, memory)
        np.testing.assert_array_equal(state["theta"] > 0.5, mask == 1)
        np.testing.assert_array_equal(np.unique(state["theta"]), np.float32([0.01, 0.99]))  # clipped off 0 and 1
    mixed = m.aggregate(state, [{"theta": mask}, {"theta": 1 - mask}], [1, 1], None, memory)
    # Beta counts: 8 agreeing masks of the earlier rounds outweigh one dissent
    np.testing.assert_allclose(mixed["theta"], np.where(mask == 1, 9 / 10, 1 / 10))


def test_fedpm_trains_scores_only_and_rejects_bad_masks() -> None:
    m = method("fedpm")
    net = m.build_model(load_dataset("mnist"), torch.device("cpu"))
    frozen = net.weights.clone()
    net.train()
    loss = torch.nn.functional.cross_entropy(net(torch.randn(8, 1, 28, 28)), torch.arange(8))
    loss.backward()
    assert net.scores.grad is not None and net.scores.grad.abs().sum() > 0
    assert [p for p in net.parameters() if p.requires_grad] == [net.scores]
    torch.testing.assert_close(net.weights, frozen)
    state = m.state_of(net)
    n = packed_size(44_426, 1)
    padded = np.zeros(n, np.uint8)
    padded[-1] = 0xFF  # 44,426 = 8 x 5553 + 2: the last byte holds 6 padding bits
    for arrays, reason in [({"mask": to_array(np.zeros(n - 1, np.uint8))}, "shape"),
                           ({"mask": to_array(padded)}, "padding"),
                           ({"mask": to_array(np.zeros(n, np.float32))}, "dtype"),
                           ({"theta": to_array(np.zeros(44_426, np.float32))}, "keys")]:
        with pytest.raises(InvalidReply, match=reason):
            m.decode_up(ArrayRecord(arrays), state)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_counts_the_weights_of_the_same_network(name: str) -> None:
    """Bits per weight divide by the plain network's size, never by a wrapper's extra tensors (fedpm's scores)."""
    from pranc_fed.models import count_parameters
    m = method(name, "pranc.num_coeffs=16")
    model = m.build_model(load_dataset("mnist"), torch.device("cpu"))
    assert sum(count_parameters(m.network(model))) == 44_426


@pytest.mark.parametrize("reseed", [0, 1])
def test_a_client_keeps_its_optimiser_between_rounds_and_drops_it_with_the_basis(reseed: int) -> None:
    """federation.keep_client_optimizer through the real ClientApp: round 2 starts from round 1's
    Adam step count and moments; a new basis (re-seeded PRANC) starts them afresh."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from pranc_fed import client_app
    from pranc_fed.strategy import MethodStrategy
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    overrides = ["pranc.num_coeffs=50", "data.train_subset=600", "federation.local_steps=3", "train.batch_size=32",
                 "federation.keep_client_optimizer=true", f"pranc.reseed_period={reseed}", "federation.num_clients=2"]
    run_config = {"config-file": "configs/mnist_lenet.yaml", "overrides": " ".join(overrides)}
    context = Context(1, 7, {"partition-id": 0, "num-partitions": 2}, RecordDict(), run_config)
    node = client_app.node_for(context)
    strategy = MethodStrategy(node.cfg, node.method, node.method.state_of(node.model), node.fingerprint)
    steps = []
    for server_round in (1, 2):
        strategy.state = node.method.begin_round(strategy.state, server_round, strategy.server_memory)
        arrays = node.method.encode_down(strategy.state, strategy.server_memory)
        arrays = RecordDict({"arrays": type(arrays)(dict(arrays.items()) | node.method.catch_up(
            strategy.state, strategy.server_memory, 0)), "config": ConfigRecord(
            {"server-round": server_round, "fingerprint": node.fingerprint})})
        client_app.train(Message(content=arrays, dst_node_id=7, message_type=MessageType.TRAIN), context)
        memory = context.state[client_app.MEMORY_KEY]
        steps.append(float(memory["optimizer:0/step"].numpy()))
    assert steps == ([3.0, 3.0] if reseed else [3.0, 6.0])
