"""Which replica gets a request.

- ``least-latency`` (default): the replica whose predicted time for a new request is lowest: its
  decode step time at the batch the request would join (from the engine's cost functions), times
  the waves of batches ahead of it once its in-flight batches are full. Decode is parameter-scan
  bound, so joining a running batch on a fast replica usually beats an idle slow one;
- ``weighted``: fewest outstanding requests per unit of replica speed (join-the-shortest-queue);
- ``round-robin``: HexGen's coordinator (HexGen, arXiv 2311.11514);
- ``earliest-available``: HexGen's serving simulator (the replica whose clock frees first): the
  fewest waves of full batches ahead of the request, times the replica's decode step; among
  replicas with a free slot now, the fastest.
Ties go to the lowest replica index, so runs are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hetsim.errors import InputError
from hetsim.serving.batching import ReplicaServer

POLICIES = ("least-latency", "weighted", "round-robin", "earliest-available")


class Dispatcher:
    def __init__(
        self,
        servers: Sequence[ReplicaServer],
        step_times: Sequence[Sequence[float]],
        policy: str = "least-latency",
    ):
        """``step_times[r][b - 1]``: replica r's decode step with a batch of b sequences per loop."""
        if policy not in POLICIES:
            raise InputError(f"unknown policy {policy!r} (use {', '.join(POLICIES)})", field="--dispatch")
        self.servers, self.step_times, self.policy = list(servers), [list(t) for t in step_times], policy
        self._next = 0

    def predicted(self, s: ReplicaServer) -> float:
        n = s.outstanding + 1
        per_loop = min(s.plan.max_batch, math.ceil(n / s.loops))
        waves = math.ceil(n / (s.plan.max_batch * s.loops))
        return self.step_times[s.index][per_loop - 1] * waves

    def wait(self, s: ReplicaServer) -> float:
        """Predicted wait before a new request starts: whole waves of full batches ahead of it."""
        waves_ahead = s.outstanding // (s.plan.max_batch * s.loops)
        return waves_ahead * self.step_times[s.index][0]

    def choose(self) -> ReplicaServer:
        if self.policy == "round-robin":
            s = self.servers[self._next % len(self.servers)]
            self._next += 1
            return s
        if self.policy == "earliest-available":
            return min(self.servers, key=lambda s: (self.wait(s), self.step_times[s.index][0], s.index))
        if self.policy == "weighted":
            return min(
                self.servers, key=lambda s: ((s.outstanding + 1) * self.step_times[s.index][0], s.index)
            )
        return min(self.servers, key=lambda s: (self.predicted(s), s.index))
