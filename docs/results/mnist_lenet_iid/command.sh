#!/bin/sh
# Produces runs/compare_mnist_lenet_iid/{comparison.csv,comparison.md,accuracy_vs_bytes.png}
# (copied here). Resumable: rerunning skips finished methods. K=10000 was not run (time budget):
# add it to compare_num_coeffs and rerun to run only that one.
exec .venv/bin/pranc-fed compare configs/mnist_lenet_long.yaml \
  --set federation.rounds=10 \
  --set federation.local_steps=20 \
  --set 'methods.compare=[fedavg, fedavg_fp16, topk, qsgd, signsgd, pranc]' \
  --set 'methods.compare_num_coeffs=[1000, 5000]' \
  --out runs/compare_mnist_lenet_iid
