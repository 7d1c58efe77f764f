#!/bin/sh
# Produces runs/deploy_scale/{deploy_scale.json,table.md} (copied here): a loopback deployment of
# 10 SuperNodes, configs/mnist_lenet.yaml at K = 2,000 (a 355 MB basis; K = 5,000 would have needed
# ~19 GB with cache=memory on a 23 GB machine shared with other work), 10 clients every round, 2 rounds,
# 2 local steps; pranc.cache=memory, then disk. About 6 minutes on 2 cores.
exec .venv/bin/python simulations/deploy_scale.py --out runs/deploy_scale
