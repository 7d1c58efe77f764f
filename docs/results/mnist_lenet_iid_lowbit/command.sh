#!/bin/sh
# Produces runs/cmp_iid/{comparison.csv,comparison.md,lr_search.csv,accuracy_vs_bytes.png} (copied here).
# MNIST/LeNet, 10 IID clients, 12 rounds of one local epoch. Every method's lr is searched over x0.3, x1
# and x3 for 2 rounds, scored on the 5,000 training images the server holds out (data.server_val_size);
# the test set only reports. topk, qsgd, signsgd and fedpm broadcast in fp16; pranc at K = 5000 and
# 10000 sends its change of alpha in int4 or int2 and receives alpha in int8 (one scale per 1024 values,
# error feedback on both sides). Resumable: rerunning skips finished runs.
exec .venv/bin/pranc-fed compare configs/mnist_lenet_long.yaml --set methods.downlink_dtype=float16 \
  --set pranc.codec_block=1024 --set 'methods.compare_num_coeffs=[5000, 10000]' \
  --set 'methods.compare_codecs=[int4/int8, int2/int8]' --out runs/cmp_iid
