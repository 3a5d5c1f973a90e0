"""Ranking candidate plans in the engine: the one place searches turn plans into results.

Searches rank candidates on a short proxy of the workload (the prefill and a few decode steps) and
extrapolate the decode rate; the chosen plan is then simulated in full. Decode steps differ only by
one token of context each, so a few of them give the per-token time to well under a percent for
prompts much longer than the gap, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import chain
from typing import Any

from hetsim.hardware.rig import Rig
from hetsim.models.spec import ModelSpec
from hetsim.sim.memory import OutOfMemory
from hetsim.sim.result import Result, rank_key
from hetsim.sim.run import Runnable, simulate
from hetsim.workload import Workload

PROXY_GEN_LEN = 6

Evaluate = Callable[[Any], Result]  # a plan -> its (estimated) result


def estimate(strategy: Runnable, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> Result:
    """``simulate`` on a proxy workload of at most ``PROXY_GEN_LEN`` tokens, scaled to the full one."""
    if workload.gen_len <= PROXY_GEN_LEN:
        return simulate(strategy, plan, rig, model, workload)
    proxy = replace(workload, gen_len=PROXY_GEN_LEN)
    r = simulate(strategy, plan, rig, model, proxy)
    if not r.feasible:
        return r
    short = _full_context_short(strategy, plan, rig, model, proxy, workload, r)
    if short:
        return Result.infeasible(strategy.name, short, r.plan)
    e2e = r.ttft_s + r.tpot_s * (workload.gen_len - 1)
    tokens = workload.batch * workload.gen_len
    return replace(
        r,
        e2e_s=e2e,
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
    activations then no longer fit)."""
    try:
        grow = strategy.footprint(plan, rig, model, full)
    except OutOfMemory as exc:  # a plan's own budget check (e.g. HeteGen's working set) at full context
        return str(exc)
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


def evaluator(strategy: Runnable, rig: Rig, model: ModelSpec, workload: Workload) -> Evaluate:
    """The ``evaluate(plan)`` a planner is given: ``estimate`` of this strategy on this problem."""
    return lambda plan: estimate(strategy, plan, rig, model, workload)


def best_plan(plans: Iterable[Any], evaluate: Evaluate, objective: str) -> Any | None:
    """The candidate whose evaluated result ranks first for ``objective`` (the earliest on ties).

    A lone candidate is returned without evaluating it: there is nothing to rank."""
    key = rank_key(objective)
    it = iter(plans)
    best = next(it, _NONE)
    if best is _NONE:
        return None
    second = next(it, _NONE)
    if second is _NONE:
        return best
    best_key = key(evaluate(best))
    for plan in chain((second,), it):
        k = key(evaluate(plan))
        if k < best_key:
            best, best_key = plan, k
    return best


_NONE = object()
