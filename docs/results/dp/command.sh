#!/bin/sh
# Differential privacy on MNIST/LeNet, CLIENTS IID clients (10 unless set), every client each round, 4
# rounds, scaled down for a shared 2-core CPU (8,000 training images, 2,000 test images, batch 64). PRANC
# (K=5000, float32 alpha both ways, a fresh client optimiser each round: the demo's defaults when this
# table was first made) and dense FedAvg with the same central DP mechanism (clip each update to C=1, noise sigma*C on
# the sum, sigma calibrated for the target epsilon after 4 rounds at delta=1e-5), and without DP. Run from
# the checkout: `sh docs/results/dp/command.sh` writes dp.csv; `CLIENTS=100 sh ...` writes dp_clients100.csv.
set -e
CLIENTS=${CLIENTS:-10}
if [ "$CLIENTS" = 10 ]; then SUFFIX=""; else SUFFIX="_clients$CLIENTS"; fi
OUT=${OUT:-runs/dp$SUFFIX}
mkdir -p "$OUT"
COMMON="--set federation.num_clients=$CLIENTS --set federation.rounds=4 --set data.train_subset=8000
        --set data.test_subset=2000 --set train.batch_size=64 --set privacy.clipping_norm=1.0
        --set pranc.uplink_codec=float32 --set pranc.downlink_codec=float32 --set federation.keep_client_optimizer=false"
for method in pranc fedavg; do
  for eps in none 1 4 8; do
    [ -f "$OUT/$method-eps$eps/summary.json" ] && continue  # finished: kept, so the command resumes
    extra=""; [ "$eps" = none ] || extra="--set privacy.epsilon=$eps"
    .venv/bin/pranc-fed simulate configs/mnist_lenet.yaml $COMMON --set federation.method=$method $extra \
      --out "$OUT/$method-eps$eps" > "$OUT/$method-eps$eps.log" 2>&1
  done
done
.venv/bin/python docs/results/dp/table.py "$OUT" > "docs/results/dp/dp$SUFFIX.csv"
