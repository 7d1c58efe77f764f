#!/bin/sh
# Produces runs/compare_cifar10_seeds_iid/{lr_search.csv,comparison.csv,comparison.md,seeds.csv,accuracy_vs_bytes.png}
# (copied here). JPEG CIFAR-10/ResNet20, IID, scaled down to fit this 2-core CPU (the schedule of
# docs/results/cifar10_resnet20_cpu_search: 3 of 10 clients a round, 20 local Adam steps of batch 64, 10 rounds,
# 2,000 test images, client Adam kept), 3 seeds (partitions, init, sampling and basis follow the seed). The same
# lr search for every method (x0.3/x1/x3 of its own lr, 3 rounds, at the first seed, scored on 2,000 training
# images the server holds out, never the test set); every seed then runs at the chosen lr.
# JPEG CIFAR-10 unpacked outside the project:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10
exec .venv/bin/pranc-fed compare configs/cifar10_resnet20.yaml --seeds 0 1 2 \
  --set data.dataset="${CIFAR10_JPEG:-/tmp/cifar10}" --set data.test_subset=2000 --set data.server_val_size=2000 \
  --set federation.rounds=10 --set federation.fraction_train=0.3 --set federation.local_steps=20 \
  --set train.batch_size=64 --set federation.keep_client_optimizer=true \
  --set 'methods.compare=[pranc,fedavg_fp16]' --set 'methods.compare_num_coeffs=[10000]' \
  --set 'methods.compare_codecs=[int8/int8]' --set 'methods.compare_reseed_periods=[4]' \
  --set 'methods.lr_search=[0.3,1,3]' --set methods.lr_search_rounds=3 \
  --set 'methods.target_accuracy=[0.4,0.5]' --out runs/compare_cifar10_seeds_iid "$@"
