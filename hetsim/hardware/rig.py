"""A whole machine or cluster: devices, disks, links, and the routes between them."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from heapq import heappop, heappush

from hetsim.hardware.types import ComputeDevice, Disk, Grade, Hop, Link, Node, Route

# Routes are chosen to minimise the time to move this many bytes (latency + size/bandwidth):
# big enough that bandwidth dominates, as it does for weights and KV cache.
_ROUTE_PROBE_BYTES = 1e6


class NoRouteError(LookupError):
    """No path in the rig between two endpoints (an infeasible placement, not a crash)."""


@dataclass(frozen=True)
class Rig:
    name: str
    source: str  # the file it came from
    nodes: Mapping[str, Node]
    devices: Mapping[str, ComputeDevice]
    disks: Mapping[str, Disk]
    links: Mapping[str, Link]
    # found routes, per rig object: not an init field, so dataclasses.replace starts an empty cache
    _routes: dict[tuple[str, str], Route] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- look-ups -------------------------------------------------------------------------
    def gpus(self) -> list[ComputeDevice]:
        return [d for d in self.devices.values() if d.kind == "gpu"]

    def cpus(self) -> list[ComputeDevice]:
        return [d for d in self.devices.values() if d.kind == "cpu"]

    def node_of(self, endpoint: str) -> Node:
        if endpoint in self.devices:
            return self.nodes[self.devices[endpoint].node]
        if endpoint in self.disks:
            return self.nodes[self.disks[endpoint].node]
        raise KeyError(endpoint)

    def host_cpu(self, gpu: str) -> str:
        """The CPU socket a GPU hangs off: the nearest CPU by route time (its PCIe root)."""
        node = self.node_of(gpu)
        return min(node.cpus, key=lambda c: (self.route(gpu, c).time(_ROUTE_PROBE_BYTES), c))

    def disks_of(self, node: str) -> list[Disk]:
        return [self.disks[d] for d in self.nodes[node].disks]

    def capacities(self) -> dict[str, float]:
        """Bytes each memory holds, by name: every device's memory and every disk."""
        return {
            **{d.name: d.mem_bytes for d in self.devices.values()},
            **{d.name: d.capacity_bytes for d in self.disks.values()},
        }

    @property
    def price_per_hour(self) -> float:
        """Hourly price of the whole rig: node prices plus per-device prices."""
        return (
            sum(n.price_per_hour for n in self.nodes.values())
            + sum(d.price_per_hour for d in self.devices.values())
            + sum(d.price_per_hour for d in self.disks.values())
        )

    def weakest_grade(self, names: Iterable[str] | None = None) -> Grade:
        """The weakest provenance grade among the given devices/disks/links (default: all)."""
        items = [*self.devices.values(), *self.disks.values(), *self.links.values()]
        if names is not None:
            wanted = set(names)
            items = [i for i in items if i.name in wanted]
        grades = [p.grade for i in items for p in i.provenance.values()]
        return min(grades, default=Grade.ASSUMED)

    # ---- topology -------------------------------------------------------------------------
    @cached_property
    def adjacency(self) -> dict[str, dict[str, tuple[float, str]]]:
        """Endpoint -> neighbour -> (route weight, link name): the fastest link between two endpoints,
        in the order links are listed (which settles equal-time routes)."""
        adj: dict[str, dict[str, tuple[float, str]]] = {}
        for link in self.links.values():
            weight = link.latency_s + _ROUTE_PROBE_BYTES / link.bw
            old = adj.get(link.a, {}).get(link.b)
            if old is not None and old[0] <= weight:
                continue
            adj.setdefault(link.a, {})[link.b] = (weight, link.name)
            adj.setdefault(link.b, {})[link.a] = (weight, link.name)
        return adj

    def route(self, src: str, dst: str) -> Route:
        """The fastest path for bulk data; computed once per pair and cached."""
        key = (src, dst)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        if src == dst:
            route = Route(src, dst, (), float("inf"), float("inf"), 0.0)
        else:
            path = shortest_path(self.adjacency, src, dst)
            if path is None:
                raise NoRouteError(f"no route from {src} to {dst} in rig {self.name}")
            hops = []
            for u, v in itertools.pairwise(path):
                link = self.links[self.adjacency[u][v][1]]
                hops.append(Hop(link.name, forward=(link.a == u)))
            links = [self.links[h.link] for h in hops]
            route = Route(
                src,
                dst,
                tuple(hops),
                bw=min(lk.bw for lk in links),
                pageable_bw=min(lk.pageable_bw for lk in links),
                latency_s=sum(lk.latency_s for lk in links),
            )
        self._routes[key] = route
        return route


def shortest_path(adj: Mapping[str, Mapping[str, tuple[float, str]]], src: str, dst: str) -> list[str] | None:
    """The fastest path from ``src`` to ``dst`` over ``adj`` (weights > 0); None when there is none.

    Bidirectional Dijkstra as networkx's ``shortest_path(G, src, dst, weight=...)`` runs it, step for
    step, so equal-time routes settle the same way and every route (and result) is what it was when
    hetsim used networkx, without its 0.2-0.4 s import on every command."""
    if src not in adj or dst not in adj:
        return None
    if src == dst:
        return [src]
    dists: tuple[dict[str, float], dict[str, float]] = ({}, {})
    preds: tuple[dict[str, str | None], dict[str, str | None]] = ({src: None}, {dst: None})
    seen: tuple[dict[str, float], dict[str, float]] = ({src: 0.0}, {dst: 0.0})
    pushed = itertools.count()
    fringe: tuple[list[tuple[float, int, str]], list[tuple[float, int, str]]] = (
        [(0.0, next(pushed), src)],
        [(0.0, next(pushed), dst)],
    )
    best: float | None = None
    meet = ""
    side = 1
    while fringe[0] and fringe[1]:
        side = 1 - side  # alternate: forward from src, backward from dst
        d, _, v = heappop(fringe[side])
        if v in dists[side]:
            continue
        dists[side][v] = d
        if v in dists[1 - side]:  # settled from both ends: the best meeting point is the path
            return _walk(preds[0], meet)[::-1] + _walk(preds[1], preds[1][meet])
        for u, (w, _) in adj[v].items():
            du = d + w
            if u in dists[side]:
                continue
            if u not in seen[side] or du < seen[side][u]:
                seen[side][u] = du
                heappush(fringe[side], (du, next(pushed), u))
                preds[side][u] = v
                if u in seen[1 - side]:
                    through = du + seen[1 - side][u]
                    if best is None or best > through:
                        best, meet = through, u
    return None


def _walk(preds: Mapping[str, str | None], node: str | None) -> list[str]:
    out: list[str] = []
    while node is not None:
        out.append(node)
        node = preds[node]
    return out
