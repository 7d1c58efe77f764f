#!/bin/sh
# Probes of what limits PRANC on JPEG CIFAR-10/ResNet20 (issue 22 item 2), seed 0, IID, the scaled CPU schedule
# of docs/results/cifar10_resnet20_seeds_iid (3 of 10 clients a round, 20 local Adam steps of batch 64, 10 rounds,
# client Adam kept), PRANC K=10000 int8/int8, new basis every 4 rounds, alpha_lr 0.01 (the lr the earlier CPU
# search chose for this setting). Each probe changes one thing against `base`; kept or rejected by the
# validation accuracy (2,000 training images the server holds out), never the test accuracy.
# Usage: command.sh NAME [--set ...]   e.g.  command.sh base;  command.sh full1000 --set pranc.full_rank_upto=1000
name=$1; shift
exec .venv/bin/pranc-fed simulate configs/cifar10_resnet20.yaml \
  --set data.dataset="${CIFAR10_JPEG:-/tmp/cifar10}" --set data.test_subset=2000 --set data.server_val_size=2000 \
  --set federation.rounds=10 --set federation.fraction_train=0.3 --set federation.local_steps=20 \
  --set train.batch_size=64 --set federation.keep_client_optimizer=true \
  --set pranc.num_coeffs=10000 --set pranc.uplink_codec=int8 --set pranc.downlink_codec=int8 \
  --set pranc.reseed_period=4 --set pranc.alpha_lr=0.01 --out "runs/cifar10_probes/$name" "$@"
