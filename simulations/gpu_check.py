"""GPU check: run whenever a GPU is lent (`simulations/gpu_check.sh`, under 5 minutes on one GPU).

Writes OUT/gpu_check.json (default runs/gpu_check) with:
  gpu                   the card's name (torch.cuda.get_device_name)
  bit_identical_ARCH    for LeNet K=5000 and ResNet20 K=10000: basis tiles generated on the GPU (the
                        Triton kernel, and the torch engine on CUDA) against the CPU reference, at random
                        places and at the last rows and columns: the number of differing values (must be 0)
  engines_ARCH          Triton (B generated inside the kernels) against the materialised-fp32 approach:
                        expand, project and training-step times and peak GPU memory (bench.gpu_bench),
                        and their ratio
  simulation            a 2-round Flower simulation with 4 clients sharing the GPU at 0.25 each: its
                        status, final accuracy and wall time
  seconds               each section's wall time
A section that fails records its error and traceback, and the others still run.
Without a CUDA device it writes {"gpu": null, "reason": ...} and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHECKS = {"lenet": 5000, "resnet20": 10000}


def tiles(dim: int, k: int, gen: torch.Generator) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1): random tiles, plus the last rows and columns of d and K."""
    out = [(dim - 37, dim, k - 29, k), (0, 64, 0, 64), (dim - 5, dim, 0, k)]
    for _ in range(6):
        r0 = int(torch.randint(0, dim - 300, (1,), generator=gen))
        c0 = int(torch.randint(0, k - 100, (1,), generator=gen))
        out.append((r0, r0 + 300, c0, c0 + 100))
    return out


def bit_identity(arch: str, k: int) -> dict:
    from pranc_fed import triton_basis
    from pranc_fed.basis import Basis, covered_segments
    from pranc_fed.models import build_model
    segs = covered_segments(build_model(arch))
    cpu = Basis(segs, k, 12345, arch, cache="none")
    gpu_triton = Basis(segs, k, 12345, arch, cache="none", device="cuda", engine="triton")
    gpu_torch = Basis(segs, k, 12345, arch, cache="none", device="cuda", engine="torch")
    differing = {"triton": 0, "torch_cuda": 0, "theta0": 0}
    checked = 0
    for r0, r1, c0, c1 in tiles(cpu.dim, k, torch.Generator().manual_seed(0)):
        want = cpu._values(0, r0, r1, c0, c1)
        differing["triton"] += int((triton_basis.values(gpu_triton, r0, r1, c0, c1).cpu() != want).sum())
        differing["torch_cuda"] += int((gpu_torch._values(0, r0, r1, c0, c1).cpu() != want).sum())
        checked += want.numel()
    differing["theta0"] = int((gpu_triton.theta0.cpu() != cpu.theta0).sum())
    return {"values_checked": checked, "differing": differing, "identical": not any(differing.values())}


def simulation(out: Path) -> dict:
    from pranc_fed.config import load_config
    from pranc_fed.runner import simulate
    overrides = ["federation.num_clients=4", "federation.rounds=2", "federation.num_gpus_per_client=0.25",
                 "train.device=cuda", "data.train_subset=8000", "data.test_subset=2000"]
    started = time.perf_counter()
    ok = simulate(ROOT / "configs" / "mnist_lenet.yaml", overrides,
                  load_config(ROOT / "configs" / "mnist_lenet.yaml", overrides), out / "simulation")
    summary_file = out / "simulation" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return {"completed": ok, "final_test_accuracy": summary.get("final_test_accuracy"),
            "replies": summary.get("replies"), "wall_seconds": time.perf_counter() - started,
            "overrides": overrides}


def guarded(report: dict, key: str, out: Path, fn, *args):
    """Run one section; a failure is recorded (type, message, traceback tail) and the others still run."""
    started = time.perf_counter()
    try:
        report[key] = fn(*args)
    except Exception as e:     # noqa: BLE001 - a check that breaks is itself a finding
        report[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"{key}: FAILED {report[key]['error']}", flush=True)
    report.setdefault("seconds", {})[key] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    return report[key]


def engines(arch: str, k: int, repeats: int) -> dict:
    from pranc_fed import bench
    from pranc_fed.models import MODELS
    batch_size = bench.SETTINGS[arch][1]
    batch = (torch.randn(batch_size, *MODELS[arch].input_shape), torch.randint(0, 10, (batch_size,)))
    result = bench.gpu_bench(arch, k, batch, repeats, print)
    if all("step_s" in result.get(v, {}) for v in ("triton", "official")):
        result["step_ratio_triton_over_official"] = (result["triton"]["step_s"]["min_s"]
                                                     / result["official"]["step_s"]["min_s"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": None}
    if not torch.cuda.is_available():
        report["reason"] = "no CUDA device: run this where a GPU is lent"
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        print(f"gpu_check: {report['reason']}", file=sys.stderr)
        return 2
    report["gpu"] = torch.cuda.get_device_name()
    report["torch"] = torch.__version__
    print(f"gpu_check on {report['gpu']}", flush=True)
    for arch, k in CHECKS.items():
        print(f"{arch} K={k}: {guarded(report, f'bit_identical_{arch}', args.out, bit_identity, arch, k)}", flush=True)
        guarded(report, f"engines_{arch}", args.out, engines, arch, k, args.repeats)
    sim = guarded(report, "simulation", args.out, simulation, args.out)
    print(f"simulation: {sim.get('completed')}, accuracy {sim.get('final_test_accuracy')}", flush=True)
    print(f"wrote {args.out / 'gpu_check.json'}")
    ok = all(report[f"bit_identical_{a}"].get("identical") for a in CHECKS) and sim.get("completed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
