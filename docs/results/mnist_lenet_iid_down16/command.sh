#!/bin/sh
# Produces runs/cmp_mnist_iid_down16/{comparison.csv,comparison.md,lr_search.csv,accuracy_vs_bytes.png}
# (copied here): the IID comparison's topk, qsgd and signsgd with an fp16 downlink, same search.
exec .venv/bin/pranc-fed compare configs/mnist_lenet_long.yaml --set methods.downlink_dtype=float16 \
  --set 'methods.compare=[topk, qsgd, signsgd]' --out runs/cmp_mnist_iid_down16
