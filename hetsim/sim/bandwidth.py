"""DRAM bandwidth of one socket, shared by CPU ops and DMA, booked first come, first served.

A CPU op streaming weights and a PCIe copy reading pinned host memory draw on the same memory
channels. The timeline holds the rate already booked over time (piecewise constant); a new flow
takes what earlier bookings leave, up to its own ceiling (the op's achievable rate, the link's
rate), so its end time is known the moment it is issued. That keeps the engine at one SimPy event
per task. The approximation versus a fair-share fluid model: a flow issued later never slows one
issued earlier.
"""

from __future__ import annotations

from bisect import bisect_right

from hetsim.hardware.rig import Rig

# Below this rate a segment counts as saturated (bytes/s).
_SATURATED = 1.0
_INF = float("inf")


def host_dram_bw(rig: Rig, cpu: str) -> float:
    """The DRAM rate of ``cpu``'s timeline (bytes/s): its own, or, for CPU entries that are slices of
    one socket, the node's shared rate (else the first slice's)."""
    node = rig.nodes[rig.devices[cpu].node]
    if node.cpu_sharing != "none" and len(node.cpus) > 1:
        if node.shared_dram_bw > 0:
            return node.shared_dram_bw
        cpu = node.cpus[0]
    dev = rig.devices[cpu]
    return dev.mem_bw * dev.efficiency.memory


def overlap_delay(capacity_bps: float, earlier_bps: float, later_cap_bps: float) -> float:
    """Seconds a flow capped at ``later_cap_bps`` ends later per second it runs beside a flow of
    ``earlier_bps`` booked before it, as ``BandwidthTimeline.book`` serves them (first come, first
    served: the later flow takes what is left), when the later flow outlasts the earlier one."""
    full = min(later_cap_bps, capacity_bps)  # its rate alone
    if full <= 0:
        return 0.0
    got = min(full, capacity_bps - min(earlier_bps, capacity_bps))  # its rate beside the earlier
    return (full - got) / full


class BandwidthTimeline:
    def __init__(self, name: str, capacity_bps: float):
        self.name = name
        self.capacity = capacity_bps
        self._times: list[float] = [0.0]  # segment i is [times[i], times[i+1]); the last is open
        self._booked: list[float] = [0.0]
        self.bytes_moved = 0.0

    def reset(self) -> None:
        """Empty, as when made: nothing booked, nothing moved."""
        self._times = [0.0]
        self._booked = [0.0]
        self.bytes_moved = 0.0

    def book(self, now: float, start: float, nbytes: float, cap_bps: float) -> float:
        """Book ``nbytes`` from ``start`` at no more than ``cap_bps``; return the end time."""
        if nbytes <= 0:
            return start
        # The hot path of every DMA and CPU op: ``_prune`` and ``_split`` inlined, same arithmetic;
        # ``x if x < cap else cap`` is ``min(cap, x)`` (the first of equals, as min picks).
        times, booked = self._times, self._booked
        i = bisect_right(times, now) - 1
        if i > 0:
            del times[:i]
            del booked[:i]
        capacity = self.capacity
        cap = capacity if capacity < cap_bps else cap_bps
        if not cap > 0:  # NaN too: such a flow never ends (it returned an end before its start, or NaN)
            raise ValueError(f"{self.name}: a flow capped at {cap_bps} B/s on {capacity} B/s never ends")
        if start >= times[-1] and nbytes < _INF:
            # Starting in the open last segment: the loop below in one step (the same arithmetic;
            # a saturated segment goes the long way).
            rate = capacity - booked[-1]
            if rate > _SATURATED:  # free capacity (an op capped below 1 B/s still moves)
                if not rate < cap:
                    rate = cap
                end = start + nbytes / rate
                if times[-1] != start:
                    times.append(start)
                    booked.append(booked[-1])
                if end != start:
                    times.append(end)
                    booked.append(booked[-1])
                    free = capacity - booked[-2]
                    booked[-2] += free if free < cap else cap
                self.bytes_moved += nbytes
                return end
        i = bisect_right(times, start) - 1
        if times[i] != start:
            times.insert(i + 1, start)
            booked.insert(i + 1, booked[i])
            i += 1
        remaining, t = nbytes, start
        k = i
        n = len(times)
        while True:
            seg_end = times[k + 1] if k + 1 < n else _INF
            rate = capacity - booked[k]
            if rate > _SATURATED:
                if not rate < cap:
                    rate = cap
                if remaining <= rate * (seg_end - t):
                    end = t + remaining / rate
                    break
                remaining -= rate * (seg_end - t)
            t = seg_end
            k += 1
        last = bisect_right(times, end) - 1
        if times[last] != end:
            times.insert(last + 1, end)
            booked.insert(last + 1, booked[last])
            last += 1
        for j in range(i, last):
            free = capacity - booked[j]
            booked[j] += free if free < cap else cap
        self.bytes_moved += nbytes
        return end

    def claim(self, now: float, start: float, end: float, rate: float) -> None:
        """Hold ``rate`` over [``start``, ``end``) whatever is booked there: work that takes its share
        first, never later for what was booked before it; bookings after it find the rest."""
        if end <= start or rate <= 0:
            return
        self._prune(now)
        i = self._split(start)
        for k in range(i, self._split(end)):
            self._booked[k] += rate

    def _split(self, t: float) -> int:
        """Ensure a breakpoint at ``t``; return the index of the segment starting there."""
        i = bisect_right(self._times, t) - 1
        if self._times[i] == t:
            return i
        self._times.insert(i + 1, t)
        self._booked.insert(i + 1, self._booked[i])
        return i + 1

    def _prune(self, now: float) -> None:
        i = bisect_right(self._times, now) - 1
        if i > 0:
            del self._times[:i]
            del self._booked[:i]
