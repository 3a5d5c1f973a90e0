"""Run one plan of one strategy in the engine and turn what happened into a ``Result``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.models.spec import ModelSpec
from hetsim.sim.engine import Engine
from hetsim.sim.memory import OutOfMemory
from hetsim.sim.result import Result, rank_key
from hetsim.workload import Workload

if TYPE_CHECKING:
    from hetsim.strategies.base import Strategy


def simulate(
    strategy: Strategy,
    plan: Any,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    *,
    trace_path: str | None = None,
) -> Result:
    """Simulate ``plan``; an out-of-memory or unroutable plan is an infeasible result, not a crash."""
    plan_dict = strategy.plan_to_dict(plan)
    engine = Engine(rig, trace=trace_path is not None)
    try:
        for device, tags in strategy.footprint(plan, rig, model, workload).items():
            for tag, nbytes in tags.items():
                engine.alloc(device, nbytes, tag)
        makespan = engine.run(strategy.schedule(plan, rig, model, workload))
    except (OutOfMemory, NoRouteError) as exc:
        return Result.infeasible(strategy.name, str(exc), plan_dict)
    if trace_path is not None and engine.tracer is not None:
        engine.tracer.write(trace_path)
    return summarize(strategy.name, plan_dict, engine, makespan, workload, strategy.devices(plan))


# Searches rank candidates on a short proxy of the workload (the prefill and a few decode steps) and
# extrapolate the decode rate; the chosen plan is then simulated in full. Decode steps differ only by
# one token of context each, so a few of them give the per-token time to well under a percent for
# prompts much longer than the gap, at a fraction of the cost.
PROXY_GEN_LEN = 6


def estimate(strategy: Strategy, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> Result:
    """``simulate`` on a proxy workload of at most ``PROXY_GEN_LEN`` tokens, scaled to the full one."""
    if workload.gen_len <= PROXY_GEN_LEN:
        return simulate(strategy, plan, rig, model, workload)
    proxy = replace(workload, gen_len=PROXY_GEN_LEN)
    r = simulate(strategy, plan, rig, model, proxy)
    if not r.feasible:
        return r
    e2e = r.ttft_s + r.tpot_s * (workload.gen_len - 1)
    tokens = workload.batch * workload.gen_len
    return replace(
        r,
        e2e_s=e2e,
        throughput_tok_s=tokens / e2e,
        cost_usd_per_mtok=r.cost_usd_per_mtok * e2e / r.e2e_s,
        extras={**r.extras, "estimated_from_gen_len": float(PROXY_GEN_LEN)},
    )


def best_plan(
    strategy: Strategy, plans: Iterable[Any], rig: Rig, model: ModelSpec, workload: Workload, objective: str
) -> Any | None:
    """The candidate whose estimated result ranks first for ``objective`` (the earliest on ties)."""
    key = rank_key(objective)
    best, best_key = None, None
    for plan in plans:
        k = key(estimate(strategy, plan, rig, model, workload))
        if best_key is None or k < best_key:
            best, best_key = plan, k
    return best


def summarize(
    name: str,
    plan_dict: dict[str, Any],
    engine: Engine,
    makespan: float,
    workload: Workload,
    devices: list[str],
) -> Result:
    """Metrics of an offline batch: FlexGen's throughput (generated tokens / total time)."""
    rig = engine.rig
    tokens = sum(count for _, count in engine.token_times)
    if not engine.token_times or makespan <= 0:
        return Result.infeasible(name, "the schedule produced no tokens", plan_dict)
    ttft = first_token_time(engine.token_times, workload.batch)
    tpot = (makespan - ttft) / (workload.gen_len - 1) if workload.gen_len > 1 else 0.0
    util = engine.utilization(makespan)
    bottleneck = max(util, key=lambda k: (util[k], k)) if util else ""
    bound = engine.bound_of(bottleneck)
    if bound:
        bottleneck = f"{bottleneck} ({bound})"
    price = price_of(rig, devices)
    # No price on what the plan occupies (CPU sockets of a rig priced per GPU, or an unpriced rig)
    # means the cost is unknown, not zero: a free-looking plan must not win on cost.
    cost = price / 3600.0 * makespan / tokens * 1e6 if tokens and price > 0 else float("nan")
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
    )


def price_of(rig: Rig, devices: list[str]) -> float:
    """Hourly price of what a plan occupies: its devices, plus the nodes they sit in."""
    used = [rig.devices[d] for d in devices if d in rig.devices]
    nodes = {d.node for d in used}
    return sum(d.price_per_hour for d in used) + sum(rig.nodes[n].price_per_hour for n in nodes)


def first_token_time(token_times: list[tuple[float, int]], batch: int) -> float:
    """When every sequence of the batch has its first token (schedules may finish them in groups)."""
    seen = 0
    for t, count in token_times:
        seen += count
        if seen >= batch:
            return t
    return token_times[-1][0]
