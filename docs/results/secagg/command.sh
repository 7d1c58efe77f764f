#!/bin/sh
# What secure aggregation costs in real runs (secagg.enabled): MNIST/LeNet, IID, 4 rounds, every client
# each round, 8,000 training and 2,000 test images, batch 64. PRANC K=5000 with the demo's codecs (int4 up,
# int8 down; under secagg the uplink is the 32-bit masked code) and dense FedAvg (float32, 44,426 values),
# each with and without secagg: 10 clients in a simulation, then 3 real SuperNodes (pranc-fed deploy).
# Resumable (finished runs are kept). Writes docs/results/secagg/runs.csv. Run from the checkout.
set -e
OUT=${OUT:-runs/secagg}
mkdir -p "$OUT"
COMMON="--set pranc.num_coeffs=5000 --set federation.rounds=4 --set data.train_subset=8000 --set data.test_subset=2000
        --set train.batch_size=64"
run() {  # NAME, then the pranc-fed command's arguments
  name=$1; shift
  [ -f "$OUT/$name/summary.json" ] || .venv/bin/pranc-fed "$@" $COMMON --out "$OUT/$name" > "$OUT/$name.log" 2>&1
}
for method in pranc fedavg; do
  for secagg in false true; do
    run "simulate-$method-secagg-$secagg" simulate configs/mnist_lenet.yaml --set federation.num_clients=10 \
      --set federation.method=$method --set secagg.enabled=$secagg
  done
done
for secagg in false true; do
  run "deploy-pranc-secagg-$secagg" deploy configs/mnist_lenet.yaml --nodes 3 --set federation.num_clients=3 \
    --set secagg.enabled=$secagg
done
.venv/bin/python docs/results/secagg/table.py "$OUT" > docs/results/secagg/runs.csv
