"""What pairwise-mask secure aggregation (pranc_fed/secagg.py) costs per round: PRANC's alpha at
K = 5,000 and 50,000 against dense LeNet and ResNet20 updates. For n clients it times one client's
work (quantise, n - 1 key agreements and masks) and the server's (sum and decode), checks that the
masks cancel, and counts the bytes: the masked uint32 vector, and the 32-byte public keys every
client sends and receives, against the unmasked reply in float32 and in the int8/int4 codecs.

    .venv/bin/python simulations/secagg_cost.py [--clients 10] [--repeats 3] [--out docs/results/secagg/secagg_cost.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pranc_fed.models import build_model
from pranc_fed.secagg import PUBLIC_KEY_BYTES, dequantize_sum, key_pair, masked_input, quantize, unmask_sum


def dense_size(arch: str) -> int:
    return sum(p.numel() for p in build_model(arch).parameters())


def measure(name: str, size: int, clients: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1, 1, size).astype(np.float32) for _ in range(clients)]
    keys = [key_pair() for _ in range(clients)]
    publics = {i: public for i, (_, public) in enumerate(keys)}
    client_s, server_s, plain_s = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        codes = quantize(updates[0], 1.0, clients)
        masked0 = masked_input(codes, 0, keys[0][0], publics)
        client_s.append(time.perf_counter() - t)
        masked = [masked0] + [masked_input(quantize(u, 1.0, clients), i, keys[i][0], publics)
                              for i, u in enumerate(updates) if i]
        t = time.perf_counter()
        total = dequantize_sum(unmask_sum(masked), 1.0, clients)
        server_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        np.sum(updates, axis=0)
        plain_s.append(time.perf_counter() - t)
    error = float(np.max(np.abs(total - np.sum(updates, axis=0, dtype=np.float64))))
    assert error < clients * 2.0 / ((2**32 - 1) // clients) + clients * 1.2e-7, f"masks did not cancel (max error {error})"
    return {"update": name, "values": size, "clients": clients,
            "client_mask_ms": 1e3 * min(client_s), "server_unmask_ms": 1e3 * min(server_s),
            "server_plain_sum_ms": 1e3 * min(plain_s),
            "masked_up_bytes": 4 * size, "float32_up_bytes": 4 * size, "int8_up_bytes": size + 4 * -(-size // 256),
            "int4_up_bytes": -(-size // 2) + 4 * -(-size // 256),
            "key_bytes_per_client": PUBLIC_KEY_BYTES + clients * PUBLIC_KEY_BYTES,  # its key up, every key down
            "max_abs_error_of_sum": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/results/secagg/secagg_cost.json"))
    args = parser.parse_args()
    cases = [("PRANC alpha, K=5,000", 5000), ("PRANC alpha, K=50,000", 50_000),
             ("dense LeNet", dense_size("lenet")), ("dense ResNet20", dense_size("resnet20"))]
    rows = [measure(name, size, args.clients, args.repeats) for name, size in cases]
    print(f"{'update':24} {'values':>9} {'client ms':>10} {'server ms':>10} {'plain sum ms':>12} "
          f"{'masked B':>10} {'int8 B':>9} {'keys B':>7}")
    for r in rows:
        print(f"{r['update']:24} {r['values']:>9,} {r['client_mask_ms']:>10.2f} {r['server_unmask_ms']:>10.2f} "
              f"{r['server_plain_sum_ms']:>12.2f} {r['masked_up_bytes']:>10,} {r['int8_up_bytes']:>9,} "
              f"{r['key_bytes_per_client']:>7,}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clients": args.clients, "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
