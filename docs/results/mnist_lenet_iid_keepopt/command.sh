#!/bin/sh
# Produces runs/cmp_keep/{comparison.csv,comparison.md,lr_search.csv,accuracy_vs_bytes.png} (copied here).
# MNIST/LeNet, 10 IID clients, 12 rounds of one local epoch, every client keeping its Adam state between
# rounds (federation.keep_client_optimizer) for every method. The same x0.3/x1/x3 2-round lr search for
# every method, scored on the 5,000 images the server holds out. pranc at K = 5000 and 10000, int2 up /
# int8 down (one scale per 1024 values), on one fixed basis (P0) and on a fresh basis every 4 rounds (P4);
# against the three methods that reached 97% with the fewest bytes in mnist_lenet_iid_lowbit (fedavg_fp16,
# qsgd, signsgd; fp16 downlink). Resumable: rerunning skips finished runs and continues killed ones.
exec .venv/bin/pranc-fed compare configs/mnist_lenet_long.yaml --set methods.downlink_dtype=float16 \
  --set pranc.codec_block=1024 --set federation.keep_client_optimizer=true \
  --set 'methods.compare=[pranc, fedavg_fp16, qsgd, signsgd]' --set 'methods.compare_num_coeffs=[5000, 10000]' \
  --set 'methods.compare_codecs=[int2/int8]' --set 'methods.compare_reseed_periods=[0, 4]' --out runs/cmp_keep
