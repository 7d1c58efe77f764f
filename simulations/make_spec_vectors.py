"""Writes tests/spec_vectors.json: values, theta0 entries, blocks and fingerprints of basis spec v1
(docs/spec.md) from this implementation, for LeNet-5 in both layouts and for re-seeding periods.

    .venv/bin/python simulations/make_spec_vectors.py      # rewrites the file; tests/test_spec.py checks it
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pranc_fed.basis import STREAM_THETA0, Basis, covered_segments, period_seed
from pranc_fed.models import build_model

OUT = Path(__file__).resolve().parents[1] / "tests" / "spec_vectors.json"
SEEDS = [0, 1234567890123456789, 2**64 - 1]
CASES = [("global", 5000), ("per_layer", 1000)]


def bits(value: float) -> str:
    return f"0x{np.float32(value).view(np.uint32):08x}"


def main() -> None:
    module = build_model("lenet")
    segments = covered_segments(module)
    layers = {name: layer for name, layer in module.named_modules()}
    rng = np.random.default_rng(0)
    out = {
        "spec": 1,
        "model": {"arch": "lenet", "segments": [
            {"name": s.name, "shape": list(s.shape), "layer": s.layer, "fan_in": layers[s.layer].weight[0].numel()}
            for s in segments]},
        "cases": [],
        "period_seeds": [[seed, p, period_seed(seed, p)] for seed in SEEDS for p in (0, 1, 2, 1000)],
    }
    for seed in SEEDS:
        for layout, k in CASES:
            basis = Basis(segments, k, seed, "lenet", layout=layout, cache="none")
            d = basis.dim
            rows = [0, 1, 3, 4, 149, 150, 155, 156, d - 2, d - 1, *map(int, rng.integers(0, d, 12))]
            cols = [0, 1, k - 1, *map(int, rng.integers(0, k, 5))]
            values = []
            for i in rows:
                for j in cols:
                    block = next(b for b in basis.blocks if b.row0 <= i < b.row1)
                    v = basis._values(0, i, i + 1, j, j + 1)[0, 0] if block.col0 <= j < block.col1 else 0.0
                    values.append([i, j, bits(v)])
            theta0 = [[i, bits(basis._values(STREAM_THETA0, i, i + 1, 0, 1)[0, 0])] for i in rows]
            out["cases"].append({"seed": seed, "layout": layout, "num_coeffs": k, "dim": d,
                                 "blocks": [[b.row0, b.row1, b.col0, b.col1] for b in basis.blocks],
                                 "fingerprint": str(basis.fingerprint), "B": values, "theta0": theta0})
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in out.items() if key != "cases"]
    cases = ",\n  ".join(json.dumps(case) for case in out["cases"])
    OUT.write_text("{\n" + ",\n".join(lines) + f',\n "cases": [\n  {cases}\n ]\n}}\n')
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
