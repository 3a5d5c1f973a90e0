"""Fastest paths between a rig's endpoints, without importing networkx (~0.1 CPU s in every
compare's search worker, for one algorithm).

``fastest_path`` is networkx's ``bidirectional_dijkstra`` (what ``nx.shortest_path(G, s, t,
weight=...)`` runs), ported line for line onto a plain adjacency built as ``nx.Graph.add_edge``
builds its own (same node and neighbour order), so it returns the same path, ties included:
networkx 3.6.1, ``networkx/algorithms/shortest_paths/weighted.py:2310`` (``bidirectional_dijkstra``)
and ``networkx/classes/graph.py`` (``Graph.add_edge``); https://github.com/networkx/networkx.
networkx is Copyright (C) 2004-2025 NetworkX Developers (Aric Hagberg, Dan Schult, Pieter Swart),
BSD 3-Clause licence. ``tests/test_paths.py`` holds the port to networkx on random graphs.
"""

from __future__ import annotations

from heapq import heappop, heappush
from itertools import count

Adjacency = dict[str, dict[str, tuple[str, float]]]  # node -> neighbour -> (link name, weight)


def add_edge(adj: Adjacency, a: str, b: str, link: str, weight: float) -> None:
    """The undirected edge a-b (replacing its data where it exists), in ``nx.Graph.add_edge``'s order:
    a new node is appended, a new neighbour appended to each end's list, an existing one kept in place."""
    adj.setdefault(a, {})
    adj.setdefault(b, {})
    adj[a][b] = adj[b][a] = (link, weight)


def fastest_path(adj: Adjacency, source: str, target: str) -> list[str] | None:
    """The nodes of the least-weight path from ``source`` to ``target`` (None: no path, or either
    is not a node), as networkx's ``bidirectional_dijkstra`` finds it."""
    if source not in adj or target not in adj:
        return None
    if source == target:
        return [source]
    dists: list[dict[str, float]] = [{}, {}]  # final distances: forward, backward
    preds: list[dict[str, str | None]] = [{source: None}, {target: None}]
    fringe: list[list[tuple[float, int, str]]] = [[], []]
    seen: list[dict[str, float]] = [{source: 0}, {target: 0}]
    c = count()
    heappush(fringe[0], (0, next(c), source))
    heappush(fringe[1], (0, next(c), target))
    finaldist: float | None = None
    meetnode: str | None = None
    direction = 1
    while fringe[0] and fringe[1]:
        direction = 1 - direction
        dist, _, v = heappop(fringe[direction])
        if v in dists[direction]:
            continue
        dists[direction][v] = dist
        if v in dists[1 - direction]:
            assert meetnode is not None
            return _walk(preds[0], meetnode)[::-1] + _walk(preds[1], preds[1][meetnode])
        for w, (_, cost) in adj[v].items():
            vw = dist + cost
            if w in dists[direction]:
                continue  # networkx raises here on negative weights; a rig's are positive
            if w not in seen[direction] or vw < seen[direction][w]:
                seen[direction][w] = vw
                heappush(fringe[direction], (vw, next(c), w))
                preds[direction][w] = v
                if w in seen[1 - direction]:
                    through = vw + seen[1 - direction][w]
                    if finaldist is None or finaldist > through:
                        finaldist, meetnode = through, w
    return None


def _walk(preds: dict[str, str | None], node: str | None) -> list[str]:
    out = []
    while node is not None:
        out.append(node)
        node = preds[node]
    return out
