#!/bin/sh
# Produces runs/cmp_dir05/{comparison.csv,comparison.md,lr_search.csv,accuracy_vs_bytes.png} (copied here).
# As mnist_lenet_iid_lowbit, with each client's labels drawn from Dirichlet(0.5), and pranc with the int4
# uplink only (int2 was not run on this split for lack of time).
exec .venv/bin/pranc-fed compare configs/mnist_lenet_dirichlet.yaml --set data.dirichlet_alpha=0.5 \
  --set methods.downlink_dtype=float16 --set pranc.codec_block=1024 --set 'methods.compare_num_coeffs=[5000, 10000]' \
  --set 'methods.compare_codecs=[int4/int8]' --out runs/cmp_dir05
