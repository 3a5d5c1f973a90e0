"""The rig's routes: the fastest path between two endpoints over its links, found without networkx.

``networkx`` (~0.09 CPU s to import) was the only reason a compare's search workers imported it: each
routes copies, and each paid the import. ``shortest_path`` here is networkx 3.x's
``bidirectional_dijkstra`` (what ``nx.shortest_path(G, s, t, weight=...)`` runs) step for step: the
same two heaps, the same counter breaking ties between equal distances, neighbours in the order
``nx.Graph.add_edge`` inserted them (``adjacency``), so it returns the same path, ties included
(``tests/test_rig_paths.py`` checks it against networkx on random rigs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from heapq import heappop, heappush
from itertools import count

# endpoint -> neighbour -> (the edge's weight, the link's name)
Adjacency = Mapping[str, Mapping[str, tuple[float, str]]]


class NoPath(LookupError):
    """No path between the two endpoints (either may be missing from the graph)."""


def adjacency(edges: Iterable[tuple[str, str, float, str]]) -> dict[str, dict[str, tuple[float, str]]]:
    """The undirected graph of ``edges`` (a, b, weight, link name), as ``nx.Graph.add_edge`` builds
    it: between two endpoints the lightest link (the first of equal ones), a heavier one replacing
    an edge in place (its neighbours' order unchanged)."""
    adj: dict[str, dict[str, tuple[float, str]]] = {}
    for a, b, weight, name in edges:
        old = adj.get(a, {}).get(b)
        if old is not None and old[0] <= weight:
            continue
        adj.setdefault(a, {})
        adj.setdefault(b, {})
        adj[a][b] = adj[b][a] = (weight, name)
    return adj


def shortest_path(adj: Adjacency, source: str, target: str) -> list[str]:
    """The endpoints along the lightest path from ``source`` to ``target`` (networkx's
    ``bidirectional_dijkstra``, ties broken as it breaks them); ``NoPath`` where none is."""
    if source not in adj or target not in adj:
        raise NoPath(source, target)
    if source == target:
        return [source]
    dists: list[dict[str, float]] = [{}, {}]
    preds: list[dict[str, str | None]] = [{source: None}, {target: None}]
    fringe: list[list[tuple[float, int, str]]] = [[], []]
    seen: list[dict[str, float]] = [{source: 0}, {target: 0}]
    c = count()
    heappush(fringe[0], (0, next(c), source))
    heappush(fringe[1], (0, next(c), target))
    finaldist: float | None = None
    meetnode = source
    direction = 1
    while fringe[0] and fringe[1]:
        direction = 1 - direction
        dist, _, v = heappop(fringe[direction])
        if v in dists[direction]:
            continue
        dists[direction][v] = dist
        if v in dists[1 - direction]:  # scanned from both ends: the path through meetnode is shortest
            return _walk(preds[0], meetnode)[::-1] + _walk(preds[1], preds[1][meetnode])
        for w, (cost, _) in adj[v].items():
            length = dist + cost
            if w in dists[direction]:
                continue  # weights are not negative: no shorter path to a scanned endpoint
            if w not in seen[direction] or length < seen[direction][w]:
                seen[direction][w] = length
                heappush(fringe[direction], (length, next(c), w))
                preds[direction][w] = v
                if w in seen[1 - direction]:
                    through = length + seen[1 - direction][w]
                    if finaldist is None or finaldist > through:
                        finaldist, meetnode = through, w
    raise NoPath(source, target)


def _walk(preds: Mapping[str, str | None], node: str | None) -> list[str]:
    """``node`` and its predecessors back to the search's start."""
    out = []
    while node is not None:
        out.append(node)
        node = preds[node]
    return out
