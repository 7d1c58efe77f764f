"""Alpha codecs (pranc_fed/codecs.py) and PRANC's use of them: error bounds per block, unbiased
stochastic rounding, error feedback in both directions, bytes, and rejection of malformed payloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pranc_fed.codecs import CODECS, InvalidReply, make_codec, spec_bytes
from pranc_fed.config import load_config
from pranc_fed.methods import get_method
from pranc_fed.methods.base import record_bytes
from pranc_fed.methods.pranc import RESIDUAL_KEY
from pranc_fed.models import build_model
from pranc_fed.pranc import PrancModel

BLOCK = 64
SCALED = {"int8": 127, "int4": 7, "nf4": 1, "int2": 1}  # s = max|x| / divisor
NF4_WIDEST_GAP = 1.0 - 0.6961928009986877  # between -1 and the next level


def vector(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-4, 1, -(-n // BLOCK)), BLOCK)[:n]  # scales vary by block
    x[BLOCK:2 * BLOCK] = 0.0  # an all-zero block
    return x.astype(np.float32)


def bound(name: str, x: np.ndarray, rounding: str) -> np.ndarray:
    """The largest error each value may have (module docstring of codecs.py): half the spacing of the
    codes around it when rounding to nearest, one spacing when rounding stochastically."""
    steps = 1.0 if rounding == "stochastic" else 0.5
    if name == "float32":
        return np.zeros_like(x)
    if name in ("float16", "bfloat16"):
        mantissa = 10 if name == "float16" else 7
        # the spacing above |x| (the one below is half of it at a power of two); fp16's subnormals: 2^-24
        spacing = np.maximum(2.0 ** (np.floor(np.log2(np.maximum(np.abs(x), 1e-30))) - mantissa),
                             2.0 ** -24 if name == "float16" else 0)
        return steps * spacing
    absmax = np.repeat(np.abs(np.pad(x, (0, -x.size % BLOCK))).reshape(-1, BLOCK).max(1), BLOCK)[:x.size]
    gap = NF4_WIDEST_GAP if name == "nf4" else 1.0
    return steps * gap * absmax / SCALED.get(name, 1) * (1 + 1e-6)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", list(CODECS))
def test_round_trip_error_is_within_the_stated_bound(name: str, rounding: str) -> None:
    codec, x = make_codec(name, BLOCK, rounding), vector()
    arrays = codec.encode("alpha", x, np.random.default_rng(1))
    assert {k: (str(v.dtype), v.shape) for k, v in arrays.items()} == codec.spec("alpha", x.size)
    y = codec.decode("alpha", arrays, x.size)
    assert y.dtype == np.float32 and np.all(np.abs(y - x) <= bound(name, x, rounding))
    assert np.all(y[BLOCK:2 * BLOCK] == 0)


def test_byte_formulas() -> None:
    n, blocks = 1001, -(-1001 // BLOCK)
    expected = {"float32": 4 * n, "float16": 2 * n, "bfloat16": 2 * n, "int8": n + 4 * blocks,
                "int4": 501 + 4 * blocks, "nf4": 501 + 4 * blocks, "int2": 251 + 4 * blocks}
    assert {name: spec_bytes(make_codec(name, BLOCK).spec("alpha", n)) for name in CODECS} == expected


@pytest.mark.parametrize("name", ["float16", "bfloat16", "int8", "int4", "nf4", "int2"])
def test_stochastic_rounding_is_unbiased(name: str) -> None:
    """The mean of 4000 independent encodings is the input, within 5 standard errors of one step."""
    codec, x, rng = make_codec(name, BLOCK, "stochastic"), vector(256, seed=3), np.random.default_rng(7)
    draws = np.stack([codec.decode("alpha", codec.encode("alpha", x, rng), x.size) for _ in range(4000)])
    step = bound(name, x, "stochastic")
    assert np.all(np.abs(draws.mean(0) - x) <= 5 * step / np.sqrt(4000) + 1e-12)
    # and nearest rounding of the same values is biased somewhere (so the test can tell them apart)
    near = make_codec(name, BLOCK, "nearest")
    assert np.abs(near.decode("alpha", near.encode("alpha", x, rng), x.size) - x).max() > 0


# ---------------------------------------------------------------- malformed payloads

def _bad_payloads(name: str, n: int):
    codec = make_codec(name, BLOCK)
    good = codec.encode("alpha", vector(n), np.random.default_rng(0))
    yield "good", good, None
    if "alpha.scale" in good:
        for label, value in [("nan scale", np.nan), ("inf scale", np.inf), ("zero scale", 0.0), ("negative scale", -1.0)]:
            s = good["alpha.scale"].copy()
            s[1] = value
            yield label, good | {"alpha.scale": s}, "scale"
    if name in ("int8", "int4"):  # |level| <= 1 for nf4: a finite scale cannot overflow
        big = good["alpha.scale"].copy()
        big[0] = np.finfo(np.float32).max
        yield "scale overflowing to inf", good | {"alpha.scale": big}, "NaN or Inf"
    if name == "int8":
        codes = good["alpha"].copy()
        codes[5] = -128
        yield "code -128", good | {"alpha": codes}, "-128"
    if name in ("int4", "nf4", "int2"):
        codes = good["alpha"].copy()
        codes[-1] |= 0xF0 if name != "int2" else 0xC0  # n = 4k + 3: the last field of the last byte is padding
        yield "padding bits", good | {"alpha": codes}, "padding"
        yield "short codes", good | {"alpha": codes[:-1]}, "bytes"
    if name == "int4":
        codes = good["alpha"].copy()
        codes[0] |= 0x0F  # code 15 is not a level
        yield "code 15", good | {"alpha": codes}, "exceeds 14"
    if name == "int2":
        codes = good["alpha"].copy()
        codes[0] |= 0x03  # code 3 is not a level
        yield "code 3", good | {"alpha": codes}, "exceeds 2"
    if name in ("float16", "bfloat16", "float32"):
        values = good["alpha"].copy()
        values[2] = np.array(0x7FC0, np.uint16) if name == "bfloat16" else np.nan
        yield "nan", good | {"alpha": values}, "NaN"


@pytest.mark.parametrize("name", list(CODECS))
def test_every_malformed_payload_is_refused(name: str) -> None:
    n = 2 * BLOCK + 3
    codec = make_codec(name, BLOCK)
    for label, arrays, reason in _bad_payloads(name, n):
        if reason is None:
            codec.decode("alpha", arrays, n)
            continue
        with pytest.raises(InvalidReply, match=reason):
            codec.decode("alpha", arrays, n)
            pytest.fail(label)


# ---------------------------------------------------------------- PRANC with codecs

def pranc(*overrides: str):
    cfg = load_config(None, ["pranc.num_coeffs=300", f"pranc.codec_block={BLOCK}", *overrides])
    torch.manual_seed(0)
    model = PrancModel(build_model("lenet"), 300, seed=0, arch="lenet", cache="memory")
    return get_method(cfg), model


def test_uplink_error_feedback_conserves_what_was_sent_plus_the_residual() -> None:
    """Over rounds, sum(decoded replies) + final residual = sum(true changes of alpha)."""
    m, model = pranc("pranc.uplink_codec=int4")
    memory: dict[str, np.ndarray] = {}
    sent, true = np.zeros(300), np.zeros(300)
    rng = np.random.default_rng(0)
    for _ in range(5):
        start = m.load_down(model, m.encode_down(m.state_of(model)), memory)
        with torch.no_grad():
            model.alpha.add_(torch.from_numpy(rng.standard_normal(300).astype(np.float32) * 0.01))
        true += model.alpha.detach().numpy() - start["alpha"]
        sent += m.decode_up(m.encode_up(model, start, memory), start)["alpha"]
    np.testing.assert_allclose(sent + memory[RESIDUAL_KEY], true, atol=1e-6)
    assert np.abs(memory[RESIDUAL_KEY]).max() > 0  # int4 did lose something, which feedback carries


def test_without_error_feedback_nothing_is_kept() -> None:
    m, model = pranc("pranc.uplink_codec=int4", "pranc.error_feedback=false")
    memory: dict[str, np.ndarray] = {}
    start = m.load_down(model, m.encode_down(m.state_of(model)), memory)
    m.encode_up(model, start, memory)
    assert RESIDUAL_KEY not in memory


def test_downlink_feedback_keeps_the_server_exact_and_every_client_equal() -> None:
    """The server's state never changes by broadcasting; broadcast_t = s + e_t - e_(t+1)."""
    m, model = pranc("pranc.downlink_codec=int4")
    state = {"alpha": vector(300, seed=5)}
    kept = state["alpha"].copy()
    memory: dict[str, np.ndarray] = {}
    total = np.zeros(300)
    for t in range(4):
        before = memory.get(RESIDUAL_KEY, np.zeros(300, np.float32)).copy()
        record = m.encode_down(state, memory)
        a = m.load_down(model, record, {})["alpha"]
        b = m.load_down(model, record, {})["alpha"]  # another client decodes the same bytes
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, state["alpha"] + before - memory[RESIDUAL_KEY], atol=1e-6)
        total += a
    np.testing.assert_array_equal(state["alpha"], kept)
    # the mean of the broadcasts converges on s: its error is the last residual / rounds
    assert np.abs(total / 4 - kept).max() <= np.abs(memory[RESIDUAL_KEY]).max() / 4 + 1e-6


@pytest.mark.parametrize("name", list(CODECS))
def test_reply_bytes_are_the_codec_layout_plus_a_fixed_envelope(name: str) -> None:
    """What a reply costs as Flower serialises it: the codec's data bytes plus an envelope (keys, dtypes,
    shapes) that does not grow with K beyond a few varint bytes."""
    from flwr.app import RecordDict
    sizes = {}
    for k in (640, 6400):
        cfg = load_config(None, [f"pranc.num_coeffs={k}", f"pranc.uplink_codec={name}"])
        m = get_method(cfg)
        record = m._encode(m.up, {"alpha": vector(k)}, None)
        data = spec_bytes(m.up.spec("alpha", k))
        sizes[k] = record_bytes(RecordDict({"arrays": record})) - data
    assert 0 <= sizes[6400] - sizes[640] <= 6 and sizes[640] < 200
