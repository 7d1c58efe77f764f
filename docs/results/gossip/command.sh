#!/bin/sh
# Produces runs/gossip_study/{gossip_study.csv,gossip_study.md,gossip_study.png} (copied here): MNIST/LeNet,
# 10 agents, PRANC K = 1000 (float32 alpha) against dense fedavg_fp16 gossip and the star, ring and random
# 4-regular graphs, IID and Dirichlet(0.3), 8,000 training images, 2,000 test images, 6 rounds; plus agent 0
# sending -10 x its alpha (signflip) to its ring neighbours under the mean and the neighbour median.
# Scaled down for a 2-core CPU. Resumable (finished runs are kept). The session ran these names one by one
# (--only NAME): star-iid-pranc ring-iid-pranc rr4-iid-pranc ring-iid-fp16 rr4-iid-fp16 star-dir0.3-pranc
# ring-dir0.3-pranc rr4-dir0.3-pranc ring-dir0.3-fp16 byz-ring-iid-mean-signflip byz-ring-iid-median-signflip
# byz-ring-iid-median-none; without --only every run of simulations/gossip_study.py runs() is made.
exec .venv/bin/python simulations/gossip_study.py --out runs/gossip_study "$@"
