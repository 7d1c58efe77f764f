"""Who talks to whom without a server (federation.topology != star): communication graphs over the
agents (data partitions 0..n-1) and the mixing weights of gossip averaging.

    ring            i ~ i - 1, i + 1 (mod n)
    torus           rows x cols grid wrapped both ways (rows the largest divisor of n <= sqrt(n), both >= 3)
    random_regular  every agent has `degree` neighbours, drawn with the config's seed (connected)
    complete        every pair
    FILE            a path: an edge list ("i j" per line, 0-based partition ids) or an n x n 0/1
                    adjacency matrix; '#' starts a comment

Mixing weights (federation.mixing), both symmetric and doubly stochastic on any undirected graph:

    metropolis   w_ij = 1 / (1 + max(d_i, d_j)) for each edge,   w_ii = 1 - sum_j w_ij
    max_degree   w_ij = 1 / (1 + max_k d_k) for each edge,       w_ii = 1 - sum_j w_ij

An agent that hears from only some neighbours (churn, a dropped message) adds the missing weights to
its own (gossip.mix): the weights it uses still sum to one.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

STAR = "star"  # the server averages: the federated mode, not a graph of this module
TOPOLOGIES = (STAR, "ring", "torus", "random_regular", "complete")  # or a FILE path
MIXINGS = ("metropolis", "max_degree")

Graph = list[set[int]]  # neighbours of each agent


class TopologyError(ValueError):
    """A graph that cannot be built or read; the message says why and what to do."""


def is_gossip(topology: str) -> bool:
    return topology != STAR


def build_graph(topology: str, n: int, degree: int = 4, seed: int = 0) -> Graph:
    """The undirected, connected graph of n agents that federation.topology names."""
    if topology == "ring":
        graph = [{(i - 1) % n, (i + 1) % n} - {i} for i in range(n)]
    elif topology == "complete":
        graph = [set(range(n)) - {i} for i in range(n)]
    elif topology == "torus":
        graph = _torus(n)
    elif topology == "random_regular":
        graph = _random_regular(n, degree, seed)
    elif topology == STAR:
        raise TopologyError("topology star has no agent graph: the server averages")
    else:
        graph = read_graph(Path(topology), n)
    _check_connected(graph, topology)
    return graph


def _torus(n: int) -> Graph:
    rows = max(r for r in range(1, int(n ** 0.5) + 1) if n % r == 0)
    cols = n // rows
    if rows < 3:
        raise TopologyError(f"topology torus needs federation.num_clients = rows x cols with both >= 3 "
                            f"(9, 12, 16, 20, 25, ...); {n} is not: use ring or random_regular")
    return [{((r + dr) % rows) * cols + (c + dc) % cols for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))}
            for r in range(rows) for c in range(cols)]


def _random_regular(n: int, degree: int, seed: int) -> Graph:
    if degree >= n or (n * degree) % 2:
        raise TopologyError(f"topology random_regular needs federation.degree < num_clients and degree x "
                            f"num_clients even; got degree {degree} with {n} agents")
    rng = random.Random(seed)
    for _ in range(1000):  # the pairing model: retry until simple and connected (a handful of tries)
        stubs = [i for i in range(n) for _ in range(degree)]
        rng.shuffle(stubs)
        graph: Graph = [set() for _ in range(n)]
        ok = True
        for a, b in zip(stubs[::2], stubs[1::2]):
            if a == b or b in graph[a]:
                ok = False
                break
            graph[a].add(b)
            graph[b].add(a)
        if ok and not _unreachable(graph):
            return graph
    raise TopologyError(f"no connected {degree}-regular graph of {n} agents found in 1000 draws: change federation.degree")


def read_graph(path: Path, n: int) -> Graph:
    """An edge list or an n x n adjacency matrix (module docstring), checked against n agents."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TopologyError(f"federation.topology {str(path)!r} is neither one of {', '.join(TOPOLOGIES)} nor a "
                            f"readable file ({e.strerror or e})") from None
    rows = [line.split("#", 1)[0].replace(",", " ").split() for line in text.splitlines()]
    rows = [(number, r) for number, r in enumerate(rows, 1) if r]
    try:
        values = [(number, [int(v) for v in r]) for number, r in rows]
    except ValueError:
        raise TopologyError(f"{path}: every line must hold integers (an edge 'i j', or a row of a 0/1 "
                            "adjacency matrix)") from None
    graph: Graph = [set() for _ in range(n)]
    if len(values) == n and all(len(r) == n for _, r in values):  # adjacency matrix
        matrix = np.array([r for _, r in values])
        if not np.isin(matrix, (0, 1)).all() or (matrix != matrix.T).any() or matrix.diagonal().any():
            raise TopologyError(f"{path}: an adjacency matrix must be 0/1, symmetric, with a zero diagonal")
        for i, j in zip(*np.nonzero(matrix)):
            graph[int(i)].add(int(j))
        return graph
    for number, r in values:
        if len(r) != 2:
            raise TopologyError(f"{path}:{number}: expected an edge 'i j' (or {n} lines of {n} 0/1 values "
                                f"for an adjacency matrix), got {len(r)} values")
        i, j = r
        if not (0 <= i < n and 0 <= j < n):
            raise TopologyError(f"{path}:{number}: edge {i} {j} names an agent outside 0..{n - 1} "
                                "(federation.num_clients agents, numbered by data partition)")
        if i == j:
            raise TopologyError(f"{path}:{number}: self-loop {i} {j}; an agent's own weight is implied")
        graph[i].add(j)
        graph[j].add(i)
    return graph


def _unreachable(graph: Graph) -> set[int]:
    if not graph:
        return set()
    seen, todo = {0}, [0]
    while todo:
        for j in graph[todo.pop()] - seen:
            seen.add(j)
            todo.append(j)
    return set(range(len(graph))) - seen


def _check_connected(graph: Graph, topology: str) -> None:
    if missing := _unreachable(graph):
        shown = ", ".join(map(str, sorted(missing)[:10])) + (", ..." if len(missing) > 10 else "")
        raise TopologyError(f"topology {topology}: agents {shown} cannot reach agent 0; gossip cannot reach "
                            "consensus on a disconnected graph: add edges")


def mixing_weights(graph: Graph, rule: str = "metropolis") -> list[dict[int, float]]:
    """w[i][j] for every edge (the self weight is 1 minus their sum)."""
    degrees = [len(nbrs) for nbrs in graph]
    if rule == "metropolis":
        return [{j: 1.0 / (1 + max(degrees[i], degrees[j])) for j in sorted(nbrs)} for i, nbrs in enumerate(graph)]
    if rule == "max_degree":
        top = max(degrees, default=0)
        return [{j: 1.0 / (1 + top) for j in sorted(nbrs)} for nbrs in graph]
    raise TopologyError(f"unknown mixing {rule!r}; choose one of {', '.join(MIXINGS)}")


def mixing_matrix(graph: Graph, rule: str = "metropolis") -> np.ndarray:
    n = len(graph)
    w = np.zeros((n, n))
    for i, row in enumerate(mixing_weights(graph, rule)):
        for j, value in row.items():
            w[i, j] = value
        w[i, i] = 1.0 - sum(row.values())
    return w


def spectral_gap(matrix: np.ndarray) -> float:
    """1 - the second largest |eigenvalue|: how fast repeated mixing reaches consensus."""
    eig = np.sort(np.abs(np.linalg.eigvalsh(matrix)))[::-1]
    return float(1 - eig[1]) if len(eig) > 1 else 1.0


def edge_count(graph: Graph) -> int:
    return sum(len(nbrs) for nbrs in graph) // 2
