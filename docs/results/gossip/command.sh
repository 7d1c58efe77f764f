#!/bin/sh
# Produces runs/gossip_study/{gossip_study.csv,gossip_study.md,gossip_study.png} (copied here): decentralised
# PRANC against dense fedavg_fp16 gossip and the star, ring and random 4-regular graphs. MNIST/LeNet with 10
# and 50 agents, IID and Dirichlet(0.3), PRANC K = 1000 (float32 alpha), 8,000 training images, 2,000 test
# images, 6 rounds; JPEG CIFAR-10/ResNet20 with 10 IID agents, 5 rounds of 20 local steps, K = 10000 per
# layer, int8 (unpacked where CIFAR10_JPEG points, /tmp/cifar10 by default:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10);
# plus, with 10 MNIST agents on the ring, agent 0 sending scaled or sign-flipped alpha to its neighbours under
# the mean, the neighbour median and clipped gossip, and 3 exchanges a round (-steps3 runs). Scaled down for
# a 2-core CPU (simulations/gossip_study.py, STUDIES). Resumable (finished runs are kept); --study
# mnist|cifar10 or --only NAME ... runs a part of the first command.
set -e
.venv/bin/python simulations/gossip_study.py --out runs/gossip_study "$@"
# Seeds 1 and 2 of the 10-agent MNIST runs (the tables' "Over seeds").
.venv/bin/python simulations/gossip_study.py --out runs/gossip_study --seeds 1 2 --only star-iid-pranc \
  ring-iid-pranc ring-iid-fp16 rr4-iid-pranc rr4-iid-fp16 star-dir0.3-pranc ring-dir0.3-pranc ring-dir0.3-fp16 \
  rr4-dir0.3-pranc rr4-dir0.3-fp16
# 50 agents on the whole MNIST training set (1,200 images an agent instead of 160), in its own folder.
.venv/bin/python simulations/gossip_study.py --out runs/gossip_study_full50 --only a50-star-iid-pranc \
  a50-ring-iid-pranc a50-ring-iid-fp16 --set data.train_subset=null
