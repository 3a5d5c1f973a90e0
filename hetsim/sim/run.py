"""Run one plan of one strategy in the engine and turn what happened into a ``Result``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from hetsim.costs.pricing import price_of, usd_per_mtok
from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.models.spec import ModelSpec
from hetsim.sim.engine import Engine, Schedule
from hetsim.sim.memory import OutOfMemory
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

    def lossy(self, plan: Any) -> str: ...


def context_reason(model: ModelSpec, context_len: int) -> str | None:
    """Why a sequence of ``context_len`` tokens cannot run on ``model`` (its position limit), else None."""
    if context_len > model.max_position:
        return (
            f"context of {context_len} tokens (prompt + generated) exceeds {model.name}'s maximum of "
            f"{model.max_position} positions"
        )
    return None


def simulate(
    strategy: Runnable,
    plan: Any,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    *,
    trace_path: str | None = None,
) -> Result:
    """Simulate ``plan``; an out-of-memory or unroutable plan is an infeasible result, not a crash."""
    plan_dict = strategy.plan_to_dict(plan)
    too_long = context_reason(model, workload.context_len)
    if too_long:
        return Result.infeasible(strategy.name, too_long, plan_dict)
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
    result = summarize(strategy.name, plan_dict, engine, makespan, workload, strategy.devices(plan))
    return replace(result, lossy=strategy.lossy(plan))


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
    )


def first_token_time(token_times: list[tuple[float, int]], batch: int) -> float:
    """When every sequence of the batch has its first token (schedules may finish them in groups)."""
    seen = 0
    for t, count in token_times:
        seen += count
        if seen >= batch:
            return t
    return token_times[-1][0]
