"""A ClientApp for robustness studies: pranc_fed's own client, except on the partitions listed in
attack_spec.py (written next to this file by simulations/attack_study.py), which train honestly
and then send, in every round:

    scale      100 x their change                       (alpha scaled up)
    noise      their change + Gaussian noise of 100 x its RMS
    signflip   -10 x their change
    claim      -1 x their change, claiming federation.max_num_examples examples
    byteorder  their change as big-endian bytes, still labelled float32

Only float32 arrays are attacked, so the study runs with the float32 uplink codec. In decentralised mode
(simulations/gossip_study.py) the same attacks hit the agent's message to its neighbours, which carries
its state rather than a change: scale sends 100 x its alpha, signflip -10 x its alpha.
pranc_fed/client_app.py carries no attack hooks.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

import attack_spec
from pranc_fed import client_app
from pranc_fed.methods.base import to_array

app = ClientApp()


def _attack(values: np.ndarray, rng: np.random.Generator) -> np.ndarray | bytes:
    kind = attack_spec.ATTACK
    if kind == "scale":
        return 100 * values
    if kind == "noise":
        rms = float(np.sqrt(np.mean(np.square(values)))) or 1.0
        return values + rng.normal(0, 100 * rms, values.shape).astype(np.float32)
    if kind == "signflip":
        return -10 * values
    if kind == "claim":
        return -values
    if kind == "byteorder":
        return values.astype(">f4").tobytes()
    raise ValueError(f"unknown attack {kind!r}")


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _attacked(client_app.train(msg, context), msg, context)


@app.train("gossip")
def gossip(msg: Message, context: Context) -> Message:
    return _attacked(client_app.gossip(msg, context), msg, context)


def _attacked(reply: Message, msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) not in attack_spec.ATTACKERS:
        return reply
    rng = np.random.default_rng([int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"])])
    arrays = reply.content["arrays"]
    for key in list(arrays.keys()):
        if arrays[key].dtype != "float32":
            continue
        values = np.frombuffer(arrays[key].data, dtype="<f4").reshape(arrays[key].shape)
        attacked = _attack(values, rng)
        arrays[key] = (Array(dtype="float32", shape=values.shape, stype="raw", data=attacked)
                       if isinstance(attacked, bytes) else to_array(attacked.astype(np.float32)))
    if attack_spec.ATTACK == "claim":
        reply.content["metrics"]["num-examples"] = int(attack_spec.MAX_NUM_EXAMPLES)
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return client_app.evaluate_val(msg, context)
