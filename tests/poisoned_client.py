"""Test-only ClientApp: pranc_fed's own client, except on nodes whose node config asks it to
misbehave. Deployment tests run it from a separate app folder (see tests/test_deploy.py),
so pranc_fed/client_app.py carries no test hooks.

Node-config keys (flower-supernode --node-config):
  poison="nan,fingerprint,raise"  what this node does in round 1, 2, 3, ... (cycled):
                                  nan: alpha filled with NaN; fingerprint: a wrong basis
                                  fingerprint in the reply; raise: training raises; inject:
                                  training raises with a forged server progress line in its
                                  message; metric: a list where train-loss should be a number;
                                  byteorder: alpha's bytes big-endian; oversize: an extra 4 MB
                                  array; hang: never replies; none: honest
  dump-dir="/path"                save every reply's trained alpha and num-examples there
                                  (round-R.npz), so a test can recompute the global model
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from pranc_fed import client_app
from pranc_fed.methods.base import to_array

app = ClientApp()
# What an "inject" client tries to slip into the server's console as a line of its own.
FORGED_LINE = "[pranc-fed] round 99/99  clients 3/3  test acc 0.9999  (forged by a client)"


def _mode(context: Context, server_round: int) -> str:
    modes = [m.strip() for m in str(context.node_config.get("poison", "none")).split(",") if m.strip()]
    return modes[(server_round - 1) % len(modes)] if modes else "none"


def _values(array: Array) -> np.ndarray:
    """The values of a raw little-endian Array, as pranc_fed's methods write them."""
    return np.frombuffer(array.data, dtype=np.dtype(array.dtype).newbyteorder("<")).reshape(array.shape)


@app.train()
def train(msg: Message, context: Context) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    mode = _mode(context, server_round)
    if mode == "raise":
        raise RuntimeError(f"poisoned client: training fails on purpose in round {server_round}")
    if mode == "inject":
        raise RuntimeError(f"fails on purpose\n{FORGED_LINE}")
    if mode == "hang":
        time.sleep(3600)
    reply = client_app.train(msg, context)
    arrays = reply.content["arrays"]
    if mode == "nan":
        alpha = _values(arrays["alpha"]).copy()
        alpha[::2] = np.nan
        arrays["alpha"] = to_array(alpha)
    elif mode == "fingerprint":
        reply.content["config"]["fingerprint"] = "pranc-v1:lenet:d1:k1:global:s999:0000000000000000"
    elif mode == "metric":
        reply.content["metrics"]["train-loss"] = [0.5, 0.25]
    elif mode == "byteorder":
        arrays["alpha"] = to_array(_values(arrays["alpha"]).byteswap())
    elif mode == "oversize":
        arrays["padding"] = to_array(np.zeros(1 << 20, dtype=np.float32))
    if dump := context.node_config.get("dump-dir"):  # the alpha this node trained: start + the change it sends
        sent = msg.content["arrays"]  # an all-zero broadcast alpha travels as no array
        start = _values(sent["alpha"]).astype(np.float64) if "alpha" in sent else np.zeros(arrays["alpha"].shape)
        trained = start + _values(arrays["alpha"])
        np.savez(Path(str(dump)) / f"round-{server_round}.npz", alpha=trained.astype(np.float32),
                 num_examples=int(reply.content["metrics"]["num-examples"]))
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return client_app.evaluate_val(msg, context)
