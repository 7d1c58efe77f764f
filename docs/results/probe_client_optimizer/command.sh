#!/bin/sh
# The probe behind the first paragraph of docs/results.md: PRANC K = 5000 with a fresh Adam every round
# (base) and with each client's Adam kept (persist). rounds.jsonl here was printed by an earlier draft of
# this script with the same computation (its fields: variant, val_acc, loss, s); the persist run was
# stopped after round 9. About 4 minutes per run per core; two ran at once.
.venv/bin/python simulations/probe_client_optimizer.py base persist=0
.venv/bin/python simulations/probe_client_optimizer.py persist persist=1
