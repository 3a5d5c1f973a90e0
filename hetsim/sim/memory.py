"""Memory ledgers: every device's bytes in use over time, with a hard capacity."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from hetsim.units import fmt_bytes

# The least GPU memory budget (bytes): under a megabyte no model's working set (activations and runtime
# alone) fits, so such a budget is a missing unit (``--gpu-mem-budget 24``, a plan file's ``24``: bytes),
# refused rather than run to an out-of-memory result.
MIN_GPU_MEM_BUDGET = 1e6
# The most: an exabyte, the bound of any size in a rig file (``hardware.schema.Bytes``). A budget above
# a GPU's memory runs as that memory (``usable_bytes``); one past any memory (1e308 bytes) is a typo,
# and its note quoted 5e21 TB.
MAX_GPU_MEM_BUDGET = 1e18


def budget_problem(budget: float, must: str = "a positive finite size") -> str | None:
    """Why ``budget`` (bytes) is no GPU memory budget, or None (``must``: what it must be, in the
    words of the input that gave it)."""
    if not (budget > 0 and math.isfinite(budget)):
        return f"must be {must}, got {budget}"
    if too_small(budget):
        return f"{budget:g} bytes is below any model's working set (at least 1 MB): a size in bytes"
    if budget > MAX_GPU_MEM_BUDGET:
        return f"{budget:g} bytes is past any memory (at most {MAX_GPU_MEM_BUDGET:g}, an exabyte)"
    return None


def too_small(budget: float) -> bool:
    """A positive budget under any model's working set: most likely a size missing its unit."""
    return 0 < budget < MIN_GPU_MEM_BUDGET


class OutOfMemory(Exception):
    """A plan asked for more memory than a device has; the run becomes infeasible."""

    def __init__(self, device: str, tag: str, requested: float, used: float, capacity: float):
        self.device = device
        self.tag = tag
        self.requested = requested
        self.used = used
        self.capacity = capacity
        super().__init__(
            f"out of memory on {device}: {tag} needs {fmt_bytes(requested)} with {fmt_bytes(used)} "
            f"of {fmt_bytes(capacity)} in use ({fmt_bytes(used + requested - capacity)} short)"
        )


def usable_bytes(capacity: float, budget: float | None) -> float:
    """The bytes a plan may hold on a GPU of ``capacity`` bytes under a memory budget (None: none).

    A budget means "use at most this much": one above what the GPU holds is no error, the GPU's own
    size binds (``--gpu-mem-budget 24GB`` on a 23.2 GB A10 runs as 23.2 GB). The one home of that
    rule: the flag (``api.with_gpu_mem_budget``), a plan's ``gpu_mem_budget`` (``check_budget``) and
    the planners that size a plan to a budget (HeteGen's knapsack, FlexGen's LP, Accelerate's fill)."""
    return capacity if budget is None else min(budget, capacity)


def check_budget(
    device: str,
    what: str,
    tags: Mapping[str, float],
    budget: float | None,
    capacity: float,
    rel_tol: float = 0.0,
) -> None:
    """A plan's own memory budget on ``device`` (``gpu_mem_budget``; one above the device's
    ``capacity`` is clamped to it, ``usable_bytes``): ``OutOfMemory`` when the bytes it holds there
    exceed it; None means no budget (the engine's ledger holds the plan to the capacity)."""
    if budget is None:
        return
    limit = usable_bytes(capacity, budget)
    need = sum(tags.values())
    if need > limit * (1 + rel_tol):
        raise OutOfMemory(device, what, need, 0.0, limit)


@dataclass
class _Account:
    capacity: float
    used: float = 0.0
    peak: float = 0.0


class MemoryLedger:
    def __init__(self, capacities: dict[str, float], clock, keep_timeline: bool = False):
        self._accounts = {name: _Account(cap) for name, cap in capacities.items()}
        self._tags: dict[tuple[str, str], float] = defaultdict(float)
        self._clock = clock
        self.timeline: list[tuple[float, str, float]] | None = [] if keep_timeline else None

    def reset(self) -> None:
        """Nothing held, as when made (the same capacities)."""
        for acc in self._accounts.values():
            acc.used = acc.peak = 0.0
        self._tags.clear()
        if self.timeline is not None:
            self.timeline.clear()

    def alloc(self, device: str, nbytes: float, tag: str) -> None:
        if nbytes <= 0:
            return
        acc = self._accounts[device]
        if acc.used + nbytes > acc.capacity * (1 + 1e-12):
            raise OutOfMemory(device, tag, nbytes, acc.used, acc.capacity)
        acc.used += nbytes
        acc.peak = max(acc.peak, acc.used)
        self._tags[(device, tag)] += nbytes
        self._record(device, acc.used)

    def free(self, device: str, tag: str, nbytes: float | None = None) -> None:
        """Release ``nbytes`` of ``tag`` on ``device`` (all of it when ``nbytes`` is None)."""
        held = self._tags.get((device, tag), 0.0)
        amount = held if nbytes is None else min(nbytes, held)
        if amount <= 0:
            return
        self._tags[(device, tag)] = held - amount
        acc = self._accounts[device]
        acc.used -= amount
        self._record(device, acc.used)

    def used(self, device: str) -> float:
        return self._accounts[device].used

    def capacity(self, device: str) -> float:
        return self._accounts[device].capacity

    def peaks(self) -> dict[str, float]:
        return {name: acc.peak for name, acc in self._accounts.items() if acc.peak > 0}

    def _record(self, device: str, used: float) -> None:
        if self.timeline is not None:
            self.timeline.append((self._clock(), device, used))
