"""Which replica gets a request.

- ``weighted`` (default): the replica with the fewest outstanding requests per unit of speed
  (join-the-shortest-queue weighted by each replica's decode rate), ties to the lowest index;
- ``round-robin``: HexGen's coordinator (hexgen.md §1).
"""

from __future__ import annotations

from collections.abc import Sequence

from hetsim.errors import InputError
from hetsim.serving.batching import ReplicaServer

POLICIES = ("weighted", "round-robin")


class Dispatcher:
    def __init__(self, servers: Sequence[ReplicaServer], speeds: Sequence[float], policy: str = "weighted"):
        if policy not in POLICIES:
            raise InputError(f"unknown policy {policy!r} (use {', '.join(POLICIES)})", field="--dispatch")
        self.servers, self.speeds, self.policy = list(servers), list(speeds), policy
        self._next = 0

    def choose(self) -> ReplicaServer:
        if self.policy == "round-robin":
            s = self.servers[self._next % len(self.servers)]
            self._next += 1
            return s
        return min(self.servers, key=lambda s: ((s.outstanding + 1) / self.speeds[s.index], s.index))
