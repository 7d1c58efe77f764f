#!/bin/sh
# Differential privacy on MNIST/LeNet, 10 IID clients, every client each round, 4 rounds, scaled down
# for a shared 2-core CPU (8,000 training images, 2,000 test images, batch 64). PRANC (K=5000) and dense
# FedAvg with the same central DP mechanism (clip each update to C=1, noise sigma*C on the sum, sigma
# calibrated for the target epsilon after 4 rounds at delta=1e-5), and without DP. Run from the checkout.
set -e
OUT=${OUT:-runs/dp}
COMMON="--set federation.num_clients=10 --set federation.rounds=4 --set data.train_subset=8000
        --set data.test_subset=2000 --set train.batch_size=64 --set privacy.clipping_norm=1.0"
for method in pranc fedavg; do
  for eps in none 1 4 8; do
    extra=""; [ "$eps" = none ] || extra="--set privacy.epsilon=$eps"
    .venv/bin/pranc-fed simulate configs/mnist_lenet.yaml $COMMON --set federation.method=$method $extra \
      --out "$OUT/$method-eps$eps" > "$OUT/$method-eps$eps.log" 2>&1
  done
done
.venv/bin/python docs/results/dp/table.py "$OUT" > docs/results/dp/dp.csv
