#!/bin/sh
# Produces runs/compare_cifar10_p1_seeds_iid/{lr_search.csv,comparison.csv,comparison.md,seeds.csv,accuracy_vs_bytes.png}
# (copied here). JPEG CIFAR-10/ResNet20, IID, scaled down to fit this 2-core CPU (3 of 10 clients a round, 20 local
# Adam steps of batch 64, 10 rounds, 2,000 test images, client Adam kept), 3 seeds (partitions, init, sampling and
# basis follow the seed). PRANC in the setting the session-6 search scored best on validation: K=20000, per-layer
# basis, int8 alpha both ways, a new basis every round (P1). Both methods' lr grids are re-centred on what that
# search chose (fedavg_fp16 x3 of 0.001, PRANC x0.3 of 0.01: both at the edge of their grid), so each searches
# 0.0009 / 0.003 / 0.009 (x0.3/x1/x3 of 0.003), 3 rounds, at the first seed, scored on 2,000 training images the
# server holds out, never the test set; every seed then runs at the chosen lr.
# The K=20000 per-layer basis (2,163 MB) gets a 4 GB budget so that it is cached, not regenerated every step.
# JPEG CIFAR-10 unpacked outside the project:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10
exec .venv/bin/pranc-fed compare configs/cifar10_resnet20.yaml --seeds 0 1 2 \
  --set data.dataset="${CIFAR10_JPEG:-/tmp/cifar10}" --set data.test_subset=2000 --set data.server_val_size=2000 \
  --set federation.rounds=10 --set federation.fraction_train=0.3 --set federation.local_steps=20 \
  --set train.batch_size=64 --set federation.keep_client_optimizer=true \
  --set train.lr=0.003 --set pranc.alpha_lr=0.003 --set pranc.basis_budget_mb=4096 \
  --set 'methods.compare=[pranc,fedavg_fp16]' --set 'methods.compare_num_coeffs=[20000]' \
  --set 'methods.compare_codecs=[int8/int8]' --set 'methods.compare_reseed_periods=[1]' \
  --set 'methods.lr_search=[0.3,1,3]' --set methods.lr_search_rounds=3 \
  --set 'methods.target_accuracy=[0.4,0.5]' --out runs/compare_cifar10_p1_seeds_iid "$@"
