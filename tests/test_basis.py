"""The basis: spec v1 bits on every path (engines, caches, precisions, layouts) and the products."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pranc_fed import basis as basis_mod
from pranc_fed.basis import (
    Basis,
    Fingerprint,
    FingerprintMismatch,
    covered_segments,
    philox4x32,
    split_columns,
    unit_block,
)
from pranc_fed.models import build_model
from pranc_fed.pranc import PrancModel

M32 = 0xFFFFFFFF


def assert_product_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """rtol 1e-5 against a float64 product; the absolute floor is relative to the largest entry
    (a float32 sum of d terms cancels, so tiny entries carry the rounding of the big ones)."""
    want = want.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 7), nn.ReLU(),
                         nn.Linear(7, 5), nn.BatchNorm1d(5))


SEED = 2 ** 63 + 987654321   # both key words non-zero


# ------------------------------------------------------------------------------ the generator


def test_philox_known_answers() -> None:
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in kat:
        got = philox4x32(*[torch.tensor([c], dtype=torch.int64) for c in ctr], key)
        assert tuple(int(w) for w in got) == want


def test_fast_generator_matches_reference_philox() -> None:
    key = (SEED & M32, SEED >> 32)
    for stream in (0, 1):
        words = basis_mod._philox_grid(key, 5, 23, 3, 40, stream)
        g = torch.arange(5, 23)[:, None].expand(-1, 37)
        j = torch.arange(3, 40)[None, :].expand(18, -1)
        ref = philox4x32(g, j, torch.full_like(g, stream), torch.zeros_like(g), key)
        for w, r in zip(words, ref):
            assert np.array_equal(w & np.uint64(M32), r.numpy().astype(np.uint64))


def test_torch_and_numpy_generators_agree() -> None:
    for args in [(SEED, 1, 38, 2, 19), (0, 0, 4, 0, 1), (7, 3, 5, 9, 10)]:
        assert torch.equal(unit_block(*args), basis_mod._unit_block_torch(*args, device="cpu"))
    assert torch.equal(unit_block(SEED, 2, 30, 0, 1, stream=1),
                       basis_mod._unit_block_torch(SEED, 2, 30, 0, 1, "cpu", stream=1))


def test_compiled_generator_matches_the_reference_bits() -> None:
    """philox_numba against numpy's engine and the torch reference: random 64-bit seeds, random blocks,
    and the last rows and columns of LeNet's d = 44,426 and K = 5000, both streams."""
    assert basis_mod.generator._compiled is not None, "numba is a dependency: the compiled generator must load"
    rng = np.random.default_rng(3)
    d, k = 44_426, 5000
    blocks = [(d - 5, d, k - 3, k), (d - 1, d, 0, 1), (0, 1, k - 1, k), (4097, 4099, 2, 7)]
    blocks += [(int(r), int(r) + int(n), int(c), int(c) + int(m)) for r, n, c, m in
               zip(rng.integers(0, d - 40, 6), rng.integers(1, 40, 6), rng.integers(0, k - 30, 6), rng.integers(1, 30, 6))]
    for seed in [0, SEED, int(rng.integers(0, 2**63)) * 2 + 1, 2**64 - 1]:
        for stream in (0, 1):
            for r0, r1, c0, c1 in blocks:
                scale = rng.random(r1 - r0) * 2.0 ** -24
                fast, slow = np.empty((r1 - r0, c1 - c0), np.float32), np.empty((r1 - r0, c1 - c0), np.float32)
                basis_mod._fill_values(seed, stream, r0, r1, c0, c1, scale, fast)
                basis_mod._fill_values_numpy(seed, stream, r0, r1, c0, c1, scale, slow)
                assert np.array_equal(fast.view(np.uint32), slow.view(np.uint32)), (seed, stream, r0, c0)
                ref = basis_mod._unit_block_torch(seed, r0, r1, c0, c1, "cpu", stream)
                assert torch.equal(unit_block(seed, r0, r1, c0, c1, stream=stream), ref)


def test_bits_independent_of_chunking_order_and_threads() -> None:
    model = build_model("lenet")
    whole = Basis.for_module(model, 64, SEED, "lenet", cache="memory").matrix()
    tiny = Basis.for_module(model, 64, SEED, "lenet", cache="none", budget_mb=0.05)   # many small chunks
    assert sum(1 for _ in tiny.chunks()) > 10
    assert torch.equal(tiny.matrix(), whole)
    # arbitrary sub-blocks asked in a shuffled order
    cuts = [0, 3, 1000, 1001, 20011, 44426]
    pieces = [(a, b, c0, c1) for a, b in zip(cuts, cuts[1:]) for c0, c1 in [(0, 17), (17, 64)]]
    rng = np.random.default_rng(1)
    for n in rng.permutation(len(pieces)):
        a, b, c0, c1 = pieces[n]
        assert torch.equal(unit_block(SEED, a, b, c0, c1) * tiny.bounds[a:b, None], whole[a:b, c0:c1])
        assert torch.equal(tiny._generate(tiny.blocks[0], a, b)[:, c0:c1], whole[a:b, c0:c1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = Basis.for_module(model, 64, SEED, "lenet", cache="memory")
        torch.set_num_threads(2)
        two = Basis.for_module(model, 64, SEED, "lenet", cache="memory")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.matrix(), whole) and torch.equal(two.matrix(), whole)
    assert torch.equal(one.theta0, two.theta0)


# ------------------------------------------------------------------------------- the products


@pytest.mark.parametrize("layout", ["global", "per_layer"])
def test_alpha_grad_is_b_transpose_grad_theta(layout: str) -> None:
    from pranc_fed.pranc import PrancModel
    model = PrancModel(toy(), 20, seed=SEED, arch="toy", layout=layout)
    B = model.basis.matrix().double()
    with torch.no_grad():
        model.alpha.normal_(0, 0.1)
    x = torch.randn(8, 1, 6, 6)
    loss = model(x).square().mean()
    loss.backward()
    theta = model.basis.expand(model.alpha).requires_grad_(True)
    from torch.func import functional_call
    out = functional_call(model.module, model.unflatten(theta), (x,), strict=False)
    grad_theta, = torch.autograd.grad(out.square().mean(), theta)
    torch.testing.assert_close(model.alpha.grad.double(), B.T @ grad_theta.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(theta.detach().double(), model.basis.theta0.double() + B @ model.alpha.detach().double(),
                               rtol=1e-5, atol=1e-7)


def test_linearity_average_of_alphas_is_average_of_models() -> None:
    basis = Basis.for_module(build_model("lenet"), 300, SEED, "lenet")
    a1, a2 = torch.randn(300), torch.randn(300)
    torch.testing.assert_close(basis.expand((a1 + a2) / 2), (basis.expand(a1) + basis.expand(a2)) / 2,
                               rtol=1e-5, atol=1e-6)


def test_per_layer_equals_global_inside_blocks_and_zero_outside() -> None:
    model = build_model("lenet")
    k = 200
    glob = Basis.for_module(model, k, SEED, "lenet", layout="global").matrix()
    per = Basis.for_module(model, k, SEED, "lenet", layout="per_layer")
    mat = per.matrix()
    # the documented rule: one block per layer, K_l = 1 + largest-remainder share of K - L by size
    spans: dict[str, list[int]] = {}
    for s in covered_segments(model):
        spans.setdefault(s.layer, []).append(s.numel)
    sizes = [sum(v) for v in spans.values()]
    spare, total = k - len(sizes), sum(sizes)
    exact = [Fraction(spare * s, total) for s in sizes]
    counts = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda l: (-(exact[l] - counts[l]), l))
    for l in order[:spare - sum(counts)]:
        counts[l] += 1
    assert split_columns(sizes, k) == [c + 1 for c in counts]
    assert [b.col1 - b.col0 for b in per.blocks] == [c + 1 for c in counts]
    mask = torch.zeros_like(mat, dtype=torch.bool)
    for b in per.blocks:
        mask[b.row0:b.row1, b.col0:b.col1] = True
    assert torch.equal(mat[mask], glob[mask])
    assert not mat[~mask].any()
    assert torch.equal(per.theta0, Basis.for_module(model, k, SEED, "lenet").theta0)
    with pytest.raises(ValueError, match="num_coeffs >= number of layers"):
        Basis.for_module(model, 3, SEED, "lenet", layout="per_layer")


def test_fingerprint_round_trip_and_mismatch() -> None:
    a = Basis.for_module(toy(), 10, SEED, "toy").fingerprint
    assert Fingerprint.parse(str(a)) == a
    b = Basis.for_module(toy(), 10, SEED + 1, "toy").fingerprint
    with pytest.raises(FingerprintMismatch, match="seed"):
        a.check(b)
    assert Basis.for_module(toy(), 10, SEED, "toy", cache="none", cache_dtype="bfloat16").fingerprint == a


# ------------------------------------------------------------------ caches and low precision


@pytest.mark.parametrize("layout", ["global", "per_layer"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cached_values_are_the_reference_rounded(layout: str, dtype: str, tmp_path) -> None:
    model = build_model("lenet")
    ref = Basis.for_module(model, 40, SEED, "lenet", layout=layout, cache="none")
    exact = ref.matrix()
    want = exact.to(basis_mod.CACHE_DTYPES[dtype]).float()
    a, g = torch.randn(40), torch.randn(ref.dim)
    for cache in ("memory", "disk"):
        b = Basis.for_module(model, 40, SEED, "lenet", layout=layout, cache=cache, cache_dtype=dtype,
                             cache_path=tmp_path / f"{cache}.basis" if cache == "disk" else None)
        assert b.is_cached and b.cache_bytes == b.nonzeros * basis_mod.CACHE_DTYPES[dtype].itemsize
        assert torch.equal(b.matrix(), want)
        assert_product_close(b.expand(a), b.theta0.double() + want.double() @ a.double())
        assert_product_close(b.project(g), want.double().T @ g.double())
    if dtype == "float32":
        assert_product_close(ref.expand(a), ref.theta0.double() + exact.double() @ a.double())
        assert_product_close(ref.project(g), exact.double().T @ g.double())


def test_disk_cache_is_shared_not_regenerated(tmp_path) -> None:
    env = dict(os.environ, PRANC_FED_CACHE=str(tmp_path))
    os.environ["PRANC_FED_CACHE"] = str(tmp_path)
    try:
        first = Basis.for_module(build_model("lenet"), 64, SEED, "lenet", cache="disk")
    finally:
        del os.environ["PRANC_FED_CACHE"]
    assert first.cache_source == "disk-written" and first.cache_file.parent == tmp_path / "basis"
    name = first.cache_file.name   # written atomically: no temporary file is left
    assert sorted(p.name for p in (tmp_path / "basis").iterdir()) == [name, name + ".lock"]
    assert stat.S_IMODE(first.cache_file.stat().st_mode) == 0o444                   # read-only file
    before = first.cache_file.stat()
    script = textwrap.dedent(f"""
        import json, torch
        from pranc_fed import basis
        from pranc_fed.models import build_model
        b = basis.Basis.for_module(build_model("lenet"), 64, {SEED}, "lenet", cache="disk")
        a = torch.arange(64, dtype=torch.float32) / 64
        print(json.dumps({{"source": b.cache_source, "generated": basis.core.generated_values, "nonzeros": b.nonzeros,
                          "file": str(b.cache_file), "theta": b.expand(a)[:5].tolist()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["source"] == "disk-hit" and report["file"] == str(first.cache_file)
    assert report["generated"] < report["nonzeros"] // 10     # only spot-check rows and the fingerprint
    assert first.cache_file.stat().st_mtime_ns == before.st_mtime_ns and first.cache_file.stat().st_ino == before.st_ino
    a = torch.arange(64, dtype=torch.float32) / 64
    assert report["theta"] == first.expand(a)[:5].tolist()


def test_auto_shares_the_disk_file_on_the_cpu_unless_it_cannot(tmp_path, monkeypatch) -> None:
    """auto maps the shared file (what keeps a simulation's memory flat in its actors); a re-seeded
    period's basis and a cache folder that cannot be written fall back to a private copy."""
    monkeypatch.setenv("PRANC_FED_CACHE", str(tmp_path / "cache"))
    model = build_model("lenet")
    shared = Basis.for_module(model, 32, SEED, "lenet")
    assert shared.cache_source == "disk-written" and shared.cache_file.parent == tmp_path / "cache" / "basis"
    assert Basis.for_module(model, 32, SEED, "lenet").cache_source == "disk-hit"
    assert Basis.for_module(model, 32, SEED, "lenet", share=False).cache_source == "memory"
    pranc = PrancModel(build_model("lenet"), 32, seed=SEED, arch="lenet")
    pranc.advance(torch.ones(32))
    assert pranc.basis.cache_source == "memory" and len(list((tmp_path / "cache" / "basis").glob("*.basis"))) == 1
    (tmp_path / "full").write_text("")        # a file where the cache folder should be: mkdir fails
    monkeypatch.setenv("PRANC_FED_CACHE", str(tmp_path / "full"))
    with pytest.warns(UserWarning, match="keeping the basis in memory"):
        private = Basis.for_module(model, 32, SEED, "lenet")
    assert private.cache_source == "memory" and torch.equal(private.matrix(), shared.matrix())
    with pytest.raises(OSError):               # asked for explicitly, the disk cache does not fall back
        Basis.for_module(model, 32, SEED, "lenet", cache="disk")


def test_corrupt_disk_cache_is_rewritten(tmp_path) -> None:
    path = tmp_path / "b.basis"
    model = build_model("lenet")
    good = Basis.for_module(model, 16, SEED, "lenet", cache="disk", cache_path=path).matrix()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:          # flip bytes in the first rows: a spot-checked region
        f.seek(basis_mod.core._CACHE_HEADER + 8)
        f.write(b"\x01\x02\x03\x04")
    with pytest.warns(UserWarning, match="corrupt"):
        again = Basis.for_module(model, 16, SEED, "lenet", cache="disk", cache_path=path)
    assert again.cache_source == "disk-written" and torch.equal(again.matrix(), good)


def test_cache_budget_and_bad_options() -> None:
    model = build_model("lenet")
    with pytest.raises(ValueError, match="basis_budget_mb"):
        Basis.for_module(model, 5000, SEED, "lenet", cache="memory", budget_mb=1)
    with pytest.warns(UserWarning, match="regenerated chunk by chunk at every step"):  # slow, so it says so
        assert not Basis.for_module(model, 100, SEED, "lenet", cache="auto", budget_mb=0.01).is_cached
    for kwargs in ({"cache": "ram"}, {"cache_dtype": "int8"}, {"engine": "cuda"}):
        with pytest.raises(ValueError, match="choose one of"):
            Basis.for_module(model, 10, SEED, "lenet", **kwargs)


def test_config_cache_dtype_reaches_the_basis() -> None:
    from pranc_fed.config import load_config
    from pranc_fed.data import load_dataset
    from pranc_fed.models import build_pranc
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mnist_lenet.yaml",
                      ["pranc.num_coeffs=20", "pranc.cache=memory", "pranc.cache_dtype=bfloat16"])
    model = build_pranc(cfg, load_dataset("mnist"), torch.device("cpu"))
    assert model.basis.cache_dtype == torch.bfloat16 and model.basis._cached[0].dtype == torch.bfloat16


# ------------------------------------------------------------ Triton engine, interpreted on the CPU

# Triton decides at import time whether its kernels (and tl.sum) are interpreted, so the check runs
# in a fresh interpreter with TRITON_INTERPRET=1 set before anything imports triton.
TRITON_CHECK = """
import sys, torch
from torch import nn
from pranc_fed.basis import Basis, expand_differentiable
from pranc_fed import triton_basis as tb
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 7), nn.ReLU(),
                      nn.Linear(7, 5), nn.BatchNorm1d(5))
seed = int(sys.argv[1])
for layout in ("global", "per_layer"):
    ref = Basis.for_module(model, 37, seed, "toy", layout=layout, cache="memory")
    gpu = Basis.for_module(model, 37, seed, "toy", layout=layout, cache="none", engine="triton")
    assert gpu.engine == "triton" and not gpu.is_cached
    exact = ref.matrix()
    for b in ref.blocks:      # kernel-generated values: bit-identical, unaligned edges included
        assert torch.equal(tb.values(gpu, b.row0, b.row1, b.col0, b.col1), exact[b.row0:b.row1, b.col0:b.col1])
    assert torch.equal(tb.values(gpu, 3, 61, 5, 36), Basis.for_module(model, 37, seed, "toy").matrix()[3:61, 5:36])
    a, g = torch.randn(37), torch.randn(ref.dim)
    torch.testing.assert_close(gpu.expand(a), ref.expand(a), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu.project(g), ref.project(g), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tb.project(gpu, g, splits=3), ref.project(g), rtol=1e-5, atol=1e-5)
    alpha = torch.zeros(37, requires_grad=True)
    expand_differentiable(gpu, alpha).square().sum().backward()
    torch.testing.assert_close(alpha.grad, ref.project(2 * ref.theta0), rtol=1e-5, atol=1e-5)
print("triton-ok")
"""


def test_triton_kernels_match_the_reference_interpreted() -> None:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", TRITON_CHECK, str(SEED)], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "triton-ok" in out.stdout, out.stderr[-3000:]


TRITON_COMPILE = """
import re, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pranc_fed import triton_basis as tb
common = {"row0": "i32", "row1": "i32", "col0": "i32", "col1": "i32", "seed_lo": "i64", "seed_hi": "i32"}
kernels = {
    tb._expand_kernel: {"alpha_ptr": "*fp32", "bounds_ptr": "*fp32", "theta_ptr": "*fp32", **common},
    tb._project_kernel: {"grad_ptr": "*fp32", "bounds_ptr": "*fp32", "partial_ptr": "*fp32", **common,
                         "groups_per_split": "i32"},
    tb._values_kernel: {"bounds_ptr": "*fp32", "out_ptr": "*fp32", **common},
}
for fn, sig in kernels.items():
    src = ASTSource(fn=fn, signature={**sig, "BG": "constexpr", "BJ": "constexpr"}, constexprs={"BG": tb._BG, "BJ": tb._BJ})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert "mul.hi.u32" in ptx and "mul.hi.s32" not in ptx, "Philox needs unsigned high products"
    if fn is tb._values_kernel:   # b * u must stay one rounded multiply: no contraction into an FMA
        assert "fma.rn.f32" not in ptx
print("compiled-ok")
"""


def test_triton_kernels_compile_for_an_h100_without_a_gpu() -> None:
    """The interpreter does not type-check like the compiler: compile the real kernels for sm_90 (no GPU needed)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", TRITON_COMPILE], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "compiled-ok" in out.stdout, out.stderr[-3000:]


def test_triton_engine_on_cpu_needs_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        Basis.for_module(toy(), 10, SEED, "toy", engine="triton")
