#!/bin/sh
# Produces runs/compare_cifar10_resnet20_cpu_search/{lr_search.csv,comparison.csv,comparison.md,accuracy_vs_bytes.png}
# (copied here, with each final run's rounds.csv). The scaled-down schedule of docs/results/cifar10_resnet20
# (3 of 10 clients a round, 20 local steps of batch 64, 10 rounds, 2,000 test images) on this 2-core CPU,
# now with every client keeping its Adam state and the same learning-rate search for every run: multipliers
# 0.3, 1 and 3 of each method's own lr for 3 rounds, scored on 2,000 training images the server holds out
# (data.server_val_size), never on the test set. Session 6 ran it in two steps: first with K = 10000 and P = 4
# only, then this command, which kept those finished runs (same config) and ran the other three PRANC settings.
# JPEG CIFAR-10 unpacked outside the project:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10
exec .venv/bin/pranc-fed compare configs/cifar10_resnet20.yaml \
  --set data.dataset="${CIFAR10_JPEG:-/tmp/cifar10}" --set data.test_subset=2000 --set data.server_val_size=2000 \
  --set federation.rounds=10 --set federation.fraction_train=0.3 --set federation.local_steps=20 \
  --set train.batch_size=64 --set federation.keep_client_optimizer=true \
  --set 'methods.compare=[fedavg_fp16,pranc]' --set 'methods.compare_num_coeffs=[10000,20000]' \
  --set 'methods.compare_codecs=[int8/int8]' --set 'methods.compare_reseed_periods=[4,1]' \
  --set 'methods.lr_search=[0.3,1,3]' --set methods.lr_search_rounds=3 \
  --set 'methods.target_accuracy=[0.4,0.5]' --out runs/compare_cifar10_resnet20_cpu_search
