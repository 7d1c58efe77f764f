"""docs/spec.md against tests/spec_vectors.json, twice: this implementation (pranc_fed.basis), and
SpecReading, a plain-Python reading of the document's text that shares no code with the package."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pranc_fed.basis import STREAM_THETA0, Basis, Segment, period_seed, unit_block
from pranc_fed.models import build_model

VECTORS = json.loads((Path(__file__).with_name("spec_vectors.json")).read_text())
M32 = 0xFFFFFFFF


class SpecReading:
    """Sections 1-7 of docs/spec.md, written from the text alone."""

    def __init__(self, segments: list[dict], seed: int, k: int, layout: str, arch: str = "lenet"):
        self.seed, self.k, self.layout, self.arch = seed, k, layout, arch
        self.segments, offset = [], 0
        for s in segments:
            n = math.prod(s["shape"])
            self.segments.append(dict(s, offset=offset, n=n, b=float(np.float32(1.0 / math.sqrt(s["fan_in"])))))
            offset += n
        self.d = offset
        self.blocks = self._blocks()

    @staticmethod
    def philox(ctr, key):
        c0, c1, c2, c3 = ctr
        k0, k1 = key
        for _ in range(10):
            pa, pb = 0xD2511F53 * c0, 0xCD9E8D57 * c2
            c0, c1, c2, c3 = (pb >> 32) ^ c1 ^ k0, pb & M32, (pa >> 32) ^ c3 ^ k1, pa & M32
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        return c0, c1, c2, c3

    def bound(self, i: int) -> float:
        return next(s["b"] for s in self.segments if s["offset"] <= i < s["offset"] + s["n"])

    def value(self, i: int, j: int, stream: int) -> np.float32:
        w = self.philox((i // 4, j, stream, 0), (self.seed % 2**32, self.seed // 2**32))[i % 4]
        u = (2 * (w >> 8) + 1 - 2**24) * 2.0**-24
        return np.float32(self.bound(i) * u)  # exact in binary64, one rounding

    def _blocks(self) -> list[list[int]]:
        if self.layout == "global":
            return [[0, self.d, 0, self.k]]
        spans: dict[str, list[int]] = {}
        for s in self.segments:
            span = spans.setdefault(s["layer"], [s["offset"], s["offset"]])
            span[1] = s["offset"] + s["n"]
        sizes = [r1 - r0 for r0, r1 in spans.values()]
        spare = self.k - len(sizes)
        e = [spare * n / sum(sizes) for n in sizes]
        q = [math.floor(x) for x in e]
        for l in sorted(range(len(sizes)), key=lambda l: (q[l] - e[l], l))[:spare - sum(q)]:
            q[l] += 1
        blocks, col = [], 0
        for (r0, r1), kl in zip(spans.values(), q):
            blocks.append([r0, r1, col, col + kl + 1])
            col += kl + 1
        return blocks

    def B(self, i: int, j: int) -> np.float32:
        inside = any(r0 <= i < r1 and c0 <= j < c1 for r0, r1, c0, c1 in self.blocks)
        return self.value(i, j, 0) if inside else np.float32(0)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.segments:
            h.update(f"{s['name']}{tuple(s['shape'])}{s['b']!r};".encode())
        r0, r1, c0, c1 = self.blocks[0]
        h.update(np.array([[self.value(i, j, 0) for j in range(c0, min(c1, c0 + 8))]
                           for i in range(r0, min(r1, r0 + 64))], dtype="<f4").tobytes())
        h.update(np.array([self.value(i, 0, 1) for i in range(min(self.d, 64))], dtype="<f4").tobytes())
        return f"pranc-v1:{self.arch}:d{self.d}:k{self.k}:{self.layout}:s{self.seed}:{h.hexdigest()[:16]}"


def bits(value) -> str:
    return f"0x{np.float32(value).view(np.uint32):08x}"


CASES = VECTORS["cases"]
IDS = [f"{c['layout']}-k{c['num_coeffs']}-s{c['seed']}" for c in CASES]


def test_philox_known_answers_of_the_text() -> None:
    assert SpecReading.philox((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert SpecReading.philox((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_reading_of_the_text_reproduces_the_vectors(case: dict) -> None:
    spec = SpecReading(VECTORS["model"]["segments"], case["seed"], case["num_coeffs"], case["layout"])
    assert spec.d == case["dim"] and spec.blocks == case["blocks"]
    assert [[i, j, bits(spec.B(i, j))] for i, j, _ in case["B"]] == case["B"]
    assert [[i, bits(spec.value(i, 0, 1))] for i, _ in case["theta0"]] == case["theta0"]
    assert spec.fingerprint() == case["fingerprint"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_implementation_reproduces_the_vectors(case: dict) -> None:
    segments, offset = [], 0
    for s in VECTORS["model"]["segments"]:
        b = float(np.float32(1.0 / math.sqrt(s["fan_in"])))
        segments.append(Segment(s["name"], tuple(s["shape"]), offset, s["layer"], b))
        offset += math.prod(s["shape"])
    basis = Basis(segments, case["num_coeffs"], case["seed"], "lenet", layout=case["layout"], cache="none")
    assert str(basis.fingerprint) == case["fingerprint"]
    assert [[b.row0, b.row1, b.col0, b.col1] for b in basis.blocks] == case["blocks"]
    for i, j, want in case["B"]:
        block = next(b for b in basis.blocks if b.row0 <= i < b.row1)
        got = basis._values(0, i, i + 1, j, j + 1)[0, 0] if block.col0 <= j < block.col1 else 0.0
        assert bits(got) == want, (i, j)
    assert [[i, bits(basis._values(STREAM_THETA0, i, i + 1, 0, 1)[0, 0])] for i, _ in case["theta0"]] == case["theta0"]


def test_period_seeds() -> None:
    for seed, p, want in VECTORS["period_seeds"]:
        assert period_seed(seed, p) == want == (seed + p * 0x9E3779B97F4A7C15) % 2**64


def test_random_elements_and_chunkings_match_the_text() -> None:
    """Random (i, j) of LeNet at K = 5000 under a seed whose key words are both non-zero, generated one
    element at a time and as whole rows, against the text's value; theta0 too."""
    seed = 2 ** 63 + 987654321
    basis = Basis.for_module(build_model("lenet"), 5000, seed, "lenet", cache="none")
    spec = SpecReading(VECTORS["model"]["segments"], seed, 5000, "global")
    rng = np.random.default_rng(0)
    for i, j in zip(map(int, rng.integers(0, basis.dim, 40)), map(int, rng.integers(0, 5000, 40))):
        want = bits(spec.B(i, j))
        assert bits(unit_block(seed, i, i + 1, j, j + 1)[0, 0] * torch.tensor(spec.bound(i))) == want
        assert bits(basis._generate(basis.blocks[0], i, i + 1)[0, j]) == want
    for i in map(int, rng.integers(0, basis.dim, 20)):
        assert bits(basis.theta0[i]) == bits(spec.value(i, 0, 1))
