#!/bin/sh
# Produces runs/compare_cifar10_p1_seeds_dir03/{comparison.csv,comparison.md,seeds.csv,accuracy_vs_bytes.png}
# (copied here). JPEG CIFAR-10/ResNet20, Dirichlet(0.3) over the 10 clients, otherwise the schedule and settings of
# ../cifar10_resnet20_p1_seeds_iid/command.sh (3 of 10 clients a round, 20 local Adam steps of batch 64, 10 rounds,
# 2,000 test images, client Adam kept; PRANC K=20000 per-layer, int8 alpha both ways, a new basis every round),
# 3 seeds. No search of its own: both methods run at the lr the IID search chose for each (0.0009 for both,
# scored on the server's held-out validation images), the same rule for both.
# JPEG CIFAR-10 unpacked outside the project:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10
exec .venv/bin/pranc-fed compare configs/cifar10_resnet20.yaml --seeds 0 1 2 \
  --set data.dataset="${CIFAR10_JPEG:-/tmp/cifar10}" --set data.test_subset=2000 --set data.server_val_size=2000 \
  --set data.partition=dirichlet --set data.dirichlet_alpha=0.3 \
  --set federation.rounds=10 --set federation.fraction_train=0.3 --set federation.local_steps=20 \
  --set train.batch_size=64 --set federation.keep_client_optimizer=true \
  --set train.lr=0.0009 --set pranc.alpha_lr=0.0009 --set pranc.basis_budget_mb=4096 \
  --set 'methods.compare=[pranc,fedavg_fp16]' --set 'methods.compare_num_coeffs=[20000]' \
  --set 'methods.compare_codecs=[int8/int8]' --set 'methods.compare_reseed_periods=[1]' \
  --set 'methods.target_accuracy=[0.3,0.4]' --out runs/compare_cifar10_p1_seeds_dir03 "$@"
