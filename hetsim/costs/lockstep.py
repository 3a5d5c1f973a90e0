"""A tensor-parallel group in lockstep: the ring it all-reduces over, and how long a span takes.

One home for the formulas that both the engine (``Engine.lockstep``) and the HexGen planner's cost
table use, so that the planner's per-layer time is the engine's duration, not a copy of it:

    ring:      alpha = worst route latency, beta = slowest route bandwidth, over both directions
               of every hop of the ring d0 -> d1 -> ... -> d0
    duration = busy + straggle x busy + comm

``straggle`` is the node's measured ``straggler_fraction`` (the worst in the group): at every
collective the group waits for its slowest rank, a share of the compute before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from hetsim.costs.collectives import Fit
from hetsim.hardware.rig import Rig


def ring_alpha_beta(rig: Rig, devices: Sequence[str]) -> tuple[float, float]:
    """Worst latency (s) and bandwidth (bytes/s) of a ring over ``devices``, both directions."""
    alpha, beta = 0.0, float("inf")
    for i, a in enumerate(devices):
        b = devices[(i + 1) % len(devices)]
        for route in (rig.route(a, b), rig.route(b, a)):
            alpha = max(alpha, route.latency_s)
            beta = min(beta, route.bw)
    return alpha, beta


def ring_allreduce_fit(rig: Rig, devices: Sequence[str]) -> Fit | None:
    """The measured all-reduce line for this many ranks when every link of the ring has one (the
    worst latency and bandwidth among them), with the measured medians when every link carries the
    same table; None when any link lacks a line (use the ring formula)."""
    ranks = len(devices)
    lat, bw = 0.0, float("inf")
    table: tuple | None = None
    same = True
    for i, a in enumerate(devices):
        b = devices[(i + 1) % len(devices)]
        for route in (rig.route(a, b), rig.route(b, a)):
            for hop in route.hops:
                link = rig.links[hop.link]
                fit = link.allreduce.get(ranks)
                if fit is None:
                    return None
                lat, bw = max(lat, fit[0]), min(bw, fit[1])
                t = link.allreduce_table.get(ranks, ((), ()))
                same = same and (table is None or t is table)  # one parsed table, shared by the links
                table = t
    if bw == float("inf"):
        return None
    if not same or table is None:  # links measured apart: the line only
        table = ((), ())
    return Fit(lat, bw, *table)


def straggler_share(rig: Rig, devices: Sequence[str]) -> float:
    """The share of each compute segment a lockstep group waits for its slowest rank."""
    return max(rig.nodes[rig.devices[d].node].straggler_fraction for d in devices)


def lockstep_wait(busy_s: float, straggle: float) -> float:
    """Time the group spends waiting for stragglers over ``busy_s`` of compute."""
    return straggle * busy_s


def lockstep_duration(busy_s: float, comm_s: float, straggle: float) -> float:
    """A lockstep span: the compute, the wait for the slowest rank at each collective, the collectives."""
    return busy_s + lockstep_wait(busy_s, straggle) + comm_s
