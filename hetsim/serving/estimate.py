"""A fast SLO-attainment estimate of a plan without the engine: HexGen's scheduler fitness.

HexGen's genetic algorithm scores a plan with a request-level serving simulator (HexGen, arXiv
2311.11514; its repo's ``alpa_serve/simulator``): a request goes to the replica whose clock frees
first (here: that would finish it first), and one that would miss its deadline is dropped. Here
each replica runs at batch 1 with ``in_flight`` loops (one per stage, as the engine's HexGen mode
does); a request occupies a loop for its latency ``L`` alone (the engine's own per-step times,
``step_time``), and ``n`` requests in flight on a replica share its busiest resource, so a request
started with ``n - 1`` others takes ``max(L, n * B)``, ``B`` being the busiest resource's work for
one request (a stage, or a link lane between stages). This is a processor-sharing approximation of
the engine's FIFO lanes, not a copy of them: it is optimistic for pipelines over several machines
(see benchmarks/results.md), so plans it selects are confirmed in the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hetsim.hardware.rig import Rig
from hetsim.models.memory import hidden_bytes
from hetsim.models.spec import ModelSpec
from hetsim.serving.batching import in_flight
from hetsim.serving.workload import Request
from hetsim.strategies.hexgen import HexGenPlan, Replica
from hetsim.strategies.pipeline_costs import layer_time, step_time


@dataclass
class _ReplicaClock:
    replica: Replica
    loops_free: list[float]


# (replica, prompt, output, weight dtype, kv dtype) -> (L, B); plans of one search share replicas
TimesCache = dict[tuple[Replica, int, int, str, str], tuple[float, float]]


def replica_times(
    rig: Rig, model: ModelSpec, rep: Replica, prompt: int, output: int, **dt
) -> tuple[float, float]:
    """(L, B): a lone request's latency, and the busiest resource's busy time for it: a stage's GPUs,
    or a link lane between stages, which the engine holds for a transfer's latency plus its bytes
    over the bandwidth (so a WAN hop's latency is paid once per token on that lane). Every decode
    step is costed at the mean context (two step costs per request shape, not one per token)."""
    mid = prompt + output // 2
    latency = step_time(rig, rep.stages, model, "prefill", 1, prompt, prompt, **dt) + (
        output - 1
    ) * step_time(rig, rep.stages, model, "decode", 1, 1, mid, **dt)
    busy: dict[str, float] = {}
    for i, st in enumerate(rep.stages):
        busy[f"stage{i}"] = st.layers * (
            layer_time(rig, st.devices, model, "prefill", 1, prompt, prompt, **dt)
            + (output - 1) * layer_time(rig, st.devices, model, "decode", 1, 1, mid, **dt)
        )
        if i + 1 < len(rep.stages):
            route = rig.route(st.devices[0], rep.stages[i + 1].devices[0])
            held = route.time(hidden_bytes(model, 1, prompt)) + (output - 1) * route.time(
                hidden_bytes(model, 1, 1)
            )
            for hop in route.hops:
                busy[hop.lane] = busy.get(hop.lane, 0.0) + held
    return latency, max(busy.values())


def predicted_latency(alone: float, busiest: float, sharing: int) -> float:
    """A request with ``sharing - 1`` others in flight on its replica: alone, or its share of the
    busiest stage (processor sharing)."""
    return max(alone, sharing * busiest)


def estimate_attainment(
    plan: HexGenPlan,
    rig: Rig,
    model: ModelSpec,
    requests: Sequence[Request],
    deadlines: Sequence[float] | np.ndarray,
    *,
    drop_late: bool = True,
    times: TimesCache | None = None,
) -> float:
    """Fraction of ``requests`` predicted to finish within their deadlines (see the module doc).
    ``times``: a cache of per-replica times shared by calls on the same rig and model (a search
    scores many plans that share replicas)."""
    if not requests:
        return 0.0
    dt = {"weight_dtype": plan.weight_dtype, "kv_dtype": plan.kv_dtype}
    times = {} if times is None else times
    clocks = [_ReplicaClock(rep, [0.0] * in_flight(rep)) for rep in plan.replicas]
    met = 0
    order = sorted(range(len(requests)), key=lambda i: (requests[i].arrival_s, requests[i].rid))
    for i in order:
        r = requests[i]
        best = None
        for idx, c in enumerate(clocks):
            key = (c.replica, r.prompt_len, r.output_len, plan.weight_dtype, plan.kv_dtype)
            if key not in times:
                times[key] = replica_times(rig, model, c.replica, r.prompt_len, r.output_len, **dt)
            lat, busy = times[key]
            start = max(r.arrival_s, min(c.loops_free))
            sharing = 1 + sum(f > start for f in c.loops_free)
            cand = (start + predicted_latency(lat, busy, sharing), start, idx)
            if best is None or cand < best:
                best = cand
        finish, start, idx = best  # type: ignore[misc]
        due = r.arrival_s + float(deadlines[i])
        if drop_late and finish > due:
            continue
        c = clocks[idx]
        c.loops_free[c.loops_free.index(min(c.loops_free))] = finish
        met += finish <= due
    return met / len(requests)
