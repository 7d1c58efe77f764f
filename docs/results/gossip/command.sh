#!/bin/sh
# Produces runs/gossip_study/{gossip_study.csv,gossip_study.md,gossip_study.png} (copied here): decentralised
# PRANC against dense fedavg_fp16 gossip and the star, ring and random 4-regular graphs. MNIST/LeNet with 10
# and 50 agents, IID and Dirichlet(0.3), PRANC K = 1000 (float32 alpha), 8,000 training images, 2,000 test
# images, 6 rounds; JPEG CIFAR-10/ResNet20 with 10 IID agents, 5 rounds of 20 local steps, K = 10000 per
# layer, int8 (unpacked where CIFAR10_JPEG points, /tmp/cifar10 by default:
#   mkdir -p /tmp/cifar10 && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C /tmp/cifar10);
# plus, with 10 MNIST agents on the ring, agent 0 sending scaled or sign-flipped alpha to its neighbours under
# the mean, the neighbour median and clipped gossip. Scaled down for a 2-core CPU (simulations/gossip_study.py,
# STUDIES). Resumable (finished runs are kept); --study mnist|cifar10 or --only NAME ... runs a part.
exec .venv/bin/python simulations/gossip_study.py --out runs/gossip_study "$@"
