"""A whole machine or cluster: devices, disks, links, and the routes between them."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from hetsim.hardware.types import ComputeDevice, Disk, Grade, Hop, Link, Node, Route

# Routes are chosen to minimise the time to move this many bytes (latency + size/bandwidth):
# big enough that bandwidth dominates, as it does for weights and KV cache.
_ROUTE_PROBE_BYTES = 1e6


if TYPE_CHECKING:
    import networkx as nx


class NoRouteError(LookupError):
    """No path in the rig between two endpoints (an infeasible placement, not a crash)."""


# ---- what a computation read of a rig -----------------------------------------------------------------
# A sweep's rigs differ from one another in a few links or devices; a point that never read what
# differs (a one-GPU plan and the NICs) has the same answer on both. ``reading()`` records what is
# read of a rig's links, which are most of what sweep knobs change (``agrees`` compares devices,
# nodes and disks whole): each link looked up, each route asked for (its value, not the links the
# search for it scanned), the links ``weakest_grade`` matched, or the whole table when it was
# iterated. Per thread: Dask runs points in threads.
_MISSING: Any = object()
_LOCAL = threading.local()


class ReadLog:
    """The links, routes and graded link sets a computation read (``reading``)."""

    __slots__ = ("all_links", "graded", "links", "routes")

    def __init__(self) -> None:
        self.links: dict[str, Any] = {}  # name -> the Link object read, or _MISSING
        self.routes: dict[tuple[str, str], Any] = {}  # (src, dst) -> its Route, or the NoRouteError text
        self.graded: dict[frozenset[str], tuple[Link, ...]] = {}  # weakest_grade's names -> links matched
        self.all_links = False  # the whole link table was read


@contextmanager
def reading() -> Iterator[ReadLog]:
    """Record, in the returned log, what the block reads of rigs' links (nested blocks each get all)."""
    logs = getattr(_LOCAL, "logs", None)
    if logs is None:
        logs = _LOCAL.logs = []
    log = ReadLog()
    logs.append(log)
    try:
        yield log
    finally:
        logs.remove(log)


def replay(log: ReadLog) -> None:
    """Tell the active ``reading()`` logs what ``log`` recorded: a number remembered per rig object
    (worked out once under ``reading()``) reads that much of the rig each time it is used, or a point
    that finds it made by an earlier point records too little."""
    for into in _logs():
        into.links.update(log.links)
        into.routes.update(log.routes)
        into.graded.update(log.graded)
        into.all_links = into.all_links or log.all_links


def _logs() -> list[ReadLog]:
    return getattr(_LOCAL, "logs", None) or []


def _note_all() -> None:
    for log in _logs():
        log.all_links = True


class LinkTable(Mapping[str, Link]):
    """A rig's links, read-only; reads are told to the active ``reading()`` logs."""

    __slots__ = ("_links",)

    def __init__(self, links: Mapping[str, Link]):
        self._links: dict[str, Link] = dict(links._links if isinstance(links, LinkTable) else links)

    def __getitem__(self, name: str) -> Link:
        link = self._links.get(name, _MISSING)
        for log in _logs():
            log.links[name] = link
        if link is _MISSING:
            raise KeyError(name)
        return link

    def __contains__(self, name: object) -> bool:
        link = self._links.get(name, _MISSING)  # type: ignore[call-overload]
        for log in _logs():
            log.links[name] = link  # type: ignore[index]
        return link is not _MISSING

    def __iter__(self) -> Iterator[str]:
        _note_all()
        return iter(self._links)

    def __len__(self) -> int:
        _note_all()
        return len(self._links)

    def values(self):  # type: ignore[override]
        _note_all()
        return self._links.values()

    def items(self):  # type: ignore[override]
        _note_all()
        return self._links.items()

    def __repr__(self) -> str:
        return repr(self._links)


def agrees(log: ReadLog, then: Rig, now: Rig) -> bool:
    """Whether ``now`` answers every read ``log`` recorded on ``then`` as ``then`` did: the same
    name and source, the same device, node and disk objects in the same order, the same link objects
    where links were read (all of them if the table was iterated), equal routes and the same graded
    link sets. Call it outside ``reading()`` blocks (it asks ``now`` for routes)."""
    if now is then:
        return True
    if now.name != then.name or now.source != then.source:
        return False
    old, new = then.links._links, now.links._links  # type: ignore[attr-defined]
    pairs = [(then.devices, now.devices), (then.nodes, now.nodes), (then.disks, now.disks)]
    if not all(_same_objects(a, b) for a, b in (*pairs, *([(old, new)] if log.all_links else []))):
        return False
    if any(new.get(name, _MISSING) is not link for name, link in log.links.items()):
        return False
    for names, matched in log.graded.items():
        if not _same_objects(dict(enumerate(now._graded_links(names))), dict(enumerate(matched))):
            return False
    return all(now._route_answer(*pair) == answer for pair, answer in log.routes.items())


def _same_objects(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> bool:
    """The same keys in the same order, each with the same object."""
    return len(a) == len(b) and all(
        k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(a.items(), b.items(), strict=True)
    )


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

    def __post_init__(self) -> None:
        if not isinstance(self.links, LinkTable):  # reads of the links are told to ``reading()``
            object.__setattr__(self, "links", LinkTable(self.links))

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
        if names is None:
            items = [*self.devices.values(), *self.disks.values(), *self.links.values()]
        else:
            wanted = frozenset(names)
            items = [i for i in (*self.devices.values(), *self.disks.values()) if i.name in wanted]
            matched = self._graded_links(wanted)
            for log in _logs():
                log.graded[wanted] = matched
            items += matched
        grades = [p.grade for i in items for p in i.provenance.values()]
        return min(grades, default=Grade.ASSUMED)

    def _graded_links(self, wanted: frozenset[str]) -> tuple[Link, ...]:
        return tuple(lk for lk in self.links._links.values() if lk.name in wanted)  # type: ignore[attr-defined]

    # ---- topology -------------------------------------------------------------------------
    @property
    def graph(self) -> nx.Graph:
        _note_all()
        return self._graph

    @cached_property
    def _graph(self) -> nx.Graph:
        import networkx as nx  # ~0.4 s to import: only when a route is first needed

        g = nx.Graph()
        for link in self.links._links.values():  # type: ignore[attr-defined]
            weight = link.latency_s + _ROUTE_PROBE_BYTES / link.bw
            if g.has_edge(link.a, link.b) and g[link.a][link.b]["weight"] <= weight:
                continue
            g.add_edge(link.a, link.b, link=link.name, weight=weight)
        return g

    def route(self, src: str, dst: str) -> Route:
        """The fastest path for bulk data; computed once per pair and cached."""
        logs = _logs()
        if not logs:
            return self._find_route(src, dst)
        # the route's value is what the reader read, not the links scanned to find it
        answer = self._route_answer(src, dst)
        for log in logs:
            log.routes[src, dst] = answer
        if isinstance(answer, str):
            raise NoRouteError(answer)
        return answer

    def copy_bw(self, src: str, dst: str, pinned: bool = True) -> float:
        """A bulk copy's rate from ``src`` to ``dst``: its route's (from pinned or pageable host
        memory), no faster than a disk at either end reads or writes."""
        route = self.route(src, dst)
        rate = route.bw if pinned else route.pageable_bw
        if src in self.disks:
            rate = min(rate, self.disks[src].read_bw)
        if dst in self.disks:
            rate = min(rate, self.disks[dst].write_bw)
        return rate

    def _route_answer(self, src: str, dst: str) -> Route | str:
        """The route, or the NoRouteError's text."""
        try:
            return self._find_route(src, dst)
        except NoRouteError as exc:
            return str(exc)

    def _find_route(self, src: str, dst: str) -> Route:
        key = (src, dst)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        if src == dst:
            route = Route(src, dst, (), float("inf"), float("inf"), 0.0)
        else:
            try:
                import networkx as nx

                path = nx.shortest_path(self._graph, src, dst, weight="weight")
            except (nx.NetworkXNoPath, nx.NodeNotFound) as exc:
                raise NoRouteError(f"no route from {src} to {dst} in rig {self.name}") from exc
            links = self.links._links  # type: ignore[attr-defined]
            hops = []
            for u, v in itertools.pairwise(path):
                link = links[self._graph[u][v]["link"]]
                hops.append(Hop(link.name, forward=(link.a == u)))
            dirs = [(links[h.link], h.forward) for h in hops]
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
