"""Alpha-beta cost of collectives between P ranks.

alpha = per-message latency (link latency plus software), beta = bytes/s of the slowest link.
The cheaper of ring and recursive doubling is taken, as NCCL and oneCCL pick an algorithm
by message size:

    ring all-reduce:        2 (P - 1) (alpha + m / (P beta))
    recursive doubling:     ceil(log2 P) (alpha + m / beta)
    ring all-gather:        (P - 1) (alpha + m_rank / beta)
    send/recv:              alpha + m / beta

A link kind with a measured all-reduce for the group's world size (``Link.allreduce``, fitted to
NCCL) uses that line instead: latency + m / bandwidth. Where the rig also carries the measured
medians (``Link.allreduce_table``), a message inside their size range costs the measured time,
log-log between the two measured sizes around it: NCCL switches protocol and algorithm by size,
in steps a line cannot follow. Outside the measured range the line applies.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class CollectiveCost:
    time_s: float
    algorithm: str


class Fit(NamedTuple):
    """A measured all-reduce at one world size: the fitted line, and the measured medians (log bytes
    ascending, log seconds; empty when the rig has none). A plain (latency, bandwidth) pair is a
    line alone."""

    latency_s: float
    bandwidth: float  # bytes/s
    log_bytes: tuple[float, ...] = ()
    log_seconds: tuple[float, ...] = ()


def measured_allreduce_s(fit: Fit | tuple[float, float], nbytes: float) -> float:
    """Inside the measured sizes: log-log between the two around ``nbytes``; else the line."""
    lat, bw, *table = fit
    if table and table[0]:
        xs, ys = table
        x = math.log(nbytes)
        if xs[0] <= x <= xs[-1]:
            i = min(bisect_right(xs, x), len(xs) - 1)
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            w = (x - x0) / (x1 - x0) if x1 > x0 else 0.0
            return math.exp(y0 + w * (y1 - y0))
    return lat + nbytes / bw


def allreduce_time(
    ranks: int, nbytes: float, alpha_s: float, beta_bps: float, fit: Fit | tuple[float, float] | None = None
) -> CollectiveCost:
    if ranks <= 1 or nbytes <= 0:
        return CollectiveCost(0.0, "none")
    if fit is not None:
        return CollectiveCost(measured_allreduce_s(fit, nbytes), "measured")
    ring = 2 * (ranks - 1) * (alpha_s + nbytes / (ranks * beta_bps))
    doubling = math.ceil(math.log2(ranks)) * (alpha_s + nbytes / beta_bps)
    if doubling <= ring:
        return CollectiveCost(doubling, "recursive-doubling")
    return CollectiveCost(ring, "ring")


def allgather_time(
    ranks: int,
    nbytes_per_rank: float,
    alpha_s: float,
    beta_bps: float,
    fit: Fit | tuple[float, float] | None = None,
) -> CollectiveCost:
    """``fit`` (an all-reduce measurement) does not apply to all-gathers and is ignored."""
    if ranks <= 1 or nbytes_per_rank <= 0:
        return CollectiveCost(0.0, "none")
    return CollectiveCost((ranks - 1) * (alpha_s + nbytes_per_rank / beta_bps), "ring")


def send_time(nbytes: float, alpha_s: float, beta_bps: float) -> CollectiveCost:
    if nbytes <= 0:
        return CollectiveCost(0.0, "none")
    return CollectiveCost(alpha_s + nbytes / beta_bps, "p2p")
