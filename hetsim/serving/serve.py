"""Run a request stream against a HexGen plan in the engine, and the searches built on it: SLO
deadlines from a reference setup, the tightest deadline scale and the highest rate that meet a
target attainment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hetsim.costs.pricing import price_of
from hetsim.errors import InputError
from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.models.spec import ModelSpec
from hetsim.serving.batching import ReplicaServer, in_flight
from hetsim.serving.dispatcher import Dispatcher
from hetsim.serving.estimate import predicted_latency, replica_times
from hetsim.serving.metrics import RequestRecord, ServeResult
from hetsim.serving.workload import Request, poisson_requests
from hetsim.sim.engine import Engine
from hetsim.sim.memory import OutOfMemory
from hetsim.stopping import keeping
from hetsim.strategies.hexgen import HexGenPlan, check_plan, replica_footprint
from hetsim.strategies.pipeline_costs import step_time

MODES = ("continuous", "hexgen")  # continuous batching (default) | HexGen's static batches


def decode_step_times(rig: Rig, model: ModelSpec, plan: HexGenPlan, context: int) -> list[list[float]]:
    """Per replica, an uncontended decode step with 1..max_batch sequences (the dispatcher's view)."""
    dt = {"weight_dtype": plan.weight_dtype, "kv_dtype": plan.kv_dtype}
    return [
        [step_time(rig, r.stages, model, "decode", b, 1, context, **dt) for b in range(1, plan.max_batch + 1)]
        for r in plan.replicas
    ]


def serve_plan(
    plan: HexGenPlan,
    rig: Rig,
    model: ModelSpec,
    requests: Sequence[Request],
    *,
    dispatch: str = "least-latency",
    horizon_s: float | None = None,
    mode: str = "continuous",
    deadlines: Sequence[float] | np.ndarray | None = None,
    drop_late: bool = False,
    server: Callable[..., ReplicaServer] = ReplicaServer,
) -> ServeResult:
    """Every request through the engine; memory for weights and the KV of ``max_batch`` sequences
    per in-flight batch is allocated up front (out of memory -> infeasible result).

    ``mode="hexgen"``: HexGen's runtime, static batches run to completion (``ReplicaServer.static``).
    ``drop_late`` (needs ``deadlines``, one per request in order): a request is dropped, unserved,
    when it is taken from the queue and would not finish by its arrival plus deadline, as HexGen's
    serving simulator does; it counts as missing its deadline. The prediction is the estimate's
    (``hetsim.serving.estimate.predicted_latency``: alone, or sharing the busiest stage with the
    batches already running there), so a kept request may still miss.

    ``server`` builds each replica's batch loop (``ReplicaServer``'s arguments); validation passes a
    subclass that times its steps from measured tables (``validate.serving``), same scheduler."""
    check_plan(plan, rig, model)
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r} (use {', '.join(MODES)})", field="--mode")
    if drop_late and deadlines is None:
        raise InputError("--drop-late needs --slo or --slo-scale", field="--drop-late")
    engine = Engine(rig)
    if not requests:
        return ServeResult(False, "no requests")
    context = max(r.prompt_len + r.output_len for r in requests)
    max_prompt = max(r.prompt_len for r in requests)
    try:
        for rep in plan.replicas:
            kv_seqs = plan.max_batch * in_flight(rep)
            engine.alloc_footprint(
                replica_footprint(model, rep, kv_seqs, context, plan.max_batch * max_prompt, plan)
            )
    except OutOfMemory as exc:
        return ServeResult(False, str(exc))
    first: dict[int, float] = {}
    finish: dict[int, float] = {}
    where: dict[int, int] = {}
    dropped: dict[int, float] = {}
    admit = None
    if drop_late:
        due = {r.rid: r.arrival_s + float(d) for r, d in zip(requests, deadlines, strict=True)}  # type: ignore[arg-type]
        admit = _late_filter(rig, model, plan, due, where)
    servers = [
        server(
            i,
            rep,
            plan,
            model,
            on_first=lambda r, t: first.__setitem__(r.rid, t),
            on_done=lambda r, t: finish.__setitem__(r.rid, t),
            static=mode == "hexgen",
            admit=admit,
            on_drop=lambda r, t: dropped.__setitem__(r.rid, t),
        )
        for i, rep in enumerate(plan.replicas)
    ]
    dispatcher = Dispatcher(servers, decode_step_times(rig, model, plan, context), dispatch)
    ordered = sorted(requests, key=lambda r: (r.arrival_s, r.rid))

    def arrivals(env_engine: Engine):
        env = env_engine.env
        for r in ordered:
            if r.arrival_s > env.now:
                yield env.timeout(r.arrival_s - env.now)
            server = dispatcher.choose()
            where[r.rid] = server.index
            server.submit(env_engine, r)

    for s in servers:
        s.start(engine)
    engine.env.process(arrivals(engine))
    try:
        engine.env.run(until=horizon_s)
    except NoRouteError as exc:
        return ServeResult(False, str(exc))
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM (the CLI's): what finished by now is kept
        with keeping():  # ~0.4 CPU s for 100,000 requests
            partial = _result(rig, plan, requests, first, finish, where, dropped, mode, drop_late)
        raise RunStopped(partial, engine.env.now, len(where), frozenset(dropped)) from exc
    return _result(rig, plan, requests, first, finish, where, dropped, mode, drop_late)


class RunStopped(KeyboardInterrupt):
    """``serve_plan`` interrupted: ``result`` holds every request, those finished by the simulated
    time ``now_s`` with their times (the rest unfinished, as a horizon leaves them); ``arrived`` of
    them had been dispatched by then, ``dropped`` (their ids) dropped unserved (``drop_late``)."""

    def __init__(
        self, result: ServeResult, now_s: float, arrived: int, dropped: frozenset[int] = frozenset()
    ) -> None:
        super().__init__(f"stopped at simulated {now_s:.6g} s: {len(result.finished)} requests finished")
        self.result = result
        self.now_s = now_s
        self.arrived = arrived
        self.dropped = dropped

    def attainment(self, deadlines: Sequence[float] | np.ndarray) -> tuple[float | None, int]:
        """(SLO attainment, requests it is over): over the requests decided by ``now_s``, those
        finished and those unfinished past their deadline or dropped (a miss whatever comes after);
        None if none."""
        latency, due = self.result.latencies(), np.asarray(deadlines, dtype=float)
        arrival = np.array([r.arrival_s for r in self.result.records])
        dropped = np.array([r.rid in self.dropped for r in self.result.records], dtype=bool)
        met = latency <= due
        decided = np.isfinite(latency) | (arrival + due < self.now_s) | dropped
        n = int(decided.sum())
        return (float(met.sum() / n) if n else None), n


def _result(
    rig: Rig,
    plan: HexGenPlan,
    requests: Sequence[Request],
    first: dict[int, float],
    finish: dict[int, float],
    where: dict[int, int],
    dropped: dict[int, float],
    mode: str,
    drop_late: bool,
) -> ServeResult:
    """A run's result from its requests' first-token and finish times (a missing time: not reached)."""
    records = tuple(
        RequestRecord(
            r.rid,
            r.arrival_s,
            r.prompt_len,
            r.output_len,
            first.get(r.rid, float("inf")),
            finish.get(r.rid, float("inf")),
            where.get(r.rid, -1),
        )
        for r in requests
    )
    makespan = max(finish.values()) if finish else 0.0
    extras = {"mode": mode, "dropped": len(dropped)} if mode != "continuous" or drop_late else {}
    return ServeResult(
        True,
        records=records,
        makespan_s=makespan,
        price_per_hour=price_of(rig, plan.devices),
        replicas=len(plan.replicas),
        extras=extras,
    )


def _late_filter(
    rig: Rig, model: ModelSpec, plan: HexGenPlan, due: dict[int, float], where: dict[int, int]
) -> Callable[[Request, float], bool]:
    """``admit(request, now, busy)`` for ``drop_late``: keep it when it can still finish in time."""
    dt = {"weight_dtype": plan.weight_dtype, "kv_dtype": plan.kv_dtype}
    cache: dict[tuple[int, int, int], tuple[float, float]] = {}

    def admit(r: Request, now: float, busy: int) -> bool:
        key = (where[r.rid], r.prompt_len, r.output_len)
        if key not in cache:
            cache[key] = replica_times(rig, model, plan.replicas[key[0]], r.prompt_len, r.output_len, **dt)
        return now + predicted_latency(*cache[key], busy + 1) <= due[r.rid] * (1 + 1e-12)

    return admit


# ---- deadlines ------------------------------------------------------------------------------------
@dataclass
class Reference:
    """Single-request latencies on a reference deployment (the paper: the A100 setup), per lengths."""

    plan: HexGenPlan
    rig: Rig
    model: ModelSpec
    _cache: dict[tuple[int, int], float]

    @classmethod
    def build(cls, rig: Rig, model: ModelSpec, plan: HexGenPlan) -> Reference:
        return cls(plan, rig, model, {})

    def latency(self, prompt_len: int, output_len: int) -> float:
        key = (prompt_len, output_len)
        if key not in self._cache:
            one = serve_plan(self.plan, self.rig, self.model, [Request(0, 0.0, prompt_len, output_len)])
            if not one.feasible:
                raise ValueError(f"reference plan infeasible: {one.reason}")
            self._cache[key] = one.records[0].latency_s
        return self._cache[key]

    def latencies(self, requests: Sequence[Request]) -> np.ndarray:
        return np.array([self.latency(r.prompt_len, r.output_len) for r in requests])


def deadlines_for(
    requests: Sequence[Request],
    *,
    slo_s: float | None = None,
    slo_scale: float | None = None,
    reference: Reference | None = None,
) -> np.ndarray:
    if slo_s is not None:
        return np.full(len(requests), float(slo_s))
    if slo_scale is None or reference is None:
        raise ValueError("give slo_s, or slo_scale with a reference")
    return slo_scale * reference.latencies(requests)


def min_scale(result: ServeResult, reference: Reference, target: float) -> float:
    """The tightest deadline scale (x single-request reference latency) meeting ``target``."""
    if not result.feasible:
        return float("inf")
    req = [Request(r.rid, r.arrival_s, r.prompt_len, r.output_len) for r in result.records]
    ratio = np.sort(result.latencies() / reference.latencies(req))
    k = int(np.ceil(target * len(ratio))) - 1
    return float(ratio[max(0, k)])


def max_rate(
    evaluate: Callable[[float], float],
    target: float,
    *,
    lo: float = 0.05,
    hi: float = 2.0,
    iterations: int = 10,
    ceiling: float = 1000.0,
) -> float:
    """The highest rate with ``evaluate(rate) >= target`` (attainment falls with rate): grow ``hi``
    until it fails, then bisect on a log scale. 0 when even ``lo`` fails."""
    if evaluate(lo) < target:
        return 0.0
    while evaluate(hi) >= target:
        lo, hi = hi, hi * 2
        if hi > ceiling:
            return lo
    for _ in range(iterations):
        mid = float(np.sqrt(lo * hi))
        if evaluate(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def attainment_at(
    plan: HexGenPlan,
    rig: Rig,
    model: ModelSpec,
    rate: float,
    *,
    n: int,
    seed: int,
    slo_s: float | None = None,
    slo_scale: float | None = None,
    reference: Reference | None = None,
    dispatch: str = "least-latency",
    mode: str = "continuous",
    drop_late: bool = False,
) -> float:
    reqs = poisson_requests(rate, n=n, seed=seed)
    deadlines = deadlines_for(reqs, slo_s=slo_s, slo_scale=slo_scale, reference=reference)
    res = serve_plan(
        plan, rig, model, reqs, dispatch=dispatch, mode=mode, deadlines=deadlines, drop_late=drop_late
    )
    if not res.feasible:
        return 0.0
    return res.attainment(deadlines)
