"""A whole machine or cluster: devices, disks, links, and the routes between them."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from hetsim.hardware.types import ComputeDevice, Disk, Grade, Hop, Link, Node, Route

# Routes are chosen to minimise the time to move this many bytes (latency + size/bandwidth):
# big enough that bandwidth dominates, as it does for weights and KV cache.
_ROUTE_PROBE_BYTES = 1e6


if TYPE_CHECKING:
    import networkx as nx


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
    def graph(self) -> nx.Graph:
        import networkx as nx  # ~0.4 s to import: only when a route is first needed

        g = nx.Graph()
        for link in self.links.values():
            weight = link.latency_s + _ROUTE_PROBE_BYTES / link.bw
            if g.has_edge(link.a, link.b) and g[link.a][link.b]["weight"] <= weight:
                continue
            g.add_edge(link.a, link.b, link=link.name, weight=weight)
        return g

    def route(self, src: str, dst: str) -> Route:
        """The fastest path for bulk data; computed once per pair and cached."""
        key = (src, dst)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        if src == dst:
            route = Route(src, dst, (), float("inf"), float("inf"), 0.0)
        else:
            try:
                import networkx as nx

                path = nx.shortest_path(self.graph, src, dst, weight="weight")
            except (nx.NetworkXNoPath, nx.NodeNotFound) as exc:
                raise NoRouteError(f"no route from {src} to {dst} in rig {self.name}") from exc
            hops = []
            for u, v in itertools.pairwise(path):
                link = self.links[self.graph[u][v]["link"]]
                hops.append(Hop(link.name, forward=(link.a == u)))
            dirs = [(self.links[h.link], h.forward) for h in hops]
            route = Route(
                src,
                dst,
                tuple(hops),
                bw=min(lk.rate(fwd) for lk, fwd in dirs),
                pageable_bw=min(lk.rate(fwd, pinned=False) for lk, fwd in dirs),
                latency_s=sum(lk.latency_s for lk, _ in dirs),
            )
        self._routes[key] = route
        return route
