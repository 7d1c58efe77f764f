"""Benchmark of the basis engine against the official PRANC approach (materialised fp32 B, torch.matmul).

    pranc-fed bench --out runs/bench                          # lenet, resnet20, resnet56 (about 10 min)
    pranc-fed bench --models lenet --out /tmp/bench           # about 2 min

For LeNet/MNIST (K=5000, batch 256), ResNet20 (K=10000, batch 128) and ResNet56 (K=5000,
batch 128), in one process, with the official approach run next to ours as the baseline:

* machine: memory-copy bandwidth (torch copy_ of 512 MB: bytes read + written per second) and
  reduction bandwidth (torch.sum over a 512 MB float32 array).
* generation throughput (basis values/s): this engine (numba-compiled Philox, all torch threads), the
  previous numpy engine (its fallback), the torch
  int64 reference of the same spec, and torch's own RNG filling a tensor (what the official code
  uses: fast, but its bits differ between CPU and CUDA and across GPU models).
* per variant of B, expand (theta0 + B alpha) and project (B^T g), each with the bytes of B it
  reads, that rate, and the rate of torch.sum over the very same bytes (the cache tensor viewed as
  float32) measured in the same loop: ``frac_of_sum`` = sum time / product time.
* one training step (forward, backward, Adam) of PRANC per variant and of the dense model, same
  batch of random inputs.
* memory: bytes of B each variant holds, and the process' peak RSS increase during its steps.
* sharing: N processes open the LeNet disk cache at once; each reports the resident (Rss) and
  proportional (Pss) size of its mapping of the cache file: one copy means Pss ~ size / N.

Variants: ``official`` (fp32 B, torch.matmul + autograd), ``fp32`` / ``fp16`` / ``bf16`` (our
memory cache; fp32 products are one BLAS call, bf16/fp16 ones convert cache-sized tiles on
torch.get_num_threads() worker threads), ``disk`` (fp32, memory-mapped file), ``per_layer``
(fp32 cache, block-diagonal layout at the same K), ``none`` (no cache: every product regenerates
B), and on a GPU ``triton`` (B generated inside the kernels) against ``official`` on the GPU.
Variants whose B fit --max-gb together form a group and are timed in the same rounds: each round
runs every variant's expand, project, torch.sum over the same bytes, and step, plus one dense
step, so that a shared machine's load hits them alike. ``x_dense`` is the median over rounds of
(step / dense step of that round); min/min compares best times. Variants that do not fit --max-gb
alone are skipped and say so.

    pranc-fed bench --accuracy configs/mnist_lenet.yaml --set train.epochs=1

trains the config once per cache dtype (float32, float16, bfloat16) instead, and reports test
accuracy with the basis it trained on and with the exact fp32 basis.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from . import basis as basis_mod
from .basis import Basis
from .models import MODELS, build_model
from .pranc import PrancModel

SETTINGS = {  # arch: (K, batch)
    "lenet": (5000, 256),
    "resnet20": (10000, 128),
    "resnet56": (5000, 128),
}
DEFAULT_VARIANTS = {
    "lenet": ["official", "fp32", "disk", "per_layer", "fp16", "bf16", "none"],
    "resnet20": ["official", "fp32", "per_layer", "fp16"],
    "resnet56": ["official", "per_layer", "fp16"],
}
SEED = 0


# ------------------------------------------------------------------------------------ helpers


def proc_kb(field: str, path: str = "/proc/self/status") -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def mem_available_gb() -> float:
    return proc_kb("MemAvailable", "/proc/meminfo") / 2 ** 20


def interleaved(fns: dict, repeats: int) -> dict:
    """Run every fn once (warm-up), then round-robin `repeats` times; median, min and all seconds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": ts} for name, ts in times.items()}


def machine_info() -> dict:
    n = 128 * 2 ** 20                                     # 512 MB of float32
    src, dst = torch.ones(n), torch.empty(n)
    t = interleaved({"copy": lambda: dst.copy_(src), "sum": lambda: src.sum()}, 5)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_avg_at_start": os.getloadavg()[0],
            "mem_total_gb": proc_kb("MemTotal", "/proc/meminfo") / 2 ** 20,
            "copy_bandwidth_gbs": 2 * n * 4 / t["copy"]["min_s"] / 1e9,
            "copy_bandwidth_gbs_median": 2 * n * 4 / t["copy"]["median_s"] / 1e9,
            "sum_bandwidth_gbs": n * 4 / t["sum"]["min_s"] / 1e9,
            "sum_bandwidth_gbs_median": n * 4 / t["sum"]["median_s"] / 1e9}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def generation_rates(basis: Basis) -> dict:
    """Values/s: this engine (compiled), numpy's engine (its fallback and predecessor), the torch int64
    reference, and torch's RNG (the official approach)."""
    k = basis.num_coeffs
    rows = max(4, (8 * 2 ** 20) // k) // 4 * 4            # ~8M values
    small = max(4, rows // 16) // 4 * 4
    scale, scratch = basis.bounds[:rows].numpy().astype("float64") * 2.0 ** -24, torch.empty(rows, k).numpy()
    t = interleaved({
        # both engines fill the same warm buffer: fresh memory's page faults would cost more than generating
        "engine": lambda: basis_mod._fill_values(basis.seed, 0, 0, rows, 0, k, scale, scratch),
        "numpy_engine": lambda: basis_mod._fill_values_numpy(basis.seed, 0, 0, rows, 0, k, scale, scratch),
        "torch_reference": lambda: basis_mod._unit_block_torch(basis.seed, 0, small, 0, k, "cpu"),
        "torch_rng": lambda: torch.empty(rows * k).uniform_(-1, 1),
    }, 2)
    out = {"engine_values_per_s": rows * k / t["engine"]["min_s"],
           "numpy_engine_values_per_s": rows * k / t["numpy_engine"]["min_s"],
           "torch_reference_values_per_s": small * k / t["torch_reference"]["min_s"],
           "official_torch_rng_values_per_s": rows * k / t["torch_rng"]["min_s"]}
    if torch.cuda.is_available():
        from . import triton_basis
        gpu = Basis(basis.segments, k, basis.seed, basis.arch, cache="none", device="cuda", engine="triton")
        n_rows = min(basis.dim, (64 * 2 ** 20) // k) // 4 * 4
        t = interleaved({"triton": lambda: (triton_basis.values(gpu, 0, n_rows, 0, k), torch.cuda.synchronize()),
                         "rng": lambda: (torch.empty(n_rows * k, device="cuda").uniform_(), torch.cuda.synchronize())}, 3)
        out["gpu_triton_values_per_s"] = n_rows * k / t["triton"]["min_s"]
        out["gpu_torch_rng_values_per_s"] = n_rows * k / t["rng"]["min_s"]
    return out


class OfficialPranc(nn.Module):
    """The official approach: B materialised in fp32, theta = theta0 + B @ alpha by torch.matmul."""

    def __init__(self, module: nn.Module, matrix: torch.Tensor, theta0: torch.Tensor, segments):
        super().__init__()
        self.module, self.matrix, self.theta0, self.segments = module, matrix, theta0, segments
        for s in segments:
            module.get_parameter(s.name).requires_grad_(False)
        self.alpha = nn.Parameter(torch.zeros(matrix.shape[1], device=matrix.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta0 + torch.matmul(self.matrix, self.alpha)
        params = {s.name: theta[s.offset:s.offset + s.numel].view(s.shape) for s in self.segments}
        return functional_call(self.module, params, (x,), strict=False)


def make_step(model: nn.Module, params, batch: tuple[torch.Tensor, torch.Tensor]):
    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = batch
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
    return step


# --------------------------------------------------------------------------------- per model


def bench_model(arch: str, variants: list[str], repeats: int, max_gb: float, log) -> dict:
    """Variants that fit --max-gb together are built, then timed in the same interleaved rounds
    (each round: every variant's expand/project/step and one dense step), so they see the same load."""
    k, batch_size = SETTINGS[arch]
    torch.manual_seed(0)
    shape = MODELS[arch].input_shape
    batch = (torch.randn(batch_size, *shape), torch.randint(0, 10, (batch_size,)))
    base = Basis.for_module(build_model(arch), k, SEED, arch, cache="none")
    d = base.dim
    result = {"arch": arch, "num_coeffs": k, "batch": batch_size, "dim": d, "fp32_basis_gb": d * k * 4 / 1e9,
              "generation": generation_rates(base), "variants": {}, "skipped": {}, "groups": []}
    log(f"{arch}: d={d:,} K={k} batch={batch_size}; fp32 B = {d * k * 4 / 1e9:.2f} GB; generation "
        f"{result['generation']['engine_values_per_s'] / 1e6:.0f} M values/s "
        f"(torch reference {result['generation']['torch_reference_values_per_s'] / 1e6:.1f} M/s)")
    per_layer_nnz = sum((b.row1 - b.row0) * (b.col1 - b.col0)
                        for b in basis_mod.make_blocks(base.segments, k, "per_layer"))
    own_gb = {"official": 4 * d * k, "fp32": 4 * d * k, "disk": 4 * d * k, "fp16": 2 * d * k, "bf16": 2 * d * k,
              "per_layer": 4 * per_layer_nnz, "none": 0}
    own_gb = {v: b / 1e9 for v, b in own_gb.items()}

    def group_gb(group: list[str]) -> float:   # official and fp32 share one fp32 copy
        return sum(own_gb[v] for v in group) - (own_gb["fp32"] if {"official", "fp32"} <= set(group) else 0)

    order = [v for v in ["official", "fp32", "disk", "per_layer", "fp16", "bf16"] if v in variants]
    groups: list[list[str]] = []
    for v in order:
        if own_gb[v] > max_gb:
            result["skipped"][v] = f"needs {own_gb[v]:.1f} GB of B > --max-gb {max_gb:.1f}"
            log(f"  {v}: skipped ({result['skipped'][v]})")
        elif groups and group_gb(groups[-1] + [v]) <= max_gb:
            groups[-1].append(v)
        else:
            groups.append([v])
    if "none" in variants:
        groups.append(["none"])
    dense = build_model(arch)
    dense_step = make_step(dense, dense.parameters(), batch)
    tmp_cache = tempfile.TemporaryDirectory(prefix="pranc-bench-")
    disk_path = Path(tmp_cache.name) / f"{arch}.basis"
    for group in groups:
        result["groups"].append(group)
        built = {}
        fp32 = None  # official and fp32 share one cached fp32 basis
        for variant in group:
            started = time.perf_counter()
            if variant in ("official", "fp32"):
                if fp32 is None:
                    fp32 = Basis(base.segments, k, SEED, arch, cache="memory", budget_mb=1e9)
                basis = fp32
            elif variant in ("fp16", "bf16"):
                name = {"fp16": "float16", "bf16": "bfloat16"}[variant]
                basis = Basis(base.segments, k, SEED, arch, cache="memory", budget_mb=1e9, cache_dtype=name)
            elif variant == "per_layer":
                basis = Basis(base.segments, k, SEED, arch, layout="per_layer", cache="memory", budget_mb=1e9)
            elif variant == "disk":
                basis = Basis(base.segments, k, SEED, arch, cache="disk", budget_mb=1e9, cache_path=disk_path)
                result["disk_cache_write_s"] = time.perf_counter() - started
            else:
                basis = Basis(base.segments, k, SEED, arch, cache="none", budget_mb=256)
            build_s = time.perf_counter() - started
            module = build_model(arch)
            cached = basis.cached_blocks
            flat = [t.reshape(-1)[:t.numel() * t.element_size() // 4 * 4 // t.element_size()].view(torch.float32)
                    for t in cached]
            if variant == "official":
                model = OfficialPranc(module, cached[0], basis.theta0, base.segments)
                params = [model.alpha] + [p for p in module.parameters() if p.requires_grad]
                expand = (lambda m: lambda a: m.theta0 + torch.matmul(m.matrix, a))(model)
                project = (lambda m: lambda g: torch.matmul(g, m.matrix))(model)
                stored = model.matrix.numel() * 4
            else:
                model = PrancModel(module, k, seed=SEED, arch=arch, cache="none")
                model.basis = basis
                params = [model.alpha] + model.local_parameters()
                expand, project = basis.expand, basis.project
                stored = basis.cache_bytes
            built[variant] = {"basis": basis, "expand": expand, "project": project, "flat": flat,
                              "step": make_step(model, params, batch), "build_s": build_s, "stored": stored,
                              "touched": stored or 4 * basis.nonzeros}
        alpha, grad = torch.randn(k) * 0.01, torch.randn(d)
        rounds = 1 if group == ["none"] else repeats
        fns = {}
        for v, b in built.items():
            fns[f"{v}/expand"] = (lambda f: lambda: f(alpha))(b["expand"])
            fns[f"{v}/project"] = (lambda f: lambda: f(grad))(b["project"])
            if b["flat"]:
                fns[f"{v}/sum"] = (lambda fl: lambda: [x.sum() for x in fl])(b["flat"])
        t = interleaved(fns, rounds)
        steps = {v: b["step"] for v, b in built.items()} | {"dense": dense_step}
        reset_peak_rss()
        st = interleaved(steps, rounds if group == ["none"] else 2 * repeats + 1)
        for v, b in built.items():
            touched = b["touched"]
            row = {
                "group": group, "build_s": b["build_s"], "basis_bytes": b["stored"], "bytes_per_pass": touched,
                "expand_s": t[f"{v}/expand"], "project_s": t[f"{v}/project"],
                "expand_gbs": touched / t[f"{v}/expand"]["min_s"] / 1e9,
                "project_gbs": touched / t[f"{v}/project"]["min_s"] / 1e9,
                "step_s": st[v], "dense_step_s": st["dense"],
                # a round times every variant's step and one dense step back to back: the ratio
                # within a round is the least disturbed by a shared machine; its median is the headline
                "x_dense_median": statistics.median(p / q for p, q in zip(st[v]["all_s"], st["dense"]["all_s"])),
                "x_dense_min": st[v]["min_s"] / st["dense"]["min_s"],
            }
            if f"{v}/sum" in t:
                row["sum_same_bytes_s"] = t[f"{v}/sum"]
                row["sum_gbs"] = touched / t[f"{v}/sum"]["min_s"] / 1e9
                row["expand_frac_of_sum"] = t[f"{v}/sum"]["min_s"] / t[f"{v}/expand"]["min_s"]
                row["project_frac_of_sum"] = t[f"{v}/sum"]["min_s"] / t[f"{v}/project"]["min_s"]
            if v == "disk":
                row["cache_source"] = b["basis"].cache_source
            result["variants"][v] = row
            log(f"  {v:9s} B {b['stored'] / 1e9:6.2f} GB  expand {row['expand_s']['min_s'] * 1e3:8.1f} ms "
                f"project {row['project_s']['min_s'] * 1e3:8.1f} ms ({row['expand_gbs']:.1f}/{row['project_gbs']:.1f} GB/s"
                + (f", {row['expand_frac_of_sum']:.0%}/{row['project_frac_of_sum']:.0%} of sum" if "sum_gbs" in row
                   else "") + f")  step {st[v]['min_s'] * 1e3:8.1f} ms  {row['x_dense_median']:.2f}x dense "
                f"(dense {st['dense']['min_s'] * 1e3:.1f} ms; min/min {row['x_dense_min']:.2f}x)")
        result.setdefault("group_peak_rss_increase_mb", []).append((proc_kb("VmHWM") - proc_kb("VmRSS")) / 1024)
        del built, fns, t, steps, st, fp32
        gc.collect()                       # drop this process' mapping of the disk cache before the sharing test
    if "disk" in result["variants"]:
        result["sharing"] = sharing_test(arch, k, disk_path, log)
    tmp_cache.cleanup()
    if torch.cuda.is_available():
        result["gpu"] = gpu_bench(arch, k, batch, repeats, log)
    return result



# ------------------------------------------------------------------------------------ sharing

_CHILD = textwrap.dedent("""
    import json, os, sys, time, torch
    from pathlib import Path
    from pranc_fed.basis import Basis
    from pranc_fed.models import build_model
    arch, k, path, n, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
    torch.set_num_threads(1)
    b = Basis.for_module(build_model(arch), k, 0, arch, cache="disk", budget_mb=1e9, cache_path=path)
    start = time.perf_counter()
    for _ in range(2):
        b.project(b.expand(torch.zeros(k)))
    work = time.perf_counter() - start
    (sync / f"ready{os.getpid()}").touch()
    while len(list(sync.glob("ready*"))) < n:
        time.sleep(0.05)
    rss = pss = 0
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif inside and line.startswith("Pss:"):
                pss += int(line.split()[1])
    print(json.dumps({"source": b.cache_source, "map_rss_kb": rss, "map_pss_kb": pss,
                      "private_anon_rss_kb": int([l for l in open("/proc/self/status") if l.startswith("RssAnon")][0].split()[1]),
                      "expand_project_x2_s": work}), flush=True)
    (sync / f"done{os.getpid()}").touch()
    while len(list(sync.glob("done*"))) < n:
        time.sleep(0.05)
""")


def sharing_test(arch: str, k: int, path: Path, log, n: int = 3) -> dict:
    """N processes map the same cache file at once: resident and proportional size of each mapping."""
    with tempfile.TemporaryDirectory() as sync:
        procs = [subprocess.Popen([sys.executable, "-c", _CHILD, arch, str(k), str(path), str(n), sync],
                                  stdout=subprocess.PIPE, text=True) for _ in range(n)]
        reports = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    size_mb = path.stat().st_size / 2 ** 20
    out = {"processes": n, "file_mb": size_mb, "children": reports,
           "sum_pss_mb": sum(r["map_pss_kb"] for r in reports) / 1024,
           "sum_rss_mb": sum(r["map_rss_kb"] for r in reports) / 1024}
    log(f"  sharing: {n} processes map a {size_mb:.0f} MB cache: each Rss "
        f"{[round(r['map_rss_kb'] / 1024) for r in reports]} MB, Pss {[round(r['map_pss_kb'] / 1024) for r in reports]} MB"
        f" (sum of Pss {out['sum_pss_mb']:.0f} MB = one copy), sources {[r['source'] for r in reports]}")
    return out


# ---------------------------------------------------------------------------------------- GPU


def gpu_bench(arch: str, k: int, batch, repeats: int, log) -> dict:
    """Triton (B generated in-kernel) against the materialised fp32 official approach on the GPU."""
    dev = torch.device("cuda")
    batch = tuple(t.to(dev) for t in batch)
    out = {"gpu": torch.cuda.get_device_name()}
    segs = basis_mod.covered_segments(build_model(arch))

    def sync(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return run

    for variant in ("triton", "official"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
        try:
            if variant == "triton":
                basis = Basis(segs, k, SEED, arch, cache="none", device=dev, engine="triton")
                model = PrancModel(build_model(arch).to(dev), k, seed=SEED, arch=arch, cache="none", device=dev)
                model.basis = basis
                params = [model.alpha] + model.local_parameters()
                expand, project = basis.expand, basis.project
            else:
                basis = Basis(segs, k, SEED, arch, cache="memory", budget_mb=1e9, device=dev)
                model = OfficialPranc(build_model(arch).to(dev), basis.cached_blocks[0], basis.theta0, segs)
                params = [model.alpha] + [p for p in model.module.parameters() if p.requires_grad]
                expand = (lambda m: lambda a: m.theta0 + torch.matmul(m.matrix, a))(model)
                project = (lambda m: lambda g: torch.matmul(g, m.matrix))(model)
        except torch.cuda.OutOfMemoryError as e:
            out[variant] = {"error": f"out of memory: {e}"}
            continue
        alpha, grad = torch.randn(k, device=dev) * 0.01, torch.randn(basis.dim, device=dev)
        t = interleaved({"expand": sync(lambda: expand(alpha)), "project": sync(lambda: project(grad))}, repeats)
        st = interleaved({"step": make_step(model, params, batch)}, repeats)
        out[variant] = {"expand_s": t["expand"], "project_s": t["project"], "step_s": st["step"],
                        "peak_mem_gb": (torch.cuda.max_memory_allocated() - base_mem) / 1e9}
        log(f"  GPU {variant}: expand {t['expand']['min_s'] * 1e3:.2f} ms project {t['project']['min_s'] * 1e3:.2f} ms "
            f"step {st['step']['min_s'] * 1e3:.2f} ms peak {out[variant]['peak_mem_gb']:.2f} GB ({out['gpu']})")
        del basis, model, params
    return out


# --------------------------------------------------------------------------------- accuracy


def precision_accuracy(out_dir: Path, config: str, overrides: list[str], dtypes: list[str], log=print) -> dict:
    """Train the config's PRANC model once per cache_dtype (same seed, batches and steps) and report
    test accuracy with the basis it trained on and with the exact fp32 basis, plus how far the
    rounded basis moves theta: ||theta_lowp - theta_exact|| / ||B alpha||."""
    from .config import load_config
    from .data import load_configured, make_loader, subset
    from .models import build_pranc
    from .training import evaluate, make_optimizer, test_loader, train_steps
    cfg = load_config(config, overrides)
    device = torch.device("cpu")
    bundle = load_configured(cfg.data)
    train = bundle.train if cfg.data.train_subset is None else subset(bundle.train, cfg.data.train_subset, cfg.seed)
    tests = test_loader(cfg, bundle)
    rows = {}
    for dtype_name in dtypes:
        started = time.perf_counter()
        cfg = load_config(config, [*overrides, f"pranc.cache_dtype={dtype_name}", "pranc.cache=memory"])
        model = build_pranc(cfg, bundle, device)
        optimizer = make_optimizer(model, cfg)
        history = []
        for epoch in range(1, cfg.train.epochs + 1):
            loader = make_loader(train, cfg.train.batch_size, shuffle=True, seed=cfg.seed + epoch)
            loss, _ = train_steps(model, loader, optimizer, device)
            history.append({"epoch": epoch, "train_loss": loss, "test_accuracy": evaluate(model, tests, device)[1]})
            log(f"  {dtype_name}: epoch {epoch} train loss {loss:.4f} test acc {history[-1]['test_accuracy']:.4f}")
        own = history[-1]["test_accuracy"]
        theta_own = model.basis.expand(model.alpha.detach())
        model.basis = exact = Basis(model.basis.segments, model.num_coeffs, model.basis.seed, model.arch,
                                    layout=model.basis.layout, cache="none")
        theta_exact = exact.expand(model.alpha.detach())
        moved = ((theta_own - theta_exact).norm() / (theta_exact - exact.theta0).norm()).item()
        rows[dtype_name] = {"test_accuracy_own_basis": own, "test_accuracy_exact_basis": evaluate(model, tests, device)[1],
                            "theta_rel_diff": moved, "history": history, "seconds": time.perf_counter() - started}
        log(f"{dtype_name}: accuracy {own:.4f} with its basis, {rows[dtype_name]['test_accuracy_exact_basis']:.4f} "
            f"with the exact fp32 basis; ||dtheta||/||B alpha|| = {moved:.2e}")
        del model, exact, optimizer
    result = {"config": config, "overrides": overrides, "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
              "num_coeffs": cfg.pranc.num_coeffs, "layout": cfg.pranc.layout, "results": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "precision_accuracy.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {out_dir / 'precision_accuracy.json'}")
    return result


# ------------------------------------------------------------------------------------- report


def table(results: dict) -> str:
    lines = [f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch threads "
             f"{results['machine']['torch_threads']}, copy {results['machine']['copy_bandwidth_gbs']:.1f} GB/s, "
             f"sum {results['machine']['sum_bandwidth_gbs']:.1f} GB/s (best of 5)", ""]
    head = (f"{'model':9s} {'variant':9s} {'B GB':>6s} {'expand ms':>10s} {'project ms':>10s} {'GB/s':>11s} "
            f"{'% of sum':>9s} {'step ms':>9s} {'dense ms':>9s} {'x dense':>8s} {'min/min':>8s}")
    lines += ["step ms and dense ms: best round; x dense: median over rounds of (PRANC step / dense step) "
              "timed back to back; min/min: best PRANC step / best dense step", "", head, "-" * len(head)]
    for m in results["models"]:
        for name, v in m["variants"].items():
            frac = (f"{v['expand_frac_of_sum']:.0%}/{v['project_frac_of_sum']:.0%}" if "expand_frac_of_sum" in v else "-")
            lines.append(f"{m['arch']:9s} {name:9s} {v['basis_bytes'] / 1e9:6.2f} {v['expand_s']['min_s'] * 1e3:10.1f} "
                         f"{v['project_s']['min_s'] * 1e3:10.1f} {v['expand_gbs']:5.1f}/{v['project_gbs']:<5.1f} "
                         f"{frac:>9s} {v['step_s']['min_s'] * 1e3:9.1f} {v['dense_step_s']['min_s'] * 1e3:9.1f} "
                         f"{v['x_dense_median']:7.2f}x {v['x_dense_min']:7.2f}x")
        for name, why in m["skipped"].items():
            lines.append(f"{m['arch']:9s} {name:9s} skipped: {why}")
        g = m["generation"]
        lines.append(f"{m['arch']:9s} generation: engine {g['engine_values_per_s'] / 1e6:.0f} M/s "
                     f"({g['engine_values_per_s'] / g['numpy_engine_values_per_s']:.1f}x numpy's engine at "
                     f"{g['numpy_engine_values_per_s'] / 1e6:.0f} M/s, "
                     f"{g['engine_values_per_s'] / g['official_torch_rng_values_per_s']:.1f}x torch's RNG (official) at "
                     f"{g['official_torch_rng_values_per_s'] / 1e6:.0f} M/s), torch reference "
                     f"{g['torch_reference_values_per_s'] / 1e6:.1f} M/s")
    return "\n".join(lines)


def run(out_dir: Path, models: list[str], repeats: int = 3, max_gb: float | None = None,
        variants: list[str] | None = None, log=print) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    if max_gb is None:
        max_gb = 0.6 * mem_available_gb()
    results = {"machine": machine_info(), "max_gb": max_gb, "repeats": repeats, "models": []}
    log(f"machine: copy {results['machine']['copy_bandwidth_gbs']:.1f} GB/s, sum "
        f"{results['machine']['sum_bandwidth_gbs']:.1f} GB/s, load {results['machine']['load_avg_at_start']:.1f}, "
        f"B limited to {max_gb:.1f} GB")
    for arch in models:
        chosen = variants or DEFAULT_VARIANTS[arch]
        results["models"].append(bench_model(arch, chosen, repeats, max_gb, log))
        (out_dir / "bench.json").write_text(json.dumps(results, indent=2))
    results["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    (out_dir / "bench.txt").write_text(text + "\n")
    log("\n" + text)
    log(f"\nwrote {out_dir / 'bench.json'}")
    return results
