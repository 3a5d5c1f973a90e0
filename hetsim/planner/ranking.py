"""Ranking candidate plans in the engine: the one place searches turn plans into results.

Searches rank candidates on a short proxy of the workload (the prefill and a few decode steps) and
extrapolate the decode rate; the chosen plan is then simulated in full. Decode steps differ only by
one token of context each, so a few of them give the per-token time to well under a percent for
prompts much longer than the gap, at a fraction of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import chain
from typing import Any

from hetsim.hardware.rig import Rig
from hetsim.models.spec import ModelSpec
from hetsim.sim.engine import FLOOR_SLACK
from hetsim.sim.memory import OutOfMemory
from hetsim.sim.result import Result, rank_key
from hetsim.sim.run import (
    FF_LONG_GEN_LEN,
    FF_SAMPLE,
    FF_SHORT_SAMPLE,
    Runnable,
    ScopedMemo,
    bend_bound,
    falling_end,
    head_end,
    settled,
    short_run,
    simulate,
    tail_end,
)
from hetsim.workload import Workload

# What share of a plan's estimated run a bend after the proxy may add (``bend_bound``) before
# the estimate takes the tail sample to see it: below it, the proxy's line is within this share.
BEND_TOL = 1e-3

# The proxy's length is the short fast-forward's sample, so the estimate of the plan a search picks
# is the head of its final run (``hetsim.sim.run.remembering_runs``).
PROXY_GEN_LEN = FF_SHORT_SAMPLE
# Where the proxy's window is still settling (``settled``), the head the estimate extends instead (for
# runs longer than it): the long fast-forward's, whose steady window (rounds 8..15) the run trusts.
SETTLE_GEN_LEN = FF_SAMPLE

Evaluate = Callable[[Any], Result]  # a plan -> its (estimated) result


# Estimates made during one search (``remembering``), by (strategy, plan, rig identity, model,
# workload): a free-batch search meets the same plan again (the batch ladder's default plan among the
# candidates, the winner checked once more), and an estimate is a pure function of these.
_ESTIMATES = ScopedMemo()
remembering = _ESTIMATES.remembering


def remembered(strategy: Runnable, question: tuple, rig: Rig, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, kept as the estimates are (inside ``remembering``), for a pure sub-result of a
    strategy's search that the ladder's rungs ask again; ``question`` (a tuple, never a plan) names it."""
    return _ESTIMATES.recall(strategy, question, rig, key, make)


def estimate(strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> Result:
    """``simulate`` on a proxy workload of at most ``PROXY_GEN_LEN`` tokens, scaled to the full one
    (inside ``remembering``, the same estimate asked again is not simulated again)."""
    return _ESTIMATES.recall(
        strategy, plan, rig, (model, workload), lambda: _estimate(strategy, plan, rig, model, workload)
    )


def _estimate(strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> Result:
    if workload.gen_len <= PROXY_GEN_LEN:
        return simulate(strategy, plan, rig, model, workload)
    proxy = workload.head(PROXY_GEN_LEN)
    r, streams, lanes = short_run(strategy, plan, rig, model, proxy)
    if not r.feasible:
        return r
    short = _full_context_short(strategy, plan, rig, model, proxy, workload, r)
    if short:
        return Result.infeasible(strategy.name, short, r.plan)
    if _in_passes(strategy, plan, workload):
        # passes one after another, each paying its own prefill: the proxy's TPOT (its makespan
        # after the first token) holds later passes' prefills, so extrapolate the makespan from its
        # decode rounds instead: the proxy's less a prefill-only run of the same passes
        prefill = simulate(strategy, plan, rig, model, workload.head(1)).e2e_s
        e2e = r.e2e_s + (r.e2e_s - prefill) * (workload.gen_len - PROXY_GEN_LEN) / (PROXY_GEN_LEN - 1)
        tpot = (e2e - r.ttft_s) / (workload.gen_len - 1)
    else:
        # the proxy's streams extended on their own lines (``head_end``): a decode step grows with the
        # KV's length (a KV cache that crosses a link each step: +17 % over 64 steps), and the
        # start-up and last step happen once; where a stream has no whole rounds, the mean step
        n = workload.gen_len
        # past FF_LONG_GEN_LEN tokens (where the run's own fast-forward takes longer samples) a lane
        # taking over after the proxy costs most, its bend growing with the square of the steps past
        # it (2.1 % at 3584 tokens, enough to rank a slower plan first): where the lanes' growth
        # may add more than BEND_TOL (``bend_bound``), the fast-forward's timing-only tail sample
        # sees it
        g = PROXY_GEN_LEN
        period = settled(streams, g) if n > SETTLE_GEN_LEN else 1
        # up to FF_LONG_GEN_LEN tokens a proxy settling as a start-up does goes on at its last step
        # (``falling_end``) rather than being run again: 16-round heads for all of them cost +0.18 CPU
        # s (+21 %) on the gen-32 headline's gpu-only and HexGen searches; patterns still take one
        settling = None if period or n > FF_LONG_GEN_LEN else falling_end(streams, g, n)
        if not period and settling is None:
            # a start-up still settling in the proxy's window (a pipeline's micro-batches spreading
            # out: steps that fall, or change unevenly) puts the line slow (+12 % on 8 stages): the
            # run's own fast-forward head, whose window starts 8 rounds in (its run is then a memo hit)
            g = SETTLE_GEN_LEN
            longer, streams, lanes = short_run(strategy, plan, rig, model, workload.head(g))
            if not longer.feasible:
                return longer
            period = settled(streams, g)
        line = settling or head_end(streams, g, n)
        # the tail sample reads steady steps one by one (``_run_end``): none for a head that repeats
        # a pattern or has not settled (it would give no end)
        tail = (
            n > FF_LONG_GEN_LEN
            and period == 1
            and line is not None
            and bend_bound(streams, lanes, g, n) > BEND_TOL * line
        )
        e2e = (
            (tail and tail_end(strategy, plan, rig, model, workload, streams, g))
            or line
            or r.ttft_s + r.tpot_s * (n - 1)
        )
        tpot = (e2e - r.ttft_s) / (n - 1)
    tokens = workload.batch * workload.gen_len
    return replace(
        r,
        e2e_s=e2e,
        tpot_s=tpot,
        throughput_tok_s=tokens / e2e,
        cost_usd_per_mtok=r.cost_usd_per_mtok * e2e / r.e2e_s,
        extras={**r.extras, "estimated_from_gen_len": float(PROXY_GEN_LEN)},
    )


def _full_context_short(
    strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, proxy: Workload, full: Workload, r: Result
) -> str:
    """Why the full generation would run out of memory where the proxy did not ("" = it fits).

    The proxy reserves a KV cache for its shorter context; the full run's peak is the proxy's peak plus
    the extra resident bytes of the longer context (on a device near its capacity, a pipeline's
    activations then no longer fit). A footprint that refuses the full context itself (HeteGen's
    working set over its GPU budget) is the reason, as it is when ``simulate`` allocates it."""
    try:
        grow = strategy.footprint(plan, rig, model, full)
    except OutOfMemory as exc:
        return f"{exc} (the full {full.context_len}-token context)"
    have = strategy.footprint(plan, rig, model, proxy)
    capacity = rig.capacities()
    for device, tags in grow.items():
        extra = sum(tags.values()) - sum(have.get(device, {}).values())
        peak = r.peak_mem_bytes.get(device, 0.0) + extra
        if extra > 0 and device in capacity and peak > capacity[device]:
            return (
                f"out of memory on {device}: the full {full.context_len}-token context needs "
                f"{peak / 1e9:.1f} GB of {capacity[device] / 1e9:.1f} GB (estimated from a shorter run)"
            )
    return ""


def _in_passes(strategy: Runnable, plan: Any, workload: Workload) -> bool:
    """Whether the plan runs the batch in passes one after another (``Strategy.pass_batch``)."""
    one = strategy.pass_batch(plan)
    return one is not None and one < workload.batch


def floor_run(workload: Workload) -> tuple[Workload, float]:
    """The run ``estimate`` simulates for ``workload`` (its proxy when that is shorter), and what a
    second of that run after its first token counts in the estimate's ``e2e_s`` (a plan not in
    passes: ``estimate_floor``'s scale)."""
    if workload.gen_len <= PROXY_GEN_LEN:
        return workload, 1.0
    return workload.head(PROXY_GEN_LEN), (workload.gen_len - 1) / (PROXY_GEN_LEN - 1)


def estimate_floor(
    workload: Workload,
    run_floors: Callable[[Workload], tuple[float, float] | None],
    in_passes: bool = False,
) -> float:
    """A lower bound of ``estimate``'s ``e2e_s`` on ``workload`` (0 where none), from lower bounds of
    (TTFT, makespan - TTFT) of the run it simulates (``run_floors`` of that run's workload: the
    proxy's when it is shorter), scaled as a flat extrapolation of the proxy's mean step would be.
    ``_estimate`` extends each stream on its window's line instead (``head_end``: start-up counted
    once, growth >= 0), which is at least that where the window's mean step is at least the proxy's
    mean decode step; held by property tests (tests/test_flexgen_floor.py,
    tests/test_hetegen_ladder_floor.py), not derived. A plan ``in_passes``
    is extrapolated from its decode rounds alone, at least the proxy's makespan: no more is bounded."""
    proxy, _ = floor_run(workload)
    got = run_floors(proxy)
    if got is None:
        return 0.0
    ttft, rest = got
    if proxy is not workload and not in_passes:
        rest = rest / (PROXY_GEN_LEN - 1) * (workload.gen_len - 1)
    return FLOOR_SLACK * (ttft + rest)


class Estimator:
    """The ``evaluate(plan)`` ``evaluator`` makes: ``estimate`` of one strategy on one problem. A
    search given one knows what it runs, so a lower bound of that run (``estimate_floor``) may
    spare it."""

    __slots__ = ("model", "rig", "strategy", "workload")

    def __init__(self, strategy: Runnable, rig: Rig, model: ModelSpec, workload: Workload):
        self.strategy, self.rig, self.model, self.workload = strategy, rig, model, workload

    def __call__(self, plan: Any) -> Result:
        return estimate(self.strategy, plan, self.rig, self.model, self.workload)

    def floor(self, plan: Any) -> float:
        """A lower bound of ``self(plan).e2e_s`` from the strategy's ``run_floors`` (0 where none)."""
        s, rig, model = self.strategy, self.rig, self.model
        floors = lambda w: s.run_floors(plan, rig, model, w)  # noqa: E731
        return estimate_floor(self.workload, floors, _in_passes(s, plan, self.workload))


def evaluator(strategy: Runnable, rig: Rig, model: ModelSpec, workload: Workload) -> Estimator:
    """The ``evaluate(plan)`` a planner is given: ``estimate`` of this strategy on this problem."""
    return Estimator(strategy, rig, model, workload)


def best_plan(
    plans: Iterable[Any],
    evaluate: Evaluate,
    objective: str,
    beaten: Callable[[Any, float], bool] | None = None,
) -> Any | None:
    """The candidate whose evaluated result ranks first for ``objective`` (the earliest on ties).

    A lone candidate is returned without evaluating it: there is nothing to rank. ``beaten(plan, t)``,
    true only when the plan's evaluated ``e2e_s`` is at least ``t`` (a lower bound says so), spares
    the run of a candidate that cannot rank first: for throughput and latency (the tokens of one
    search are the same for every candidate) it ranks at best level with the best so far, and the
    earlier wins. While the best so far is infeasible, ``beaten(plan, inf)`` (the plan cannot run at
    all: an infeasible run counts as never ending) spares a run that could only tie with it (every
    infeasible result ranks alike, ``rank_key``), for any objective."""
    key = rank_key(objective)
    it = iter(plans)
    best = next(it, _NONE)
    if best is _NONE:
        return None
    second = next(it, _NONE)
    if second is _NONE:
        return best
    best_r = evaluate(best)
    best_key = key(best_r)
    prune = beaten is not None and objective in ("throughput", "latency")
    for plan in chain((second,), it):
        if best_r.feasible:
            if prune and beaten(plan, best_r.e2e_s):  # type: ignore[misc]
                continue
        elif beaten is not None and beaten(plan, math.inf):
            continue
        r = evaluate(plan)
        k = key(r)
        if k < best_key:
            best, best_key, best_r = plan, k, r
    return best


_NONE = object()
