"""Alpha-beta cost of collectives between P ranks.

alpha = per-message latency (link latency plus software), beta = bytes/s of the slowest link.
The cheaper of ring and recursive doubling is taken, as NCCL and oneCCL pick an algorithm
by message size:

    ring all-reduce:        2 (P - 1) (alpha + m / (P beta))
    recursive doubling:     ceil(log2 P) (alpha + m / beta)
    ring all-gather:        (P - 1) (alpha + m_rank / beta)
    send/recv:              alpha + m / beta

A link kind with a measured all-reduce for the group's world size (``Link.allreduce``, fitted to
NCCL) uses that line instead: latency + m / bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CollectiveCost:
    time_s: float
    algorithm: str


Fit = tuple[float, float]  # measured all-reduce line: (latency s, bytes/s)


def allreduce_time(
    ranks: int, nbytes: float, alpha_s: float, beta_bps: float, fit: Fit | None = None
) -> CollectiveCost:
    if ranks <= 1 or nbytes <= 0:
        return CollectiveCost(0.0, "none")
    if fit is not None:
        return CollectiveCost(fit[0] + nbytes / fit[1], "measured")
    ring = 2 * (ranks - 1) * (alpha_s + nbytes / (ranks * beta_bps))
    doubling = math.ceil(math.log2(ranks)) * (alpha_s + nbytes / beta_bps)
    if doubling <= ring:
        return CollectiveCost(doubling, "recursive-doubling")
    return CollectiveCost(ring, "ring")


def allgather_time(
    ranks: int, nbytes_per_rank: float, alpha_s: float, beta_bps: float, fit: Fit | None = None
) -> CollectiveCost:
    """``fit`` (an all-reduce measurement) does not apply to all-gathers and is ignored."""
    if ranks <= 1 or nbytes_per_rank <= 0:
        return CollectiveCost(0.0, "none")
    return CollectiveCost((ranks - 1) * (alpha_s + nbytes_per_rank / beta_bps), "ring")


def send_time(nbytes: float, alpha_s: float, beta_bps: float) -> CollectiveCost:
    if nbytes <= 0:
        return CollectiveCost(0.0, "none")
    return CollectiveCost(alpha_s + nbytes / beta_bps, "p2p")
