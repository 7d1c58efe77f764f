#!/bin/sh
# Produces runs/compare_cifar10_resnet20/{comparison.csv,comparison.md,accuracy_vs_bytes.png}
# (copied here). JPEG CIFAR-10 unpacked outside the project:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10
# Scaled to fit a 2-core CPU: 3 of 10 clients per round, 20 local steps of batch 64, 10 rounds,
# 2,000 test images. No learning-rate search (the same zero budget for every method).
exec .venv/bin/pranc-fed compare configs/cifar10_resnet20.yaml \
  --set data.dataset="${CIFAR10_JPEG:-/tmp/cifar10}" \
  --set data.test_subset=2000 \
  --set federation.rounds=10 \
  --set federation.fraction_train=0.3 \
  --set federation.local_steps=20 \
  --set train.batch_size=64 \
  --set pranc.basis_budget_mb=4096 \
  --set methods.target_accuracy=[0.6] \
  --out runs/compare_cifar10_resnet20
