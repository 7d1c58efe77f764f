#!/bin/sh
# Produces runs/cmp_mnist_iid/{comparison.csv,comparison.md,lr_search.csv,accuracy_vs_bytes.png}
# (copied here). Resumable: rerunning skips finished runs. All settings are in the config:
# 10 IID clients, all sampled, 12 rounds of one local epoch (batch 256), every method's lr
# searched over x0.3, x1, x3 for 2 rounds each, pranc at K = 1000, 5000, 10000.
exec .venv/bin/pranc-fed compare configs/mnist_lenet_long.yaml --out runs/cmp_mnist_iid
