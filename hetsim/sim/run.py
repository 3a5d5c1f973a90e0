"""Run one plan of one strategy in the engine and turn what happened into a ``Result``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from itertools import pairwise
from typing import Any, Protocol

from hetsim.costs.pricing import price_of, usd_per_mtok
from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.models.spec import ModelSpec
from hetsim.sim.engine import Engine, Schedule, phase_bound
from hetsim.sim.memory import MemoryLedger, OutOfMemory
from hetsim.sim.result import Result
from hetsim.workload import Workload


class Runnable(Protocol):
    """What the engine needs of a strategy to run one plan (``hetsim.strategies.base.Strategy``)."""

    name: str

    def plan_to_dict(self, plan: Any) -> dict[str, Any]: ...

    def footprint(
        self, plan: Any, rig: Rig, model: ModelSpec, workload: Workload
    ) -> Mapping[str, Mapping[str, float]]: ...

    def schedule(self, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> Schedule: ...

    def devices(self, plan: Any) -> list[str]: ...

    def lossy(self, plan: Any, model: ModelSpec | None = None) -> str: ...

    def pass_batch(self, plan: Any) -> int | None: ...

    def run_floors(
        self, plan: Any, rig: Rig, model: ModelSpec, workload: Workload
    ) -> tuple[float, float] | None: ...


def context_reason(model: ModelSpec, context_len: int) -> str | None:
    """Why a sequence of ``context_len`` tokens cannot run on ``model`` (its position limit), else None."""
    if context_len > model.max_position:
        return (
            f"context of {context_len} tokens (prompt + generated) exceeds {model.name}'s maximum of "
            f"{model.max_position} positions"
        )
    return None


# Fast-forward of long generations (see ``fast_forward``): decode tokens simulated at each end of the
# KV range, ``FF_SAMPLE`` past ``FF_LONG_GEN_LEN`` tokens and ``FF_SHORT_SAMPLE`` from
# ``FF_MIN_GEN_LEN + 1`` (the two samples are then at most half the run); shorter ones run every step.
FF_SAMPLE = 16
FF_LONG_GEN_LEN = 4 * FF_SAMPLE
FF_SHORT_SAMPLE = 6  # = the planner's PROXY_GEN_LEN: a search's estimate of its pick is the head
FF_MIN_GEN_LEN = 4 * FF_SHORT_SAMPLE - 1
# How far a sampled decode window may stray from steps that grow evenly with the KV length (the
# largest change of the step-to-step change, as a share of the mean step) before the run is
# simulated step by step: a periodic pattern (micro-batches of one pipeline meeting on a link every
# few steps) or a boundary crossed inside a sample is not a steady decode to extrapolate.
FF_STEADY_TOL = 1e-3


def ff_sample(gen_len: int) -> int:
    """Decode tokens in each sample that fast-forwards a generation of ``gen_len`` tokens (0: none)."""
    if gen_len > FF_LONG_GEN_LEN:
        return FF_SAMPLE
    return FF_SHORT_SAMPLE if gen_len > FF_MIN_GEN_LEN else 0


def fits(strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> bool:
    """Whether the plan's resident memory fits the rig (what ``simulate`` allocates first), without
    running it: the cheap test a free-batch search bisects on."""
    try:  # a footprint may refuse itself (a plan's own gpu_mem_budget) or find no route
        footprint = strategy.footprint(plan, rig, model, workload)
    except (OutOfMemory, NoRouteError):
        return False
    return footprint_fits(rig.capacities(), footprint)


def footprint_fits(capacities: Mapping[str, float], footprint: Mapping[str, Mapping[str, float]]) -> bool:
    """Whether ``footprint`` (device -> tag -> bytes) fits memories of ``capacities`` as ``simulate``
    allocates it, tag by tag on the engine's ledger (``fits``; HexGen's ``replica_holds``)."""
    ledger = MemoryLedger(capacities, clock=lambda: 0.0)
    try:
        for device, tags in footprint.items():
            for tag, nbytes in tags.items():
                ledger.alloc(device, nbytes, tag)
    except OutOfMemory:
        return False
    return True


def simulate(
    strategy: Runnable,
    plan: Any,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    *,
    trace_path: str | None = None,
    exact: bool = False,
) -> Result:
    """Simulate ``plan``; an out-of-memory or unroutable plan is an infeasible result, not a crash.

    Generations longer than ``FF_MIN_GEN_LEN`` tokens are fast-forwarded (``fast_forward``) unless
    ``exact`` is set or a trace is asked for; ``exact`` runs every decode step."""
    too_long = context_reason(model, workload.context_len)
    if too_long:  # the plan as JSON only here (~0.05-0.13 ms a plan: every search's run asks)
        return Result.infeasible(strategy.name, too_long, strategy.plan_to_dict(plan))
    sample = ff_sample(workload.gen_len)
    if not exact and trace_path is None and sample:
        try:
            result = fast_forward(strategy, plan, rig, model, workload, sample)
        except SimulateStopped as stopped:  # in a sample run: not the run's own steps
            raise SimulateStopped(None) from stopped
        if result is not None:
            return result
    return _step_by_step(strategy, plan, rig, model, workload, trace_path)[0]


def short_run(
    strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, workload: Workload
) -> tuple[Result, Streams, LaneTimes]:
    """``simulate`` of a generation short enough to run step by step (at most ``FF_MIN_GEN_LEN``
    tokens: a search's proxy of a longer one), its token times by stream (``head_end`` extends
    them to a longer run) and its lanes' busy seconds by token event (``bend_bound``)."""
    assert not ff_sample(workload.gen_len), "a short run is simulated step by step"
    too_long = context_reason(model, workload.context_len)
    if too_long:
        return Result.infeasible(strategy.name, too_long, strategy.plan_to_dict(plan)), {}, []
    result, streams, _, _, lanes = _step_by_step(strategy, plan, rig, model, workload)
    return result, streams, lanes


def head_end(head_times: Streams, g: int, n: int) -> float | None:
    """When a run of ``n`` rounds ends, from its head of ``g`` rounds alone (``fast_forward``'s
    ``_run_end`` with no tail): per stream, the head's rounds up to ``g - 1`` as they are (start-up
    included once), the rounds ``g..n-1`` on the line of its steady window (``_line``: its mean
    step and growth per step, the growth a longer KV adds), then its last step (a schedule may end
    differently, e.g. with nothing to prefetch) grown as the line; the run ends with the slowest
    stream. Exact where steps grow linearly with the KV length; fast where a lane takes over after
    the head (the steps bend up), slow where one gives way. Steps that repeat a pattern (micro-batches
    of a pipeline meeting on a link every few steps) take the line of whole periods, to within a part
    period's spread. A stream with no steady window (a pipeline's fill longer than the head) has no
    line: its rounds ``g..n`` at the window's mean step, last step included. None where a stream has
    too few rounds."""
    h = _window(g)
    if h < 1 or n <= g or not head_times:
        return None
    end = 0.0
    for stream in head_times.values():
        b, line, period = _stream_line(stream, g, h)
        first, head_last = _round_time(stream, b, h), _round_time(stream, b, g)
        if line is None or first is None or head_last is None:
            return None
        if period:
            step, growth, c = line[0], max(0.0, line[1]), line[2]  # a longer KV never makes a step cheaper
            added = _along(step, growth, c, g, n)
        else:
            added = (n - g) * (head_last - first) / (g - h)
        end = max(end, head_last + added)
    return end


def _along(step: float, growth: float, c: float, g: int, n: int) -> float:
    """The seconds a head of ``g`` rounds' stream adds to reach round ``n`` on a line (``step`` at
    step index ``c``, ``growth`` a step): steps g-1..n-2 on the line, then the last step n - g
    steps on from the head's."""
    return (n - g) * (step + growth * ((n + g - 3) / 2 - c + 1))


def falling_end(head_times: Streams, g: int, n: int) -> float | None:
    """When a run of ``n`` rounds ends, from a head of ``g`` rounds still settling (``settled`` is 0)
    as a pipeline's start-up does: each stream's steps from its window (round ``h``) to the head's
    end either never rising or, after a change, level over its last three (each within
    ``FF_STEADY_TOL`` of their mean), its rounds ``g..n`` at the window's last step (the head's own
    last step, which a schedule may end differently, stands for the run's, as in ``head_end``).

    After the prefill a pipeline's micro-batches start bunched and spread out, each stream's step
    shorter (or, for one that ran ahead, longer) until the slowest stage sets the pace (8 stages:
    65, 59, 53, then 47 ms): the last step is the nearest to that pace, and a step still falling
    after it puts the run slow, as the window's mean did (+12 %). A stream already steady goes on
    on its line (as ``head_end``), and the others grow as the steepest such line (the pace they
    settle to grows with the KV as it does). None where no stream is steady (a fall can hide the
    growth), where a stream's steps rise and fall (a pattern the head is too short to show twice) or
    its tokens are not whole rounds."""
    h = _window(g)
    if h < 1 or n <= g or not head_times:
        return None
    # a stream already steady takes its line (as ``head_end``), whose growth (a longer KV's) the
    # pace the others settle to shares: they go on at their last step, grown as the steepest line
    lines = {k: _stream_line(stream, g, h) for k, stream in head_times.items()}
    steady = {k for k, (_, line, period) in lines.items() if line and period == 1 and not _falls(line, g)}
    if not steady:
        # no stream shows the growth a longer KV adds, which a fall can hide: the run's would be
        # unseen (up to -1.2 % fast at 64 tokens, 2 stages of 8 micro-batches, llama3-8b mixed-lab)
        return None
    growth = max(max(0.0, lines[k][1][1]) for k in steady)  # type: ignore[index]
    end = 0.0
    for k, stream in head_times.items():
        b, line, _ = lines[k]
        times = [_round_time(stream, b, r) for r in range(h, g + 1)]
        if line is None or any(t is None for t in times):
            return None
        steps = [y - x for x, y in pairwise(times)]  # type: ignore[operator]
        step, c = steps[-2], g - 2  # the window's last step: round g - 2 to g - 1
        if k in steady:
            step, growth_k, c = line[0], max(0.0, line[1]), line[2]
        else:
            tol = FF_STEADY_TOL * sum(steps) / len(steps)
            falls = all(y - x <= tol for x, y in pairwise(steps))
            if not falls and max(steps[-3:]) - min(steps[-3:]) > tol:
                return None
            growth_k = growth
        end = max(end, times[-1] + _along(step, growth_k, c, g, n))  # type: ignore[operator]
    return end


def tail_end(
    strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, workload: Workload, head_times: Streams, g: int
) -> float | None:
    """When ``workload`` ends, from its head of ``g`` rounds (``head_times``) and the fast-forward's
    timing-only tail sample of ``g`` rounds (without its middle sample or busy-time runs): the chord
    between the samples' steady steps, or the larger of their lines where they part (``_kinked``),
    so a lane that takes over after the head is seen. None where the samples give no steady step."""
    n = workload.gen_len
    tail, tail_times, _, _, _ = _step_by_step(
        strategy, plan, rig, model, _tail_workload(workload, g), book_memory=False
    )
    if not tail.feasible or set(tail_times) != set(head_times) or not head_times:
        return None
    return _run_end(head_times, tail_times, g, n, _window(g), 1)


def _tail_workload(workload: Workload, g: int) -> Workload:
    """The last ``g`` rounds of ``workload`` as a run of their own (``Workload.sample``)."""
    return workload.sample(workload.gen_len - g, g)


def bend_bound(head_times: Streams, lanes: LaneTimes, g: int, n: int) -> float:
    """At most how many seconds the steps of a run of ``n`` rounds may add above the line of its
    head of ``g`` rounds (``head_end``), where a chain of lanes takes over after the head.

    A decode step is its longest chain of work, each piece on a lane whose load per step grows
    linearly with the KV length; a chain no longer than the step in the head's window grows at most
    by the sum of its lanes' growths, so no faster than all lanes' together (``G``, each lane's busy
    seconds booked per round over the window). Past the window a step then runs above the head's
    line (growth ``s``, the least any stream's line takes) by at most ``(G - s)`` per step since the
    window's mean step. Loose where lanes run side by side (tensor-parallel ranks each grow; one is
    on the chain); inf (take the tail sample) where the window says too little, or a stream's window
    is not steady (``head_end`` goes on flat there, whatever its lanes' growth)."""
    h = _window(g)
    total = sum(count for count, _ in lanes)
    if h < 1 or not lanes or total % g:
        return float("inf")
    b = total // g
    at = [_round_index(lanes, b, r) for r in range(h, g)]
    if any(i is None for i in at):
        return float("inf")
    # the growth each stream's line takes (``head_end``); a stream with no steady window goes on
    # flat at its mean step, its lanes' growth on no line: nothing bounds its bend (nor where its
    # line is of whole periods: the lanes' growth is read step by step)
    step = float("inf")
    for stream in head_times.values():
        _, line, period = _stream_line(stream, g, h)
        if line is None or period != 1:
            return float("inf")
        step = min(step, max(0.0, line[1]))
    last = lanes[at[-1]][1]  # type: ignore[index]
    grow = sum(max(0.0, _series_growth([lanes[i][1].get(k, 0.0) for i in at])) for k in last)  # type: ignore[index]
    c = (h + g - 2) / 2  # the window's mean step sits at this step index
    return max(0.0, grow - step) * sum(i - c for i in range(g - 1, n - 1))


def settled(head_times: Streams, g: int) -> int:
    """Whether a head of ``g`` rounds shows every stream's steady line: its window steady, step by step
    or over whole periods (``_stream_line``), and not falling across it by more than
    ``FF_STEADY_TOL`` of its mean step. 0 where not; else the longest period (1: every stream's
    steps on a line, as ``bend_bound`` and the tail sample read them).

    A decode step never gets cheaper as the KV grows, so a window that falls is a start-up not yet
    over: after the prefill a pipeline's micro-batches start bunched and spread out over a few rounds,
    each step shorter until the slowest stage sets the pace (8 stages, 4 micro-batches: 59, 53, 47
    ms, then 47 on). Held flat at its mean (``head_end``) such a window puts the run slow (+12 %)."""
    longest = 0
    for stream in head_times.values():
        _, line, period = _stream_line(stream, g, _window(g))
        # its growth from the window's first step to its last (step g - 2; the mean sits half way)
        if line is None or not period or _falls(line, g):
            return 0
        longest = max(longest, period)
    return longest


def _falls(line: tuple[float, float, float], g: int) -> bool:
    """Whether a window's line (``_stream_line``) falls from its first step to its last (step
    ``g - 2``; the mean sits half way) by more than ``FF_STEADY_TOL`` of its mean step."""
    return line[1] * 2 * (g - 2 - line[2]) < -FF_STEADY_TOL * line[0]


def _stream_line(
    stream: list[tuple[float, int]], g: int, h: int
) -> tuple[int, tuple[float, float, float] | None, int]:
    """A head's stream of ``g`` rounds: its sequences a round, its window's line (mean step, growth
    per step and the step index the mean sits at, step i being round i to i + 1; None where its
    tokens are not whole rounds or too few) and its period: 1 where rounds ``h..g-1`` are steady
    (``_steady``); else the shortest repeat of its steps from round 2 (the first may wait for the
    pipeline to fill), seen twice, as ``_period``, the line then of the most whole periods ending at
    round ``g - 1``; 0 where neither (the line is the window's): what ``head_end`` extends and
    ``bend_bound`` bounds."""
    per_round = sum(k for _, k in stream)
    b = per_round // g
    if per_round % g:
        return b, None, 0
    line = _line(stream, b, g, h)
    if line is not None and _steady(stream, b, h, g - 1):
        return b, (*line, (h + g - 2) / 2), 1
    period = _period([stream], g)
    if period is not None:
        # the most whole periods ending at round g - 1 (at least two: period <= (g - 3) // 2)
        start = g - 1 - (g - 3) // period * period
        whole = _line(stream, b, g, start, period)
        assert whole is not None, "rounds 2..g-1 are there: _period read them"
        return b, (*whole, (start + g - 2) / 2), period
    return b, None if line is None else (*line, (h + g - 2) / 2), 0


def _series_growth(values: list[float]) -> float:
    """Growth per step (``_line_through``) of cumulative values at consecutive rounds (at least 4)."""
    return _line_through(values[0], values[1], values[-2], values[-1], len(values) - 1)[1]


def _round_index(lanes: LaneTimes, batch: int, rounds: int) -> int | None:
    """The token event at which ``rounds`` tokens of every sequence exist (as ``_round_time``)."""
    seen = 0
    for i, (count, _) in enumerate(lanes):
        seen += count
        if seen >= rounds * batch:
            return i
    return None


def _window(g: int) -> int:
    """The first round of a sample's steady window (rounds h..g-1): its later half, and at least 4
    rounds (2 step changes to check)."""
    return min(g // 2, g - 4)


class SimulateStopped(KeyboardInterrupt):
    """A run stopped (Ctrl-C, or the CLI's SIGTERM) while the engine ran it step by step:
    ``progress`` says how far it got, as ``{"simulated_s": time reached, "tokens": made, "tokens_total":
    batch x gen_len, "ttft_s": when every sequence had its first token (None: not yet, or not known:
    processes running their own sequences side by side count their first tokens apart),
    "peak_mem_bytes": the most each device held by then (the whole run's peak is at least this)}``.
    No rate: decode steps slow as the KV grows, so the part run's tokens per second would overstate
    the whole's. No utilisation: lanes are booked ahead, so work issued before the stop may run past
    it, and the engine keeps each lane's busy seconds as one sum, not split at a time; busy over the
    time reached would overstate it. None: stopped in the short sample runs a fast-forward
    extrapolates from."""

    def __init__(self, progress: dict[str, Any] | None) -> None:
        super().__init__(
            "simulate stopped" + (f" at simulated {progress['simulated_s']:.6g} s" if progress else "")
        )
        self.progress = progress

    @classmethod
    def of(cls, engine: Engine, workload: Workload) -> SimulateStopped:
        """How far ``engine`` got with a run of ``workload``."""
        tokens = sum(count for _, count in engine.token_times)
        one_stream = len(set(engine.token_streams)) <= 1
        first = one_stream and tokens >= workload.batch
        return cls(
            {
                "simulated_s": engine.env.now,
                "tokens": tokens,
                "tokens_total": workload.batch * workload.gen_len,
                "ttft_s": _count_reached(engine.token_times, workload.batch) if first else None,
                "peak_mem_bytes": dict(sorted(engine.memory.peaks().items())),
            }
        )


Streams = dict[int, list[tuple[float, int]]]  # token times (when, how many) by the process making them
# a run: its result, its streams, each compute lane's busy seconds in memory-bound ops, each lane's
# (busy, memory-bound) seconds when the first token existed, and per token event (in the order made)
# its count and each lane's busy seconds booked by then (a run short enough for ``short_run``; else [])
LaneTimes = list[tuple[int, dict[str, float]]]
Run = tuple[Result, Streams, dict[str, float], dict[str, tuple[float, float]], LaneTimes]


class ScopedMemo(threading.local):
    """Results of pure simulations by (strategy, plan, rig identity, model, workload, ...), kept only
    inside ``remembering()`` blocks (nesting keeps one memo), so nothing outlives a command or a test;
    each entry holds its rig, so the rig's id stays its own while the memo lives.

    One memo per thread: a Dask worker runs sweep points in threads, each point's block inside its
    own ``reading()``. Shared, a point would take an entry another point made on the same rig object
    without recording what making it read of the rig (the sweep's remembered answer then holds for a
    rig that differs there), and the first block to end would end the others' memo."""

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple[Rig, Any]] | None = None

    @contextmanager
    def remembering(self) -> Iterator[None]:
        """Within this block, each distinct question is answered once."""
        if self.entries is not None:
            yield
            return
        self.entries = {}
        try:
            yield
        finally:
            self.entries = None

    def recall(self, strategy: Runnable, plan: Any, rig: Rig, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, or what it gave for the same strategy, plan, rig and ``key`` in this block."""
        return self.keep(rig, (strategy.name, plan_key(plan), *key), make)

    def keep(self, rig: Rig, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, or what it gave for the same rig and ``key`` in this block."""
        entries = self.entries
        if entries is None:
            return make()
        full = (id(rig), *key)
        hit = entries.get(full)
        if hit is not None and hit[0] is rig:
            return hit[1]
        out = make()
        entries[full] = (rig, out)
        return out


# Runs made inside ``remembering_runs``, by (strategy, plan, rig identity, model, workload, memory
# booked): a search's estimate of the plan it picks is a run of its first ``PROXY_GEN_LEN`` tokens,
# which is the head the final run's fast-forward samples (``FF_SHORT_SAMPLE`` is that length).
_RUNS = ScopedMemo()
remembering_runs = _RUNS.remembering


def remembered_cost(rig: Rig, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, kept as runs are (inside ``remembering_runs``), for a pure cost a strategy derives
    from ``rig`` and ``key`` (a tuple that names the question first and holds all it depends on),
    which its search and its runs ask again (HexGen's replica speeds: every candidate, every rung). The
    block lies inside a sweep point's ``reading()``, so the first computation tells it the rig it read."""
    return _RUNS.keep(rig, key, make)


def plan_key(plan: Any) -> Any:
    """The plan as a dictionary key: itself, or for a plan with mappings (HeteGen's) its dataclass
    repr, which says every field exactly."""
    try:
        hash(plan)
        return plan
    except TypeError:
        return (type(plan), repr(plan))


def _step_by_step(
    strategy: Runnable,
    plan: Any,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    trace_path: str | None = None,
    book_memory: bool = True,
) -> Run:
    """Every step in the engine, as a ``Run``: the token times (when, how many) of each process that
    made tokens are by the order processes were made (inside ``remembering_runs``, a run asked for
    again is not simulated again; callers only read what it returns)."""
    if trace_path is not None:
        return _run_steps(strategy, plan, rig, model, workload, trace_path, book_memory)
    return _RUNS.recall(
        strategy,
        plan,
        rig,
        (model, workload, book_memory),
        lambda: _run_steps(strategy, plan, rig, model, workload, None, book_memory),
    )


def _run_steps(
    strategy: Runnable,
    plan: Any,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    trace_path: str | None,
    book_memory: bool,
) -> Run:
    plan_dict = strategy.plan_to_dict(plan)
    # lanes by token event for a short run alone (``short_run``: a search's proxy, ``bend_bound``)
    engine = Engine(rig, trace=trace_path is not None, lanes_by_token=not ff_sample(workload.gen_len))
    try:
        if book_memory:
            engine.alloc_footprint(strategy.footprint(plan, rig, model, workload))
        makespan = engine.run(strategy.schedule(plan, rig, model, workload))
    except (OutOfMemory, NoRouteError) as exc:
        return Result.infeasible(strategy.name, str(exc), plan_dict), {}, {}, {}, []
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM (the CLI's): how far the run got
        raise SimulateStopped.of(engine, workload) from exc
    if trace_path is not None and engine.tracer is not None:
        engine.tracer.write(trace_path)
    streams: dict[int, list[tuple[float, int]]] = {}
    for entry, stream in zip(engine.token_times, engine.token_streams, strict=True):
        streams.setdefault(stream, []).append(entry)
    result = summarize(strategy.name, plan_dict, engine, makespan, workload, strategy.devices(plan), streams)
    memory_bound = {k: lane.memory_bound_s for k, lane in engine.lanes.items() if lane.memory_bound_s > 0}
    return (
        replace(result, lossy=strategy.lossy(plan, model)),
        streams,
        memory_bound,
        engine.lanes_at_first_token,
        [(count, lanes) for (_, count), lanes in zip(engine.token_times, engine.lanes_at_token, strict=True)]
        if engine.lanes_by_token
        else [],
    )


def summarize(
    name: str,
    plan_dict: dict[str, Any],
    engine: Engine,
    makespan: float,
    workload: Workload,
    devices: list[str],
    streams: dict[int, list[tuple[float, int]]],
) -> Result:
    """Metrics of an offline batch: FlexGen's throughput (generated tokens / total time); ``streams``
    are the token times grouped by the process that made them."""
    rig = engine.rig
    tokens = sum(count for _, count in engine.token_times)
    if not engine.token_times or makespan <= 0:
        return Result.infeasible(name, "the schedule produced no tokens", plan_dict)
    ttft = first_token_time(engine.token_times, workload.batch, streams, workload.gen_len)
    tpot = (makespan - ttft) / (workload.gen_len - 1) if workload.gen_len > 1 else 0.0
    util = engine.utilization(makespan)
    bottleneck = max(util, key=lambda k: (util[k], k)) if util else ""
    bound = engine.bound_of(bottleneck)
    if bound:
        bottleneck = f"{bottleneck} ({bound})"
    price = price_of(rig, devices)
    # No price on what the plan occupies (CPU sockets of a rig priced per GPU, or an unpriced rig)
    # means the cost is unknown, not zero: a free-looking plan must not win on cost.
    cost = usd_per_mtok(price, makespan, tokens) if tokens and price > 0 else float("nan")
    return Result(
        strategy=name,
        feasible=True,
        plan=plan_dict,
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=makespan,
        throughput_tok_s=tokens / makespan,
        peak_mem_bytes=engine.memory.peaks(),
        utilization=util,
        bottleneck=bottleneck,
        cost_usd_per_mtok=cost,
        weakest_grade=rig.weakest_grade(devices).name.lower(),
        tasks=engine.tasks,
        extras={"price_usd_per_hour": price, "tokens": float(tokens)},
        batch=workload.batch,
    )


def first_token_time(
    token_times: list[tuple[float, int]],
    batch: int,
    streams: dict[int, list[tuple[float, int]]] | None = None,
    gen_len: int = 0,
) -> float:
    """When every sequence of the batch has its first token (schedules may finish them in groups).

    Counting tokens in time order is right while no sequence decodes before every first token is out.
    Processes that run their own sequences side by side (HexGen's replicas) break that: a fast replica's
    second tokens would count for a slow one's first. When every process (``streams``: its token
    times) made ``gen_len`` tokens per sequence it holds, each one's first tokens are its first
    ``tokens / gen_len`` counted, and the batch has them all at the latest of those."""
    if streams and len(streams) > 1 and gen_len > 1:
        sequences = {k: sum(c for _, c in v) / gen_len for k, v in streams.items()}
        if all(n >= 1 and n == int(n) for n in sequences.values()):
            return max(_count_reached(v, int(sequences[k])) for k, v in streams.items())
    return _count_reached(token_times, batch)


def _count_reached(token_times: list[tuple[float, int]], count: int) -> float:
    """When ``count`` tokens have been made (the last token's time if never)."""
    seen = 0
    for t, c in token_times:
        seen += c
        if seen >= count:
            return t
    return token_times[-1][0]


def fast_forward(
    strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, workload: Workload, sample: int = FF_SAMPLE
) -> Result | None:
    """A long generation from two short runs of ``g = sample`` tokens: the head (the real prompt:
    prefill and the first decode steps, simulated as they are) and the tail (a prompt of
    ``prompt_len + gen_len - g``, so its decode steps read the KV lengths the full run ends with, and
    its context is the full one).

    A decode step's cost depends on the step only through its KV length, and nearly linearly (the
    attention's KV bytes and FLOPs grow by one token per step), and on the cache the run allocates
    (FlexGen decompresses a 4-bit cache's every slot): both samples allocate the full run's. Each
    run's steady step time is read from its second half (the time from the ``g/2``-th round of
    tokens to the last, per round), which leaves out start-up effects (pipeline fill, micro-batch
    offsets); the full run is the head, then
    ``gen_len - g`` steps at the step time interpolated between the two at their mean KV length.
    Where the samples' own growth per step parts (a lane taking over between them), a third,
    timing-only sample where their lines cross gives the steps' bends (``_kinked``, ``_bent``).
    TTFT is the head's, exactly. Memory is exact: peaks and feasibility come from the full
    workload's footprint (schedules allocate nothing while they run). Busy time per lane (so
    utilization, the bottleneck and whether it is memory-bound) is the head's plus, per added step,
    the tail's less a run of the tail's prefill alone (a third, short run): a short sample's own
    occupancy is mostly its prefill's.

    The tail books no memory (it is run for its timing; its long prompt would need a prefill
    workspace the full run does not). Returns None (run step by step) when a sample is infeasible
    although the full footprint fits, or its token streams give no steady step time: a plan that
    runs the batch in passes one after the other (each pass's decode is not a round of the batch),
    or sampled steps that do not grow evenly (``FF_STEADY_TOL``) even over whole periods of a
    repeating pattern (``_period``: the samples are then run again, longer by ``(n - g) % period``
    tokens, so that the added steps are whole periods and the last falls where the tail's does)."""
    g, n, h = sample, workload.gen_len, _window(sample)
    one_pass = strategy.pass_batch(plan)
    if one_pass is not None and one_pass < workload.batch:
        return None
    plan_dict = strategy.plan_to_dict(plan)
    ledger = Engine(rig)
    try:
        ledger.alloc_footprint(strategy.footprint(plan, rig, model, workload))
    except (OutOfMemory, NoRouteError) as exc:
        return Result.infeasible(strategy.name, str(exc), plan_dict)
    period = 1
    while True:
        head, head_times, head_mb, head_first, _ = _step_by_step(strategy, plan, rig, model, workload.head(g))
        tail_workload = _tail_workload(workload, g)
        # timing only: the tail's long prompt needs a prefill workspace the full run does not
        tail, tail_times, tail_mb, _, _ = _step_by_step(
            strategy, plan, rig, model, tail_workload, book_memory=False
        )
        if not (head.feasible and tail.feasible) or set(head_times) != set(tail_times) or not head_times:
            return None
        e2e = _run_end(head_times, tail_times, g, n, h, period)
        if e2e is not None:
            break
        if period > 1:
            return None
        # Steps that repeat a pattern (micro-batches of a pipeline meeting on a link every few
        # steps): measure whole periods, and sample so that the steps to add are whole periods too
        # (then the last step falls at the same point of the pattern as the tail's last).
        period = _period([*head_times.values(), *tail_times.values()], g)
        if period is None:
            return None
        g += (n - g) % period
        h = g - 1 - max(2, (g - 1 - h) // period) * period
        if h < 1 or 2 * g > n:
            return None
    k = _crossing(head_times, tail_times, g, n, h) if period == 1 else None
    if k is not None:
        # the samples' lines part: a third, timing-only sample where they cross (``_bent``)
        mid_workload = workload.sample(k, g)
        mid, mid_times, _, _, _ = _step_by_step(strategy, plan, rig, model, mid_workload, book_memory=False)
        if mid.feasible and set(mid_times) == set(head_times):
            e2e = _run_end(head_times, tail_times, g, n, h, period, (k, mid_times)) or e2e
            head = replace(head, tasks=head.tasks + mid.tasks)
    tokens = head.extras["tokens"] * n / g
    # busy seconds: the head's, then the added steps' at the tail's busy seconds per decode step (the
    # tail less its prefill alone: a step's share of a short sample would be swamped by the prefill)
    prefill, _, prefill_mb, _, _ = _step_by_step(
        strategy, plan, rig, model, tail_workload.head(1), book_memory=False
    )
    if not prefill.feasible:
        return None

    def full(head_s: float, tail_s: float, prefill_s: float) -> float:
        """Seconds of the full run: the head's, and per added step the tail's less its prefill's."""
        return head_s + (n - g) * max(0.0, tail_s - prefill_s) / (g - 1)

    busy = {
        k: full(*(r.utilization.get(k, 0.0) * r.e2e_s for r in (head, tail, prefill)))
        for k in sorted(set(head.utilization) | set(tail.utilization))
    }
    util = {k: min(1.0, s / e2e) for k, s in busy.items()}  # an estimate: never more than the whole run
    bottleneck = max(util, key=lambda k: (util[k], k)) if util else ""
    label = ""
    if bottleneck.endswith(":compute") and busy[bottleneck] > 0:  # as Engine.bound_of
        mb = full(*(m.get(bottleneck, 0.0) for m in (head_mb, tail_mb, prefill_mb)))
        # per phase as Engine.bound_of: the head's prefill is the full run's
        label = phase_bound(busy[bottleneck], mb, *head_first.get(bottleneck, (0.0, 0.0)))
    price = head.extras["price_usd_per_hour"]
    return replace(
        head,
        tpot_s=(e2e - head.ttft_s) / (n - 1),
        e2e_s=e2e,
        throughput_tok_s=tokens / e2e,
        peak_mem_bytes=ledger.memory.peaks(),
        utilization=util,
        bottleneck=f"{bottleneck} ({label})" if label else bottleneck,
        cost_usd_per_mtok=usd_per_mtok(price, e2e, tokens) if tokens and price > 0 else float("nan"),
        tasks=head.tasks + tail.tasks + prefill.tasks,
        extras={**head.extras, "tokens": tokens, "fast_forward_sample": float(g)},
    )


def _run_end(
    head_times: Streams,
    tail_times: Streams,
    g: int,
    n: int,
    h: int,
    period: int,
    mid: tuple[int, Streams] | None = None,
) -> float | None:
    """When the full run ends, from samples of ``g`` rounds; None if a stream gives no steady step.

    Each process making tokens (a replica, a micro-batch) is a stream of its own; the run ends with
    the slowest. Per stream, rounds of tokens (one per sequence of the stream): the head's rounds
    1..g-1 as simulated; the full run's rounds g..n-1 at the steady step time; its last round (a
    schedule may end differently, e.g. with no prefetch) as the tail's last. Steady step times come
    from rounds h..g-1 of each run (a whole number of ``period`` steps)."""
    # the head's measured steps read KV lengths P+h..P+g-2, the tail's n-g further; the steps to
    # add (rounds g..n-1) read P+g-1..P+n-2: their mean sits this far from the head's to the tail's
    frac = (n - h - 1) / (2 * (n - g))
    e2e = 0.0
    for stream, head_stream in head_times.items():
        tail_stream = tail_times[stream]
        per_round = sum(c for _, c in head_stream)
        if per_round % g or sum(c for _, c in tail_stream) != per_round:
            return None
        b = per_round // g
        times = [_round_time(head_stream, b, r) for r in (h, g - 1)] + [
            _round_time(tail_stream, b, r) for r in (h, g - 1, g)
        ]
        if any(t is None for t in times) or not (times[0] < times[1] and times[2] < times[3]):  # type: ignore[operator]
            return None
        if not (_steady(head_stream, b, h, g - 1, period) and _steady(tail_stream, b, h, g - 1, period)):
            return None
        head_h, head_last, tail_h, tail_before_last, tail_last = times  # type: ignore[misc]
        step_head = (head_last - head_h) / (g - 1 - h)
        step_tail = (tail_before_last - tail_h) / (g - 1 - h)
        added = (n - g) * (step_head + frac * (step_tail - step_head))
        if period == 1:
            added = _kinked(head_stream, tail_stream, b, g, n, h, added)
            if mid is not None:
                added = _bent(head_stream, mid[1][stream], tail_stream, b, g, n, h, mid[0]) or added
        e2e = max(e2e, head_last + added + (tail_last - tail_before_last))
    return e2e


def _line(
    stream: list[tuple[float, int]], b: int, g: int, h: int, period: int = 1
) -> tuple[float, float] | None:
    """A sample's line: its mean step over rounds h..g-1 and its own growth per step (its first and
    last step's, or period's); None where it has fewer than two periods of steps."""
    if g - 1 - h < 2 * period:
        return None
    t = [_round_time(stream, b, r) for r in (h, h + period, g - 1 - period, g - 1)]
    if any(x is None for x in t):
        return None
    return _line_through(*t, g - 1 - h, period)  # type: ignore[arg-type]


def _line_through(
    first: float, second: float, before_last: float, last: float, steps: int, period: int = 1
) -> tuple[float, float]:
    """Mean step and growth per step of ``steps`` steps between cumulative values, from the first
    period and the last (``period`` steps each: a step repeating a pattern of that many grows by
    ``period`` x the growth per step from one period to the next; ``steps - period`` apart)."""
    return (last - first) / steps, ((last - before_last) - (second - first)) / (period * (steps - period))


def _parted(
    head: list[tuple[float, int]], tail: list[tuple[float, int]], b: int, g: int, n: int, h: int
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The samples' lines (``_line``) where their growth per step parts by more than
    ``FF_STEADY_TOL`` of their mean step over the added steps, growing; else None (straight steps
    keep the chord)."""
    lines = _line(head, b, g, h), _line(tail, b, g, h)
    if lines[0] is None or lines[1] is None:
        return None
    (step_head, s_head), (step_tail, s_tail) = lines
    parted = (s_tail - s_head) * (n - g) > FF_STEADY_TOL * (step_head + step_tail) / 2
    return (lines[0], lines[1]) if parted else None


def _kinked(
    head: list[tuple[float, int]],
    tail: list[tuple[float, int]],
    b: int,
    g: int,
    n: int,
    h: int,
    chord: float,
) -> float:
    """The added steps' seconds (rounds g..n-1), where the step's growth with the KV length bends
    between the samples; else ``chord`` (the steps interpolated between the samples' means).

    A decode step is the longest of its lanes' chains, each growing linearly with the KV length:
    where one lane takes over from another between the two samples, the chord between them runs
    above the steps (+0.05 % on a 4-bit disk cache). Each sample's mean step and own growth per
    step give its line (``_line``); with one bend between them the steps are the larger of the two
    lines, exactly. Two bends, or growth that falls again, need the middle sample (``_bent``)."""
    lines = _parted(head, tail, b, g, n, h)
    if lines is None:
        return chord
    (step_head, s_head), (step_tail, s_tail) = lines
    c_head = (h + g - 2) / 2  # the samples' mean steps sit at these step indices (the tail's n - g on)
    c_tail = c_head + n - g
    return sum(
        max(step_head + s_head * (i - c_head), step_tail + s_tail * (i - c_tail)) for i in range(g - 1, n - 1)
    )


def _crossing(head_times: Streams, tail_times: Streams, g: int, n: int, h: int) -> int | None:
    """Where to take the middle sample (its offset in steps from the head, as the tail's is
    ``n - g``): where the head's and the tail's lines cross, in the first stream whose lines part
    (``_parted``); None where none does. A convex step with two bends between the samples takes
    its middle line there (the two lines cross between the bends); with one bend, the middle
    sample straddles it (not steady) and the larger line is kept."""
    for k in sorted(head_times):
        head, tail = head_times[k], tail_times[k]
        b = sum(c for _, c in head) // g
        lines = _parted(head, tail, b, g, n, h) if b else None
        if lines is not None:
            (step_head, s_head), (step_tail, s_tail) = lines
            # step_head + s_head x = step_tail + s_tail (x - (n - g)), x from the head's mean step
            x = (step_tail - step_head - s_tail * (n - g)) / (s_head - s_tail)
            return round(x) if g <= x <= n - 2 * g else (n - g) // 2  # else between the samples: the middle
    return None


def _bent(
    head: list[tuple[float, int]],
    mid: list[tuple[float, int]],
    tail: list[tuple[float, int]],
    b: int,
    g: int,
    n: int,
    h: int,
    k: int,
) -> float | None:
    """The added steps' seconds through three samples' lines (the middle one ``k`` steps on from the
    head): from each sample's line to the next's where the two cross between them (a bend, up or
    down), else along the chord between their mean steps; None where the middle sample is not
    steady, or its mean step lies on the larger of the head's and the tail's lines (one bend:
    those lines hold, ``_kinked``)."""
    lines = [_line(s, b, g, h) for s in (head, mid, tail)]
    if sum(c for _, c in mid) != b * g or any(x is None for x in lines) or not _steady(mid, b, h, g - 1):
        return None
    c_head = (h + g - 2) / 2
    (va, sa), (vm, sm), (vb, sb) = lines  # type: ignore[misc]
    a, m, z = (va, sa, c_head), (vm, sm, c_head + k), (vb, sb, c_head + n - g)
    if abs(vm - max(va + sa * k, vb + sb * (k - n + g))) <= FF_STEADY_TOL * vm:
        return None  # on the larger of the two lines: one bend (or one inside it, too mild to see)
    return sum(_follow(*(a, m) if i <= m[2] else (m, z), i) for i in range(g - 1, n - 1))


def _follow(one: tuple[float, float, float], two: tuple[float, float, float], i: int) -> float:
    """Step ``i`` between two samples' lines (mean step, growth per step, the step index it sits at):
    the first's up to where they cross, the second's after; the chord where they do not cross
    between the samples."""
    (v1, s1, c1), (v2, s2, c2) = one, two
    if s1 != s2:
        x = (v2 - v1 - s2 * c2 + s1 * c1) / (s1 - s2)
        if c1 <= x <= c2:
            return v1 + s1 * (i - c1) if i < x else v2 + s2 * (i - c2)
    return v1 + (v2 - v1) * (i - c1) / (c2 - c1)


def _period(streams: list[list[tuple[float, int]]], g: int) -> int | None:
    """The shortest repeat (2 or more steps) of every stream's steps (samples of ``g`` rounds) from
    its second round (the first may wait for the pipeline to fill), seen at least twice; None if
    none."""
    for period in range(2, (g - 3) // 2 + 1):
        if all(_steady(s, sum(c for _, c in s) // g, 2, g - 1, period) for s in streams):
            return period
    return None


def _steady(token_times: list[tuple[float, int]], batch: int, first: int, last: int, period: int = 1) -> bool:
    """Whether rounds ``first``..``last`` come at steps that change evenly (each step ``period``
    steps on by the same amount, within ``FF_STEADY_TOL`` of the mean step), as steps growing with
    the KV length do; a ``period`` above 1 must be seen twice."""
    times = [_round_time(token_times, batch, r) for r in range(first, last + 1)]
    if any(t is None for t in times) or batch <= 0:
        return False
    steps = [b - a for a, b in pairwise(times)]  # type: ignore[operator]
    if period > 1 and len(steps) < 2 * period:
        return False
    changes = [b - a for a, b in zip(steps, steps[period:], strict=False)]
    if not changes:
        return True
    mean = sum(steps) / len(steps)
    return max(changes) - min(changes) <= FF_STEADY_TOL * mean


def _round_time(token_times: list[tuple[float, int]], batch: int, rounds: int) -> float | None:
    """When ``rounds`` tokens of every sequence exist (a schedule may finish a round in groups)."""
    seen = 0
    for t, count in token_times:
        seen += count
        if seen >= rounds * batch:
            return t
    return None
