"""Benchmark what a user of a .pranc file pays: file size against the dense model, and memory and
time of full reconstruction against on-the-fly inference (pranc_fed/inference.py).

    .venv/bin/python simulations/bench_inference.py --out runs/bench_inference.json
    .venv/bin/python simulations/bench_inference.py --layouts per_layer --out /tmp/b.json   # ~1 min

1. Sizes: LeNet (K=5000) and ResNet20 (K=10,000), alpha float32 and float16. File bytes are what
   ``PrancModel.save`` writes (header + alpha + local state + sha256); the dense size is
   ``len(torch.save(model.state_dict()))`` of the same architecture. Nothing is trained: sizes do
   not depend on the values.
2. Inference: ResNet56, K=5000, one batch of --batch CIFAR-shaped inputs, each mode in a fresh
   subprocess, both with ``cache="none"`` and the same chunk budget (--chunk-mb, default 2 MB) (the basis is streamed,
   never held whole, so both modes generate exactly the same d x K basis values once per forward
   of the on-the-fly model and once per load of the full model). Reported per mode:
   * load / forward wall and CPU seconds (torch threads = --threads; CPU seconds are steadier on
     a shared machine);
   * peak RSS increase: after imports and a warm-up run of the same architecture, layout and mode
     with K=64 (so lazily loaded code and kernels do not count), VmHWM is reset
     (``/proc/self/clear_refs`` 5) and its increase over VmRSS at that point is reported. glibc
     is told to mmap blocks >= 1 MB and trim freed heap > 1 MB (MALLOC_MMAP_THRESHOLD_,
     MALLOC_TRIM_THRESHOLD_) so that RSS follows live memory instead of allocator high-water;
   * peak live tensor bytes during load and during forward (where --profile-memory allows; a
     separate run, as the profiler slows it): the running sum of every CPU allocation and free the
     torch profiler records from the start of the load (its "[memory]" events), i.e. the peak of
     bytes held by tensors, op temporaries and activations included; plus the tracemalloc peak,
     which covers numpy buffers (the CPU generator's temporaries) and Python objects;
   * the largest number of generated weight bytes alive at once (OnTheFlyModel.peak_live_bytes)
     against the d float32 weights the full model holds.
   The full and on-the-fly logits are compared (rtol 1e-5).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE_CASES = [("lenet", 5000), ("resnet20", 10_000)]
INFER_ARCH, INFER_K = "resnet56", 5000
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def _proc_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


# ------------------------------------------------------------------------------ sizes


def measure_sizes(tmp: Path) -> list[dict]:
    import torch

    from pranc_fed.models import build_model
    from pranc_fed.pranc import PrancModel
    rows = []
    for arch, k in SIZE_CASES:
        torch.manual_seed(0)
        dense = io.BytesIO()
        torch.save(build_model(arch).state_dict(), dense)
        model = PrancModel(build_model(arch), k, seed=0, arch=arch, layout="global", cache="none")
        with torch.no_grad():
            model.alpha.normal_(0, 0.01)
        local = sum(t.numel() * t.element_size() for t in model.local_state().values())
        for dtype in ("float32", "float16"):
            size = model.save(tmp / f"{arch}-{dtype}.pranc", dtype, {"num_classes": 10}, None)
            alpha = k * (4 if dtype == "float32" else 2)
            rows.append({"arch": arch, "num_coeffs": k, "alpha_dtype": dtype, "file_bytes": size,
                         "alpha_bytes": alpha, "local_bytes": local, "header_and_checksum_bytes": size - alpha - local,
                         "dense_state_dict_bytes": dense.tell(), "dense_over_file": dense.tell() / size})
    return rows


# -------------------------------------------------------------------------- inference


def worker(args: argparse.Namespace) -> None:
    """One mode in this (fresh) process; prints a JSON line."""
    import torch

    from pranc_fed.inference import load_model
    from pranc_fed.pranc import read_pranc_file
    torch.set_num_threads(args.threads)
    read_pranc_file(args.model)
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    on_the_fly = args.worker == "on-the-fly"
    # Warm-up: the same architecture, layout and mode with K=64, so that lazily loaded code, oneDNN
    # kernels and allocator pools are in place before the baseline and do not count as the model's.
    warm = load_model(args.warmup, on_the_fly=on_the_fly, budget_mb=args.chunk_mb, chunk_mb=args.chunk_mb,
                      cache="none")
    with torch.inference_mode():
        warm(x)
    del warm
    gc.collect()

    def run():
        from torch.profiler import record_function
        t0, c0 = time.perf_counter(), time.process_time()
        with record_function("bench-load"):
            net = load_model(args.model, on_the_fly=on_the_fly, budget_mb=args.chunk_mb, chunk_mb=args.chunk_mb,
                             cache="none")
        t1, c1 = time.perf_counter(), time.process_time()
        with torch.inference_mode(), record_function("bench-forward"):
            logits = net(x)
        t2, c2 = time.perf_counter(), time.process_time()
        return net, logits, {"load_wall_s": t1 - t0, "load_cpu_s": c1 - c0, "forward_wall_s": t2 - t1,
                             "forward_cpu_s": c2 - c1}

    result = {"mode": args.worker, "batch": args.batch, "threads": args.threads}
    if args.profile:
        import tracemalloc

        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            tracemalloc.start()  # stopped before the profiler builds its (Python) event list
            net, logits, _ = run()
            del net, logits
            result["peak_numpy_python_bytes"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        events = prof.profiler.kineto_results.events()
        phases = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("bench-")}
        live, peaks = 0, {"bench-load": 0, "bench-forward": 0}
        for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
            live += e.nbytes()  # + allocation, - free (CPU allocations made while profiling)
            for name, (start, end) in phases.items():
                if start <= e.start_ns() <= end:
                    peaks[name] = max(peaks[name], live)
        result |= {"peak_tensor_bytes_load": peaks["bench-load"], "peak_tensor_bytes_forward": peaks["bench-forward"]}
    else:
        gc_baseline = _proc_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        net, logits, times = run()
        result |= times | {"peak_rss_increase_bytes": (_proc_kb("VmHWM") - gc_baseline) * 1024}
        result["weights_bytes_held"] = (net.peak_live_bytes if on_the_fly else
                                        sum(p.numel() * p.element_size() for p in net.parameters()))
        torch.save(logits, args.logits)
    print(json.dumps(result))


def run_worker(mode: str, model: Path, logits: Path, args: argparse.Namespace, profile: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--model", str(model), "--logits", str(logits),
           "--warmup", str(model.with_suffix(".warmup.pranc")),
           "--batch", str(args.batch), "--threads", str(args.threads), "--chunk-mb", str(args.chunk_mb)]
    if profile:
        cmd.append("--profile")
    env = os.environ | MALLOC_ENV | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_inference(tmp: Path, args: argparse.Namespace) -> list[dict]:
    import torch

    from pranc_fed.models import build_model
    from pranc_fed.pranc import PrancModel
    rows = []
    for layout in args.layouts:
        torch.manual_seed(0)
        model = PrancModel(build_model(args.arch), INFER_K, seed=0, arch=args.arch, layout=layout, cache="none")
        with torch.no_grad():
            model.alpha.normal_(0, 0.01)
        path = tmp / f"{args.arch}-{layout}.pranc"
        model.save(path, model_args={"num_classes": 10})
        PrancModel(build_model(args.arch), 64, seed=1, arch=args.arch, layout=layout, cache="none").save(
            path.with_suffix(".warmup.pranc"), model_args={"num_classes": 10})
        elements = model.basis.nonzeros
        del model
        profile = args.profile_memory == "always" or (args.profile_memory == "auto" and elements <= 1e9)
        logits = {}
        for mode in ("full", "on-the-fly"):
            print(f"  {args.arch} {layout} {mode} ...", file=sys.stderr, flush=True)
            row = {"arch": args.arch, "num_coeffs": INFER_K, "layout": layout, "basis_values": elements,
                   "chunk_mb": args.chunk_mb, "cache": "none"}
            row |= run_worker(mode, path, tmp / f"{layout}-{mode}.pt", args, profile=False)
            if profile:
                peaks = run_worker(mode, path, tmp / "unused.pt", args, True)
                row |= {k: v for k, v in peaks.items() if k.startswith(("peak_tensor_bytes", "peak_numpy"))}
            logits[mode] = torch.load(tmp / f"{layout}-{mode}.pt")
            rows.append(row)
        same = torch.allclose(logits["on-the-fly"], logits["full"], rtol=1e-5, atol=0)
        diff = (logits["on-the-fly"] - logits["full"]).abs().max().item()
        for row in rows[-2:]:
            row |= {"logits_allclose_rtol_1e-5": same, "logits_max_abs_diff": diff}
    return rows


# ------------------------------------------------------------------------------- main


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MB"


def print_tables(result: dict) -> None:
    print("\nFile size vs dense state_dict (torch.save)")
    print(f"{'model':<10} {'K':>7} {'alpha':>8} {'file bytes':>11} {'dense bytes':>12} {'dense/file':>11}")
    for r in result["sizes"]:
        print(f"{r['arch']:<10} {r['num_coeffs']:>7,} {r['alpha_dtype']:>8} {r['file_bytes']:>11,} "
              f"{r['dense_state_dict_bytes']:>12,} {r['dense_over_file']:>10.1f}x")
    if not result["inference"]:
        return
    print(f"\nInference, {result['args']['arch']} K={INFER_K}, batch {result['args']['batch']}, cache none, "
          f"chunk {result['args']['chunk_mb']} MB, {result['args']['threads']} thread(s)")
    print(f"{'layout':<10} {'mode':<11} {'load s (cpu)':>15} {'forward s (cpu)':>17} {'peak RSS +':>11} "
          f"{'tensors load':>13} {'tensors fwd':>12} {'numpy+py':>10} {'weights held':>13}")
    for r in result["inference"]:
        load, fwd, npy = (_mb(r[k]) if k in r else "-" for k in
                          ("peak_tensor_bytes_load", "peak_tensor_bytes_forward", "peak_numpy_python_bytes"))
        print(f"{r['layout']:<10} {r['mode']:<11} {r['load_wall_s']:>7.2f} ({r['load_cpu_s']:>5.2f}) "
              f"{r['forward_wall_s']:>8.2f} ({r['forward_cpu_s']:>6.2f}) {_mb(r['peak_rss_increase_bytes']):>11} "
              f"{load:>13} {fwd:>12} {npy:>10} {_mb(r['weights_bytes_held']):>13}")
    print("(s: wall seconds, CPU seconds in brackets; peak RSS +: increase of the process' peak RSS over its RSS "
          "before the load, after a warm-up with K=64; tensors: peak live bytes of torch CPU tensors during "
          "load / forward, from the profiler's allocation events; numpy+py: tracemalloc peak (numpy buffers "
          "such as the generator's temporaries, and Python objects); weights held: float32 weight bytes alive "
          "at most at once)")
    for r in result["inference"][::2]:
        print(f"{r['layout']}: on-the-fly logits == full (rtol 1e-5): {r['logits_allclose_rtol_1e-5']} "
              f"(max abs diff {r['logits_max_abs_diff']:.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--arch", default=INFER_ARCH, help="model of the inference part (resnet56; resnet20 is faster)")
    parser.add_argument("--layouts", nargs="*", default=["per_layer", "global"],
                        help="ResNet56 basis layouts to time (global generates 4.2e9 values per pass: minutes)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-mb", type=float, default=2.0,
                        help="basis chunk budget of both modes (load_model budget_mb / chunk_mb)")
    parser.add_argument("--profile-memory", choices=("auto", "always", "never"), default="auto",
                        help="profiler-measured peak tensor bytes (auto: when the basis has <= 1e9 values)")
    parser.add_argument("--worker", choices=("full", "on-the-fly"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--logits", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    import torch
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"args": {k: v for k, v in vars(args).items() if k in ("arch", "layouts", "batch", "threads", "chunk_mb")},
                  "torch": torch.__version__, "sizes": measure_sizes(Path(tmp)),
                  "inference": measure_inference(Path(tmp), args)}
    print_tables(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
