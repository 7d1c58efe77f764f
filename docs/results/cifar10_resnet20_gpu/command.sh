#!/bin/sh
# Produces runs/compare_cifar10_resnet20_gpu/{comparison.csv,comparison.md,accuracy_vs_bytes.png} (copied here,
# with each run's rounds.csv). Ran once on one NVIDIA H200 (session 5), the full schedule that the CPU runs of
# docs/results/cifar10_resnet20 had to scale down: all 10 clients every round, one local epoch, 12 rounds;
# 2,000 test images. Every client keeps its Adam state between rounds and shares the GPU at 0.1.
# No learning-rate search (each method at its config default, the same zero budget for all).
# JPEG CIFAR-10 unpacked outside the project:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10
exec .venv/bin/pranc-fed compare configs/cifar10_resnet20.yaml \
  --set data.dataset="${CIFAR10_JPEG:-/tmp/cifar10}" --set data.test_subset=2000 \
  --set train.device=cuda --set federation.num_gpus_per_client=0.1 --set federation.num_cpus_per_client=1 \
  --set federation.rounds=12 --set federation.keep_client_optimizer=true \
  --set 'methods.compare=[fedavg_fp16,pranc]' --set 'methods.compare_num_coeffs=[10000]' \
  --set 'methods.compare_codecs=[int8/int8]' --set 'methods.compare_reseed_periods=[4,0]' \
  --set 'methods.target_accuracy=[0.5,0.6]' --out runs/compare_cifar10_resnet20_gpu
