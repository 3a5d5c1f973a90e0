"""The event engine every strategy runs on.

A rig becomes lanes: one compute stream per device, one lane per link direction (PCIe
host-to-device and device-to-host are separate), one read and one write lane per disk, and a
DRAM-bandwidth timeline per CPU socket shared by CPU ops and DMA to or from that socket.

Strategies are SimPy processes that call ``compute``, ``transfer``, ``allreduce``, ``allgather``,
``send``, ``alloc`` and ``free`` and wait on the returned events (``all_of`` to join). Lanes are
FIFO and exclusive: a task reserves every lane it needs from the moment all of them are free, in
the order tasks were issued, so two copies over one link take twice as long as one. Because every
task's start and end are known when it is issued, a task costs one SimPy timeout: the hot path
does no graph look-ups (routes and op costs are cached) and no re-planning.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush
from itertools import count
from operator import attrgetter
from typing import Any

import simpy
from simpy.core import StopSimulation
from simpy.events import NORMAL, PENDING, Timeout

from hetsim.costs.collectives import CollectiveCost, Fit, allgather_time, allreduce_time
from hetsim.costs.lockstep import (
    lockstep_duration,
    lockstep_wait,
    ring_allreduce_fit,
    ring_alpha_beta,
    straggler_share,
)
from hetsim.costs.op_cost import OpCost, block_cost, combine, cost_key, op_cost, repeated, twin_key
from hetsim.hardware.rig import Rig
from hetsim.hardware.types import Route
from hetsim.models.spec import Op
from hetsim.sim.bandwidth import BandwidthTimeline, host_dram_bw
from hetsim.sim.memory import MemoryLedger
from hetsim.sim.trace import TraceRecorder

_LOCKSTEP_CACHE_MAX = 4096
_FREE_AT = attrgetter("free_at")
_new_timeout = object.__new__
_NO_ARGS: dict = {}  # trace arguments of a task booked with no tracer (never read)

Schedule = Callable[["Engine"], Generator[simpy.Event, Any, Any]]

# Float sums over thousands of bookings at a later clock round differently by ~1e-16 each: a floor
# of a run (a lower bound of its times, e.g. from ``compute_floor`` and ``transfer_floor``) is
# lowered by a part in 1e9.
FLOOR_SLACK = 1 - 1e-9


class _Environment(simpy.Environment):
    """SimPy's environment, numbering processes in the order they are made: a schedule's token
    streams (one per process that calls ``token_done``) are then comparable between runs."""

    # ``resume_at`` may move the clock without an event (tests switch it off to hold the two equal).
    skip_events = True

    def __init__(self) -> None:
        super().__init__()
        self.made = 0
        self.done = simpy.Event(self)  # already processed: a process yielding it goes on at once
        self.done._ok = True
        self.done._value = None
        self.done.callbacks = None

    def restart(self) -> None:
        """Back to time 0 with nothing queued and no process made, as when made."""
        self._now = 0
        self._queue = []
        self._eid = count()
        self._active_proc = None
        self.made = 0

    def process(self, generator):  # type: ignore[override]
        proc = super().process(generator)
        proc.hetsim_index = self.made  # type: ignore[attr-defined]
        self.made += 1
        return proc

    def timeout(self, delay=0, value=None):  # type: ignore[override]
        """SimPy's ``timeout`` (the same ``Timeout``, scheduled at ``now + delay`` with the same
        priority and order), without two Python calls per event: the engine makes one per task."""
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        event = _new_timeout(Timeout)
        event.env = self
        event.callbacks = []
        event._value = value
        event._delay = delay
        event._ok = True
        heappush(self._queue, (self._now + delay, NORMAL, next(self._eid), event))
        return event

    def skip_to(self, when: float) -> bool:
        """Move the clock to ``when`` now, for the active process about to yield an event processed
        at ``when``: with no other event queued at or before ``when`` nothing can happen in between,
        so the process may go on at once (yielding ``done``, which SimPy's process loop passes
        straight back: no heap push and pop, no step) at the same time and in the same order.
        False (and the clock unmoved) otherwise: yield the event."""
        queue = self._queue
        if self.skip_events and (not queue or queue[0][0] > when):
            self._now = when
            return True
        return False

    def run(self, until=None):  # type: ignore[override]
        """SimPy's ``run`` until an event (or until nothing is left), with its ``step`` inline: the
        same events processed in the same order, one Python call fewer per event. A time limit
        goes to SimPy's own loop."""
        if until is not None and not isinstance(until, simpy.Event):
            return super().run(until)
        if until is not None:
            if until.callbacks is None:  # already processed
                return until.value
            until.callbacks.append(StopSimulation.callback)
        queue = self._queue
        try:
            while queue:
                self._now, _, _, event = heappop(queue)
                callbacks, event.callbacks = event.callbacks, None
                for callback in callbacks:
                    callback(event)
                if not event._ok and not hasattr(event, "_defused"):  # a failure nobody handled
                    exc = type(event._value)(*event._value.args)
                    exc.__cause__ = event._value
                    raise exc
        except StopSimulation as exc:
            return exc.args[0]
        if until is not None:
            raise RuntimeError(f'No scheduled events left but "until" event was not triggered: {until}')
        return None

    def at(self, when: float) -> simpy.Event:
        """An event processed at exactly ``when`` (not ``now + (when - now)``, which can round)."""
        event = simpy.Event(self)
        event._ok = True
        event._value = None
        heappush(self._queue, (max(when, self._now), NORMAL, next(self._eid), event))
        return event


class AllOf(simpy.Event):
    """SimPy's ``env.all_of`` without its ``Condition`` machinery (a tuple of the events, a callback
    per event that evaluates a predicate, a value built and the callbacks removed when it fires):
    the same event is scheduled at the same moment with the same priority, so every process resumes
    in the same order; it counts down instead, and its value is None (no schedule reads it). A failed
    event fails it, as it fails ``all_of``."""

    def __init__(self, env: simpy.Environment, events: list[simpy.Event]):
        self.env = env  # simpy.Event.__init__, inline
        self.callbacks = []
        self._value = PENDING
        self._left = len(events)
        if not events:
            self.succeed()
            return
        check = self._check
        for event in events:
            if event.callbacks is None:  # already processed
                check(event)
            else:
                event.callbacks.append(check)

    def _check(self, event: simpy.Event) -> None:
        if self._value is not PENDING:
            return
        self._left -= 1
        if not event._ok:
            event._defused = True
            self.fail(event._value)
        elif not self._left:  # succeed(), inline
            self._ok = True
            self._value = None
            env = self.env
            heappush(env._queue, (env._now, NORMAL, next(env._eid), self))


class Lane:
    """An exclusive FIFO resource whose future is booked ahead (``free_at``)."""

    __slots__ = ("busy_s", "free_at", "memory_bound_s", "name")

    def __init__(self, name: str):
        self.name = name
        self.free_at = 0.0
        self.busy_s = 0.0
        self.memory_bound_s = 0.0  # compute streams: busy time in memory-bound ops


@dataclass(frozen=True)
class TransferPath:
    """Everything a copy between two endpoints needs, resolved once per (src, dst, pinned)."""

    lanes: tuple[Lane, ...]
    route: Route
    rate: float  # bytes/s ceiling: route bottleneck and disk bandwidth
    host_side: BandwidthTimeline | None  # the DRAM the copy reads or writes, if any
    latency_s: float


@dataclass(frozen=True)
class _LockstepFixed:
    """The clock-independent part of one ``Engine.lockstep`` call (see ``Engine.lockstep_fixed``)."""

    single: OpCost | None  # one rank: the whole call is this cost on its compute stream
    bytes_moved: tuple[float, ...]  # all-reduce traffic, added one by one (same sums to the bit)
    compute_s: float  # one repeat's compute, the slowest rank per block
    comm_s: float  # one repeat's all-reduces
    traffic: tuple[tuple[BandwidthTimeline, float, float], ...]  # (DRAM, bytes, rate cap) per socket
    straggle: float
    lanes: tuple[Lane, ...]
    link_lanes: tuple[Lane, ...]  # the lanes that are not compute streams
    memory_bound: tuple[tuple[Lane, float], ...]  # per rank: repeat x its memory-bound time
    compute_lanes: tuple[Lane, ...] = ()  # the ranks' compute streams (each once), in ``lanes`` order


_CORE_NS = 1e9  # a cores timeline's capacity: ns of all-core work per second (``Engine.share_cores``)
_CostKey = tuple[str, "Op | tuple[Op, ...]"]
# (by value, by the identity of the ops object, each device's twin: the first device whose op costs
# are its own, ``twin_key``)
_CostCaches = tuple[dict[_CostKey, OpCost], dict[tuple[str, int], tuple[Any, OpCost]], dict[str, str]]
# Op costs are a pure function of the devices and the ops: engines on the same rig object (a
# search's candidates, a serving run's bisection, HeteGen's split measurements) share them, and so do
# rigs whose devices op costs cannot tell apart (``cost_key``: a sweep's rigs that differ in links or
# GPU memory size). By the rig's identity, holding the rig so the id stays its own, the caches of the
# rig's devices; the few latest rigs and device sets are kept.
_RIG_COSTS: dict[
    int, tuple[Rig, dict[_CostKey, OpCost], dict[tuple[str, int], tuple[Any, OpCost]], dict[str, str]]
] = {}
_DEVICE_COSTS: dict[Hashable, _CostCaches] = {}
_RIG_COSTS_MAX_RIGS = 4
_RIG_COSTS_MAX_ENTRIES = 65536
# Misses are filled and evicted under one lock: a Dask worker runs points in threads, and two threads
# evicting the same oldest entry at once would raise KeyError.
_RIG_COSTS_LOCK = threading.Lock()


def _bound(memory_bound_s: float, busy_s: float) -> str:
    return "memory-bound" if memory_bound_s >= 0.5 * busy_s else "compute-bound"


def phase_bound(
    busy_s: float, memory_bound_s: float, prefill_busy_s: float, prefill_memory_bound_s: float
) -> str:
    """A compute stream's bound from its busy and memory-bound seconds, per phase where prefill (the
    seconds booked before the first token) and decode (the rest) differ."""
    phases = [
        (name, _bound(m, b))
        for name, b, m in (
            ("prefill", prefill_busy_s, prefill_memory_bound_s),
            ("decode", busy_s - prefill_busy_s, memory_bound_s - prefill_memory_bound_s),
        )
        if b > 1e-12 * busy_s
    ]
    if len({bound for _, bound in phases}) > 1:
        return ", ".join(f"{bound} {name}" for name, bound in phases)
    return _bound(memory_bound_s, busy_s)


def _rig_costs(rig: Rig) -> _CostCaches:
    """The op-cost caches (by value, and by the identity of the ops object) of engines on ``rig``, and
    its devices' twins."""
    hit = _RIG_COSTS.get(id(rig))
    if hit is not None and hit[0] is rig and len(hit[1]) + len(hit[2]) <= _RIG_COSTS_MAX_ENTRIES:
        return hit[1], hit[2], hit[3]
    with _RIG_COSTS_LOCK:
        return _rig_costs_miss(rig)


def rig_cost(rig: Rig, device: str, ops: Op | tuple[Op, ...]) -> OpCost:
    """``Engine.cost_of`` without an engine, from the same caches (``_rig_costs``): a planner's cost
    model (the FlexGen LP's) and the engines that run its plans share one memo of op costs."""
    caches = _rig_costs(rig)
    by_id = caches[1].get((device, id(ops)))
    if by_id is not None and by_id[0] is ops:
        return by_id[1]
    return _cost_by_value(rig, caches, device, ops)


def _cost_by_value(rig: Rig, caches: _CostCaches, device: str, ops: Op | tuple[Op, ...]) -> OpCost:
    """The cost of ``ops`` on ``device`` found (or worked out) by value, then kept by the ops object's
    identity too. Hashing a tuple of ops hashes every op (dataclass hashes are not cached), and
    equal-but-distinct tuples then compare field by field: callers look up by identity first. The
    identity entry holds the ops object, so its id cannot be reused while cached."""
    costs, by_id, twins = caches
    key = (device, ops)
    cost = costs.get(key)
    if cost is None:
        # a twin's cost (a rig's identical socket or card) is this device's: worked out by the
        # device that asks first (an error names it), kept under the twin's name for the others
        twin = twins.get(device, device)
        cost = costs.get((twin, ops)) if twin != device else None
        if cost is None:
            dev = rig.devices[device]
            if isinstance(ops, Op):
                cost = op_cost(dev, ops)
            else:
                # each op's cost by its value too: a block of a new shape (a decode step's next
                # KV length) repeats all but its attention op, whose costs are known (~6 us each)
                def one(op: Op) -> OpCost:
                    hit = costs.get((twin, op))
                    if hit is None:
                        hit = costs[twin, op] = op_cost(dev, op)
                    return hit

                cost = block_cost(dev, ops, one)
            costs[twin, ops] = cost
        costs[key] = cost
    by_id[device, id(ops)] = (ops, cost)
    return cost


def _rig_costs_miss(rig: Rig) -> _CostCaches:
    hit = _RIG_COSTS.get(id(rig))  # again, under the lock: another thread may have filled it
    if hit is not None and hit[0] is rig and len(hit[1]) + len(hit[2]) <= _RIG_COSTS_MAX_ENTRIES:
        return hit[1], hit[2], hit[3]
    if hit is None and len(_RIG_COSTS) >= _RIG_COSTS_MAX_RIGS:
        del _RIG_COSTS[next(iter(_RIG_COSTS))]  # the oldest
    keys = tuple(cost_key(dev) for dev in rig.devices.values())
    key = None if None in keys else keys
    caches = _DEVICE_COSTS.get(key) if key is not None else None
    if caches is None or len(caches[0]) + len(caches[1]) > _RIG_COSTS_MAX_ENTRIES:
        firsts: dict[Hashable, str] = {}
        twins = {}
        for dev in rig.devices.values():
            twin = twin_key(dev)
            if twin is not None:
                twins[dev.name] = firsts.setdefault(twin, dev.name)
        caches = ({}, {}, twins)
        if key is not None:
            if key not in _DEVICE_COSTS and len(_DEVICE_COSTS) >= _RIG_COSTS_MAX_RIGS:
                del _DEVICE_COSTS[next(iter(_DEVICE_COSTS))]
            _DEVICE_COSTS[key] = caches
    _RIG_COSTS[id(rig)] = (rig, *caches)
    return caches


class Engine:
    def __init__(
        self, rig: Rig, *, trace: bool = False, memory_timeline: bool = False, lanes_by_token: bool = False
    ):
        self.env = _Environment()
        self.rig = rig
        self.lanes: dict[str, Lane] = {}
        for dev in rig.devices.values():
            self._lane(f"{dev.name}:compute")
        self.host_memory: dict[str, BandwidthTimeline] = {
            cpu.name: BandwidthTimeline(f"{cpu.name}:dram", host_dram_bw(rig, cpu.name)) for cpu in rig.cpus()
        }
        # CPU entries that are slices of one socket share its DRAM timeline (and, as SMT siblings,
        # its compute stream): the first entry's timeline and lane serve them all.
        for node in rig.nodes.values():
            if node.cpu_sharing != "none" and len(node.cpus) > 1:
                first = node.cpus[0]
                if node.shared_dram_bw > 0:
                    self.host_memory[first] = BandwidthTimeline(f"{node.name}:dram", host_dram_bw(rig, first))
                for cpu in node.cpus[1:]:
                    self.host_memory[cpu] = self.host_memory[first]
                    if node.cpu_sharing == "core":
                        self.lanes[f"{cpu}:compute"] = self.lanes[f"{first}:compute"]
        # per device: its compute stream and the DRAM its work draws on (None off CPUs)
        self._streams: dict[str, tuple[Lane, BandwidthTimeline | None]] = {
            dev: (self.lanes[f"{dev}:compute"], self.host_memory.get(dev)) for dev in rig.devices
        }
        # CPUs whose cores the compute stream and the work beside it share (``share_cores``): one
        # timeline each, in nanoseconds of all-core work per second (a timeline's rates are > 1)
        self._cores: dict[str, BandwidthTimeline] = {}
        self.memory = MemoryLedger(
            rig.capacities(), clock=lambda: self.env.now, keep_timeline=memory_timeline
        )
        self.tracer = TraceRecorder() if trace else None
        self.tasks = 0
        self.last_end = 0.0  # end time of the task booked last (to queue a follow-up with ``after``)
        self.bytes_transferred = 0.0
        self.token_times: list[tuple[float, int]] = []
        self.token_streams: list[int] = []  # per token_times entry: the process that made it
        # each lane's (busy_s, memory_bound_s) booked when the first token exists: what the prefill took
        self.lanes_at_first_token: dict[str, tuple[float, float]] = {}
        # per token_times entry where ``lanes_by_token`` (a short run's: ~0.1 KB a lane each, 100 MB
        # for an exact run of 1024 tokens on 48 GPUs): each lane's busy seconds booked by then, a shared
        # lane once under its own name (how each lane's load per decode step grows:
        # ``hetsim.sim.run.bend_bound``)
        self.lanes_by_token = lanes_by_token
        self.lanes_at_token: list[dict[str, float]] = []
        self._op_costs, self._op_costs_by_id, self._twins = _rig_costs(rig)
        self._paths: dict[tuple[str, str, bool], TransferPath] = {}
        self._ring_lanes: dict[tuple[str, ...], tuple[tuple[Lane, ...], float, float, Fit | None]] = {}
        self._lockstep_cache: dict[tuple, tuple[tuple, _LockstepFixed]] = {}
        # A schedule's own per-engine memo of prepared steps (``pipeline_pass``: a batch step's
        # lockstep parts by shape), bounded as the lockstep cache is; see ``remember``.
        self.step_cache: dict[tuple, Any] = {}

    def reset(self) -> None:
        """Back to a fresh engine's state on the same rig: clock at 0 with no events, every lane free
        and idle, DRAM timelines empty, no memory held, no tasks, bytes or tokens counted (a new
        tracer when tracing). What it resolved of the rig stays: copy paths, rings, lockstep parts
        and the schedule's ``step_cache`` (functions of the rig and the ops, holding these same
        lanes), and the lanes made for copies, idle (nothing reports an idle lane). A search that
        runs many short schedules on one rig then builds one engine (HeteGen's ``measure_split``).
        Op costs are taken from ``_rig_costs`` again, as a new engine would."""
        self.env.restart()
        for lane in self.lanes.values():  # a shared lane is met twice: harmless
            lane.free_at = 0.0
            lane.busy_s = 0.0
            lane.memory_bound_s = 0.0
        for dram in self.host_memory.values():
            dram.reset()
        self._cores = {}
        self.memory.reset()
        self.tracer = TraceRecorder() if self.tracer is not None else None
        self.tasks = 0
        self.last_end = 0.0
        self.bytes_transferred = 0.0
        self.token_times = []
        self.token_streams = []
        self.lanes_at_first_token = {}
        self.lanes_at_token = []
        self._op_costs, self._op_costs_by_id, self._twins = _rig_costs(self.rig)

    # ---- plumbing ---------------------------------------------------------------------------
    def _lane(self, name: str) -> Lane:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = Lane(name)
        return lane

    def _reserve(self, lanes: Sequence[Lane], duration: float) -> float:
        start = self.env.now
        for lane in lanes:
            if lane.free_at > start:
                start = lane.free_at
        end = start + duration
        for lane in lanes:
            lane.free_at = end
            lane.busy_s += duration
        return start

    def _record(self, lanes: Sequence[Lane], start: float, end: float, label: str, args: dict) -> float:
        self.tasks += 1
        self.last_end = end
        if self.tracer is not None:
            for lane in lanes:
                self.tracer.span(lane.name, label, start, end, args)
        return end

    def _finish(self, lanes: Sequence[Lane], start: float, end: float, label: str, args: dict) -> simpy.Event:
        return self.env.timeout(self._record(lanes, start, end, label, args) - self.env.now)

    # ---- the API strategies use ------------------------------------------------------------
    def cost_of(self, device: str, ops: Op | tuple[Op, ...]) -> OpCost:
        """The (cached) cost of an op, or of ops run back to back as one task, on ``device``."""
        # ``rig_cost`` over this engine's caches, taken once: by identity, then by value
        by_id = self._op_costs_by_id.get((device, id(ops)))
        if by_id is not None and by_id[0] is ops:
            return by_id[1]
        return _cost_by_value(self.rig, (self._op_costs, self._op_costs_by_id, self._twins), device, ops)

    def compute(
        self, device: str, ops: Op | tuple[Op, ...], *, label: str | None = None, after: float = 0.0
    ) -> simpy.Event:
        """Run an op (or a tuple of ops as one task) on ``device``'s compute stream.

        ``after`` enqueues the task now but lets it start no earlier than that time, as work queued
        on a CUDA stream behind a copy does (pass ``engine.last_end`` of the task it follows).
        """
        hit = self._op_costs_by_id.get((device, id(ops)))
        if hit is not None and hit[0] is ops and self.tracer is None:  # book_compute's hot path, inline
            end = self._book_cost(device, hit[1], "", _NO_ARGS, after)
        else:
            end = self.book_compute(device, ops, label=label, after=after)
        return self.env.timeout(end - self.env._now)

    def book_compute(
        self, device: str, ops: Op | tuple[Op, ...], *, label: str | None = None, after: float = 0.0
    ) -> float:
        """``compute`` without an event to wait on: books the task and returns when it ends.

        For work nobody waits on by itself (a path joined later by its end time): SimPy then has
        one event fewer to schedule and process, and every lane, timeline and count is the same."""
        hit = self._op_costs_by_id.get((device, id(ops)))  # cost_of's first look-up, inline
        cost = hit[1] if hit is not None and hit[0] is ops else self.cost_of(device, ops)
        if self.tracer is None:  # the hot path: no label or trace arguments to build
            return self._book_cost(device, cost, "", _NO_ARGS, after)
        if isinstance(ops, Op):
            name, args = ops.name, {"layer": ops.layer, "flops": ops.flops, "bytes": ops.mem_bytes}
        else:
            name = f"{ops[0].name}..{ops[-1].name}" if ops else "nothing"
            args = {"layer": ops[0].layer if ops else -1, "ops": len(ops)}
        return self._book_cost(device, cost, label or name, args, after)

    def execute(
        self,
        device: str,
        cost: OpCost,
        *,
        label: str = "compute",
        args: dict | None = None,
        after: float = 0.0,
    ) -> simpy.Event:
        """Run work of a known cost on ``device``; CPU work also draws on the socket's DRAM."""
        return self.env.timeout(self._book_cost(device, cost, label, args or {}, after) - self.env.now)

    def book_execute(
        self,
        device: str,
        cost: OpCost,
        *,
        label: str = "compute",
        args: dict | None = None,
        after: float = 0.0,
    ) -> float:
        """``execute`` without an event to wait on (see ``book_compute``): returns when the work ends."""
        return self._book_cost(device, cost, label, args or {}, after)

    def _book_cost(self, device: str, cost: OpCost, label: str, args: dict, after: float) -> float:
        # The hot path: comparisons where max() and min() of two or three floats would pick the
        # same one (the first of equals, as they do).
        lane, dram = self._streams[device]
        now = self.env._now
        start = now
        if lane.free_at > start:
            start = lane.free_at
        if after > start:
            start = after
        if dram is None or cost.memory_bytes <= 0:
            end = start + cost.time_s
        else:
            cap = cost.dram_pace  # memory traffic cannot outpace the op's own compute
            mem_start = start + cost.overhead_s
            end = dram.book(now, mem_start, cost.memory_bytes, cap)
            computed = mem_start + cost.compute_s
            if computed > end:
                end = computed
        if self._cores and device in self._cores and end > start:  # its share of the cores
            need = cost.compute_s / (end - start)
            self._cores[device].claim(now, start, end, _CORE_NS * (need if need > 0.5 else 0.5))
        lane.free_at = end
        lane.busy_s += end - start
        # waiting on DRAM shared with DMA counts as memory-bound time too
        waited = end - start - cost.time_s
        lane.memory_bound_s += cost.memory_bound_s + (waited if waited > 0.0 else 0.0)
        self.tasks += 1  # _record, inline
        self.last_end = end
        if self.tracer is not None:
            self.tracer.span(lane.name, label, start, end, args)
        return end

    def book_beside(self, device: str, cost: OpCost, *, label: str = "host", after: float = 0.0) -> float:
        """CPU work of threads other than the one that holds ``device``'s compute stream (a runtime's
        copy threads converting buffers on the host's cores): one after another on a lane of their
        own (work that takes every core runs no faster beside more of it), from ``after`` (or now),
        its bytes on the socket's DRAM beside everything booked there, no faster than its compute.
        Returns when it ends."""
        lane = self.lanes.get(f"{device}:beside") or self._lane(f"{device}:beside")
        now = self.env._now
        start = after if after > now else now
        if lane.free_at > start:
            start = lane.free_at
        dram = self._streams[device][1]
        if dram is None or cost.memory_bytes <= 0:
            end = start + cost.time_s
        else:  # as ``_book_cost``: the traffic no faster than the work's own compute
            cap = cost.dram_pace
            mem_start = start + cost.overhead_s
            end = max(dram.book(now, mem_start, cost.memory_bytes, cap), mem_start + cost.compute_s)
        cores = self._cores.get(device)
        if cores is not None:  # its compute on every core, less what the compute stream holds
            computed = cores.book(now, start + cost.overhead_s, cost.compute_s * _CORE_NS, _CORE_NS)
            end = max(end, computed)
        lane.free_at = end
        lane.busy_s += end - start
        return self._record((lane,), start, end, label, {"bytes": cost.memory_bytes})

    def share_cores(self, device: str) -> None:
        """From now on the work booked beside ``device``'s compute stream (``book_beside``) takes the
        host's cores that stream's work leaves. Torch's intra-op work in two threads at once (the
        issuing thread's CPU attention, a copy thread's conversion) runs as two OpenMP teams of
        torch's thread count on the same cores, which the OS time-shares: the stream's work holds
        at least half the cores while it runs (its fair share: memory-bound threads hold their time
        slices too), all it computes with if more (its compute over its duration), and is never
        slowed by the conversions (the issuing thread first, as a later DRAM flow never slows an
        earlier one); the work beside gets the rest, all of them where the stream is idle."""
        if device not in self._cores:
            self._cores[device] = BandwidthTimeline(f"{device}:cores", _CORE_NS)

    def delay(self, device: str, seconds: float, *, label: str = "overhead") -> simpy.Event:
        """Occupy a device's compute stream for a fixed time (host-side work, synchronisation)."""
        return self.env.timeout(self.book_delay(device, seconds, label=label) - self.env.now)

    def book_delay(self, device: str, seconds: float, *, label: str = "overhead") -> float:
        """``delay`` without an event to wait on (as ``book_compute``): returns when it ends."""
        lane = self._streams[device][0]  # its compute stream; ``_reserve`` and ``_record``, inline
        start = self.env._now
        if lane.free_at > start:
            start = lane.free_at
        end = start + seconds
        lane.free_at = end
        lane.busy_s += seconds
        self.tasks += 1
        self.last_end = end
        if self.tracer is not None:
            self.tracer.span(lane.name, label, start, end, {})
        return end

    def transfer(
        self,
        src: str,
        dst: str,
        nbytes: float,
        *,
        pinned: bool = True,
        label: str = "copy",
        after: float = 0.0,
        host_extra: float = 0.0,
    ) -> simpy.Event:
        """Copy ``nbytes`` from ``src`` to ``dst`` (devices or disks) over the rig's route.

        ``after``: as for ``compute``, start no earlier than this (a queued follow-up).
        ``host_extra``: host-DRAM bytes per byte copied that the copying thread also moves as the
        data lands (a conversion beside the read), booked on the host side at the copy's pace."""
        return self.env.timeout(
            self.book_transfer(
                src, dst, nbytes, pinned=pinned, label=label, after=after, host_extra=host_extra
            )
            - self.env._now
        )

    send = transfer

    def book_transfer(
        self,
        src: str,
        dst: str,
        nbytes: float,
        *,
        pinned: bool = True,
        label: str = "copy",
        after: float = 0.0,
        host_extra: float = 0.0,
    ) -> float:
        """``transfer`` without an event to wait on (as ``book_compute``): returns when it ends."""
        if nbytes <= 0 or src == dst:
            self.last_end = max(self.env.now, after)
            return self.last_end
        path = self._paths.get((src, dst, pinned)) or self._path(src, dst, pinned)
        now = self.env._now  # the hot path: what max([now, after, *free_at]) picks, without a list
        start = after if after > now else now
        lanes = path.lanes
        for lane in lanes:
            if lane.free_at > start:
                start = lane.free_at
        if path.host_side is None:
            end = start + path.latency_s + nbytes / path.rate
        elif host_extra:  # one host-DRAM flow: the copy and what its thread moves beside it
            k = 1.0 + host_extra
            end = path.host_side.book(now, start + path.latency_s, nbytes * k, path.rate * k)
        else:
            end = path.host_side.book(now, start + path.latency_s, nbytes, path.rate)
        for lane in lanes:
            lane.free_at = end
            lane.busy_s += end - start
        self.bytes_transferred += nbytes
        if self.tracer is None:  # _record, inline
            self.tasks += 1
            self.last_end = end
            return end
        return self._record(lanes, start, end, label, {"bytes": nbytes, "src": src, "dst": dst})

    def allreduce(self, devices: Sequence[str], nbytes: float, *, label: str = "allreduce") -> simpy.Event:
        """Sum ``nbytes`` across ``devices`` (alpha-beta over the ring's slowest route)."""
        return self._collective(devices, nbytes, allreduce_time, label)

    def allgather(
        self, devices: Sequence[str], nbytes_per_rank: float, *, label: str = "allgather"
    ) -> simpy.Event:
        return self._collective(devices, nbytes_per_rank, allgather_time, label)

    def lockstep(
        self,
        devices: Sequence[str],
        work: Sequence[tuple[Op, ...] | float],
        *,
        repeat: int = 1,
        label: str = "lockstep",
    ) -> simpy.Event:
        """A tensor-parallel group running in lockstep, booked as one task.

        ``work`` alternates compute blocks (a tuple of ops every rank runs; the group waits for the
        slowest rank) and all-reduces (a float: bytes per rank), repeated ``repeat`` times (layers).
        Every rank's compute stream and every lane of the group's ring are held for the whole span,
        which is what a synchronised TP group does to them; the duration comes from the same cost
        functions as ``compute`` and ``allreduce``.
        """
        return self.run_lockstep(devices, self.lockstep_fixed(devices, work, repeat), repeat, label)

    def run_lockstep(
        self, devices: Sequence[str], fixed: _LockstepFixed, repeat: int = 1, label: str = "lockstep"
    ) -> simpy.Event:
        """``lockstep`` of a clock-independent part already worked out (``lockstep_fixed`` of the same
        devices, work and repeat on this engine): a schedule that repeats a step keeps it."""
        if fixed.single is not None:
            return self.execute(devices[0], fixed.single, label=label, args={"repeat": repeat})
        for nbytes in fixed.bytes_moved:
            self.bytes_transferred += nbytes
        lanes = fixed.lanes
        now = self.env._now
        # CPU ranks stream their share of weights from DRAM; ranks on one shared DRAM compete, so the
        # compute part lasts at least until their traffic has been served.
        start = max(now, max(map(_FREE_AT, lanes)))
        busy = fixed.compute_s * repeat
        for dram, nbytes, cap in fixed.traffic:
            busy = max(busy, dram.book(now, start, nbytes, cap) - start)
        stretch = busy - fixed.compute_s * repeat
        # Every segment ends in a collective, where the group waits for its slowest rank.
        wait = lockstep_wait(busy, fixed.straggle)
        duration = lockstep_duration(busy, fixed.comm_s * repeat, fixed.straggle)
        end = start + duration
        idle = busy + wait
        # each lane's busy time takes +duration, then (links: busy only while the all-reduces run)
        # -idle: per lane the same two roundings as in two passes
        for lane in fixed.compute_lanes:
            lane.free_at = end
            lane.busy_s += duration
        for lane in fixed.link_lanes:
            lane.free_at = end
            lane.busy_s = lane.busy_s + duration - idle
        for lane, mem_bound in fixed.memory_bound:
            lane.memory_bound_s += mem_bound + stretch
        self.tasks += 1  # _finish, inline
        self.last_end = end
        if self.tracer is not None:
            for lane in lanes:
                self.tracer.span(lane.name, label, start, end, {"ranks": len(devices), "repeat": repeat})
        return self.env.timeout(end - now)

    def remember(self, key: tuple, value: Any) -> Any:
        """Put ``value`` in ``step_cache`` under ``key`` (emptied first when full); returns it."""
        if len(self.step_cache) >= _LOCKSTEP_CACHE_MAX:
            self.step_cache.clear()
        self.step_cache[key] = value
        return value

    def lockstep_fixed(
        self, devices: Sequence[str], work: Sequence[tuple[Op, ...] | float], repeat: int = 1
    ) -> _LockstepFixed:
        """What a lockstep call's duration needs that does not depend on the clock, cached by the
        identity of its op blocks (layer_blocks hands out the same tuples for the same shape)."""
        key = (tuple(devices), repeat, *[w if isinstance(w, float) else id(w) for w in work])
        hit = self._lockstep_cache.get(key)
        # A tuple compares its items by identity first: the same op blocks (the usual hit) cost no
        # field-by-field comparison, and a reused id of an unequal block is a miss.
        if hit is not None and hit[0] == tuple(work):
            return hit[1]
        fixed = self._lockstep_compute(devices, work, repeat)
        if len(self._lockstep_cache) >= _LOCKSTEP_CACHE_MAX:  # serving meets many shapes: bound memory
            self._lockstep_cache.clear()
        self._lockstep_cache[key] = (tuple(work), fixed)
        return fixed

    def _lockstep_compute(
        self, devices: Sequence[str], work: Sequence[tuple[Op, ...] | float], repeat: int
    ) -> _LockstepFixed:
        if len(devices) == 1:
            blocks = [self.cost_of(devices[0], item) for item in work if not isinstance(item, float)]
            single = repeated(combine(blocks), repeat)
            return _LockstepFixed(single, (), 0.0, 0.0, (), 0.0, (), (), ())
        lanes, alpha, beta, fit = self._ring(devices)
        costs = {d: [self.cost_of(d, w) for w in work if not isinstance(w, float)] for d in devices}
        compute_s = comm_s = 0.0
        moved = []
        block = 0
        for item in work:
            if isinstance(item, float):
                comm_s += allreduce_time(len(devices), item, alpha, beta, fit).time_s
                moved.append(item * len(devices) * repeat)
            else:  # ranks sharing one compute stream (cpu_sharing: core) run one after another
                per_lane: dict[int, float] = {}
                for d in devices:
                    key = id(self.lanes[f"{d}:compute"])
                    per_lane[key] = per_lane.get(key, 0.0) + costs[d][block].time_s
                compute_s += max(per_lane.values())
                block += 1
        traffic: dict[int, list] = {}
        for d in devices:
            dram = self.host_memory.get(d)
            if dram is None:
                continue
            blocks = costs[d]
            nbytes = repeat * sum(c.memory_bytes for c in blocks)
            rank_busy = repeat * sum(c.compute_s for c in blocks)
            if nbytes > 0 and rank_busy > 0:
                entry = traffic.setdefault(id(dram), [dram, 0.0, 0.0])
                entry[1] += nbytes
                dev = self.rig.devices[d]
                entry[2] += min(dev.mem_bw * dev.efficiency.memory, nbytes / rank_busy)
        compute_lanes = {id(self.lanes[f"{d}:compute"]) for d in devices}
        memory_bound = []
        for d in devices:
            mem_bound = sum(c.memory_bound_s for c in costs[d])
            memory_bound.append((self.lanes[f"{d}:compute"], repeat * mem_bound))
        return _LockstepFixed(
            single=None,
            bytes_moved=tuple(moved),
            compute_s=compute_s,
            comm_s=comm_s,
            traffic=tuple((e[0], e[1], e[2]) for e in traffic.values()),
            straggle=straggler_share(self.rig, devices),
            lanes=lanes,
            link_lanes=tuple(lane for lane in lanes if id(lane) not in compute_lanes),
            memory_bound=tuple(memory_bound),
            compute_lanes=tuple(lane for lane in lanes if id(lane) in compute_lanes),
        )

    def alloc(self, device: str, nbytes: float, tag: str) -> None:
        """Take memory now; raises ``OutOfMemory`` (the run becomes infeasible) past capacity."""
        self.memory.alloc(device, nbytes, tag)

    def alloc_footprint(self, footprint: Mapping[str, Mapping[str, float]]) -> None:
        """Take a plan's resident memory (device -> tag -> bytes), in its order; ``OutOfMemory`` past
        capacity."""
        for device, tags in footprint.items():
            for tag, nbytes in tags.items():
                self.memory.alloc(device, nbytes, tag)

    def free(self, device: str, tag: str, nbytes: float | None = None) -> None:
        self.memory.free(device, tag, nbytes)

    def all_of(self, events: Iterable[simpy.Event]) -> simpy.Event:
        """An event that fires when every one of ``events`` has (``env.all_of``'s timing; ``AllOf``)."""
        return AllOf(self.env, list(events))

    def transfer_time(
        self,
        src: str,
        dst: str,
        nbytes: float,
        *,
        pinned: bool = True,
        label: str = "copy",
        at: float | None = None,
        host_extra: float = 0.0,
    ) -> float:
        """``transfer`` booked without an event: the time its event would fire (``now + duration``,
        rounded as SimPy rounds it), to be joined by ``until``. ``at``: the copy as it would be
        issued at that (later) time, e.g. when a compute booked with ``compute_time`` ends."""
        if at is None:
            now = self.env._now
            return now + (
                self.book_transfer(src, dst, nbytes, pinned=pinned, label=label, host_extra=host_extra) - now
            )
        end = self.book_transfer(
            src, dst, nbytes, pinned=pinned, label=label, after=at, host_extra=host_extra
        )
        return at + (end - at)

    def compute_time(
        self, device: str, ops: Op | tuple[Op, ...], *, label: str | None = None, at: float | None = None
    ) -> float:
        """``compute`` booked without an event: the time its event would fire (as ``transfer_time``,
        ``at`` included)."""
        hit = self._op_costs_by_id.get((device, id(ops)))
        if hit is not None and hit[0] is ops and self.tracer is None:  # book_compute's hot path, inline
            if at is None:
                now = self.env._now
                return now + (self._book_cost(device, hit[1], "", _NO_ARGS, 0.0) - now)
            return at + (self._book_cost(device, hit[1], "", _NO_ARGS, at) - at)
        if at is None:
            now = self.env._now
            return now + (self.book_compute(device, ops, label=label) - now)
        return at + (self.book_compute(device, ops, label=label, after=at) - at)

    def compute_floor(self, device: str, ops: Op | tuple[Op, ...]) -> float:
        """The least seconds any booking of ``ops`` on ``device`` lasts (``_book_cost``): its time
        alone, or on a CPU, whose DRAM a booking may find busy, its overhead and then the longer of
        its compute and its bytes at the op's own memory rate (a block of ops streams as one)."""
        cost = self.cost_of(device, ops)
        if self._streams[device][1] is None or cost.memory_bytes <= 0 or cost.achieved_mem_bw <= 0:
            return cost.time_s
        streamed = cost.memory_bytes / cost.achieved_mem_bw
        return cost.overhead_s + (cost.compute_s if cost.compute_s > streamed else streamed)

    def transfer_floor(self, src: str, dst: str, nbytes: float, *, pinned: bool = True) -> float:
        """The least seconds any booking of this copy lasts (``book_transfer``): latency and bytes
        at the path's rate, with every lane and the host's DRAM to itself."""
        if nbytes <= 0 or src == dst:
            return 0.0
        path = self._paths.get((src, dst, pinned)) or self._path(src, dst, pinned)
        return path.latency_s + nbytes / path.rate

    def until(self, times: Sequence[float]) -> simpy.Event:
        """One event that fires when ``all_of`` over events firing at ``times`` would, for a schedule
        that is the only process (with several, ``all_of`` resumes its waiter later among equal times).
        """
        return self.env.at(max(times, default=self.env.now))

    def wait(self, end: float) -> simpy.Event:
        """For the active process to yield at once: resumes it when a task booked (``book_*``) to
        end at ``end`` is done, as yielding that task's own event would (``compute`` is
        ``book_compute`` then this). Without an event when nothing else can happen first
        (``_Environment.skip_to``)."""
        ev = self.advance(end)
        return self.env.done if ev is None else ev

    def advance(self, end: float) -> simpy.Event | None:
        """``wait`` for a process that yields only when it must: None when the clock moved to
        ``end`` at once (yielding ``done`` would resume it straight away, with nothing run in
        between), else the event to yield. Saves a generator round trip per task in nested
        schedules (HeteGen's split modules)."""
        env = self.env
        now = env._now
        delay = end - now
        if delay >= 0 and env.skip_events:  # env.skip_to(now + delay), inline: one call per task
            when = now + delay  # where SimPy's timeout would put it
            queue = env._queue
            if not queue or queue[0][0] > when:
                env._now = when
                return None
        return env.timeout(delay)

    def wait_until(self, times: Sequence[float]) -> simpy.Event:
        """``until`` for the active process to yield at once; without an event when nothing else
        can happen first (``_Environment.skip_to``)."""
        env = self.env
        now = env._now
        when = max(times, default=now)
        if env.skip_events:  # env.skip_to(max(when, now)), inline
            to = now if now > when else when  # max(when, now): where ``at`` would put it
            queue = env._queue
            if not queue or queue[0][0] > to:
                env._now = to
                return env.done
        return env.at(when)

    def token_done(self, count: int = 1) -> None:
        """A schedule calls this when ``count`` output tokens exist (one per sequence)."""
        if not self.token_times:
            self.lanes_at_first_token = {
                n: (lane.busy_s, lane.memory_bound_s) for n, lane in self.lanes.items()
            }
        self.token_times.append((self.env.now, count))
        if self.lanes_by_token:
            self.lanes_at_token.append({n: lane.busy_s for n, lane in self.lanes.items() if lane.name == n})
        proc = self.env.active_process
        self.token_streams.append(getattr(proc, "hetsim_index", -1))

    def run(self, schedule: Schedule) -> float:
        """Run a schedule to completion; returns the simulated makespan in seconds."""
        done = self.env.process(schedule(self))
        self.env.run(until=done)
        return self.env.now

    # ---- cached resolution ------------------------------------------------------------------
    def _path(self, src: str, dst: str, pinned: bool) -> TransferPath:
        key = (src, dst, pinned)
        path = self._paths.get(key)
        if path is not None:
            return path
        rig = self.rig
        route = rig.route(src, dst)
        lanes = [self._lane(hop.lane) for hop in route.hops]
        if src in rig.disks:
            lanes.append(self._lane(f"{src}:read"))
        if dst in rig.disks:
            lanes.append(self._lane(f"{dst}:write"))
        host = next((e for e in (src, dst) if e in self.host_memory), None)
        path = TransferPath(
            lanes=tuple(lanes),
            route=route,
            rate=rig.copy_bw(src, dst, pinned),
            host_side=self.host_memory[host] if host else None,
            latency_s=route.latency_s,
        )
        self._paths[key] = path
        return path

    def _ring(self, devices: Sequence[str]) -> tuple[tuple[Lane, ...], float, float, Fit | None]:
        """Lanes of a ring over ``devices`` (both directions), its worst latency and bandwidth, and
        the measured all-reduce line for this many ranks if its links have one."""
        key = tuple(devices)
        cached = self._ring_lanes.get(key)
        if cached is not None:
            return cached
        lanes: dict[str, Lane] = {f"{d}:compute": self.lanes[f"{d}:compute"] for d in devices}
        for i, a in enumerate(devices):
            b = devices[(i + 1) % len(devices)]
            for route in (self.rig.route(a, b), self.rig.route(b, a)):
                for hop in route.hops:
                    lanes.setdefault(hop.lane, self._lane(hop.lane))
        alpha, beta = ring_alpha_beta(self.rig, devices)
        unique = {id(lane): lane for lane in lanes.values()}  # shared (SMT) lanes appear once
        result = (tuple(unique.values()), alpha, beta, ring_allreduce_fit(self.rig, devices))
        self._ring_lanes[key] = result
        return result

    def _collective(
        self,
        devices: Sequence[str],
        nbytes: float,
        cost_fn: Callable[[int, float, float, float, Fit | None], CollectiveCost],
        label: str,
    ) -> simpy.Event:
        if len(devices) <= 1 or nbytes <= 0:
            return self.env.timeout(0)
        lanes, alpha, beta, fit = self._ring(devices)
        cost = cost_fn(len(devices), nbytes, alpha, beta, fit)
        start = self._reserve(lanes, cost.time_s)
        self.bytes_transferred += nbytes * len(devices)
        args = {"bytes": nbytes, "ranks": len(devices), "algorithm": cost.algorithm} if self.tracer else {}
        return self._finish(lanes, start, start + cost.time_s, label, args)

    # ---- after the run ------------------------------------------------------------------------
    def bound_of(self, lane_name: str) -> str:
        """'memory-bound' or 'compute-bound' for a compute stream (by where its busy time went), per
        phase where they differ: 'compute-bound prefill, memory-bound decode'. Prefill is the work
        booked before the first token, decode the rest (a schedule that books ahead of its first
        token counts that work as prefill)."""
        lane = self.lanes.get(lane_name)
        if lane is None or not lane_name.endswith(":compute") or lane.busy_s <= 0:
            return ""
        busy, mem = self.lanes_at_first_token.get(lane_name, (0.0, 0.0))
        return phase_bound(lane.busy_s, lane.memory_bound_s, busy, mem)

    def utilization(self, makespan: float) -> dict[str, float]:
        """Busy fraction of every lane and DRAM timeline that did any work."""
        if makespan <= 0:
            return {}
        util = {
            name: lane.busy_s / makespan
            for name, lane in self.lanes.items()
            if lane.busy_s > 0 and lane.name == name  # a shared lane is reported under its own name
        }
        for name, dram in self.host_memory.items():
            if dram.bytes_moved > 0 and dram.name == f"{name}:dram":
                util[f"{name}:dram"] = dram.bytes_moved / dram.capacity / makespan
        return dict(sorted(util.items()))
