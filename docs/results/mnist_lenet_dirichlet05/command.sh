#!/bin/sh
# Produces runs/cmp_mnist_dir05/{comparison.csv,comparison.md,lr_search.csv,accuracy_vs_bytes.png}
# (copied here). As mnist_lenet_iid, with each client's labels drawn from Dirichlet(0.5).
exec .venv/bin/pranc-fed compare configs/mnist_lenet_dirichlet.yaml --set data.dirichlet_alpha=0.5 \
  --out runs/cmp_mnist_dir05
