#!/bin/sh
# Produces runs/attack_study/{attack_study.csv,attack_study.md,attack_study.png} (copied here): PRANC on
# MNIST/LeNet (K = 1000, float32 alpha, 8,000 training images, 4 rounds), 1 of 3 and 3 of 10 clients
# attacking (simulations/byzantine_client.py), each attack against each aggregation rule. Resumable: the
# multikrum column was added in session 5 by rerunning this command over the session-4 folder.
exec .venv/bin/python simulations/attack_study.py --out runs/attack_study
