#!/bin/sh
# Produces runs/cmp_iid/{comparison.csv,comparison.md,lr_search.csv,accuracy_vs_bytes.png} (copied here):
# pranc K = 5000, int4 or int2 up / int8 down, on one fixed basis (P0) and on a fresh basis every round (P1),
# in the comparison of mnist_lenet_iid_lowbit (the same folder, so the fixed-basis run is shared).
exec .venv/bin/pranc-fed compare configs/mnist_lenet_long.yaml --set methods.downlink_dtype=float16 \
  --set pranc.codec_block=1024 --set 'methods.compare=[pranc]' --set 'methods.compare_num_coeffs=[5000]' \
  --set 'methods.compare_codecs=[int4/int8, int2/int8]' --set 'methods.compare_reseed_periods=[0, 1]' --out runs/cmp_iid
