"""HeteGen's planner: split ratios (Eq. 5, confirmed in the engine) and GPU-resident modules (CP-SAT).

1. **Alpha.** For every module kind and phase, Eq. 5 of the paper gives a first alpha from the three
   speeds the engine itself uses: V_CPU and V_GPU from ``hetsim.costs.op_cost`` on each side, V_COM
   from the route's bandwidth. Eq. 5 ignores that the DMA and the CPU GEMV draw on the same DRAM
   channels (HeteGen, arXiv 2403.01164); the engine books that, so the alpha is then refined by
   bisection on the engine's own timeline of one split module (the "Alpha Benchmark" of the paper, run in the
   simulator): the crossing of the falling CPU curve and the rising copy+GPU curve.
2. **Residency.** Making one module resident saves (split time - resident time) on every step; each
   costs its bytes of GPU memory. Which modules stay on the GPU is a bounded knapsack (one integer
   count per module kind, layers being identical), solved exactly with OR-Tools CP-SAT; the GPU
   weight buffer (the largest alpha share still streamed) is part of the model, since making the
   largest kinds fully resident shrinks it. ``greedy_resident`` is the paper's greedy by time saved per
   byte, kept for comparison.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from hetsim.costs.kernel_tables import measured_kernel
from hetsim.costs.op_cost import op_cost
from hetsim.hardware.rig import Rig
from hetsim.hardware.types import ComputeDevice
from hetsim.models.kernel_bytes import eager_bytes
from hetsim.models.spec import ModelSpec, Op, Phase
from hetsim.planner.ranking import Evaluate, best_plan, estimate_floor, floor_run
from hetsim.sim.memory import OutOfMemory, check_budget, usable_bytes
from hetsim.strategies.hetegen import (
    FLOOR_SLACK,
    RUNTIME_RESERVE_BYTES,
    SPLIT_SYNC_S,
    STREAM_CHUNK_BYTES,
    HeteGenPlan,
    check_cpu_dtype,
    e2e_floor,
    floor_parts,
    measure_split,
    module_bytes,
    module_counts,
    module_ops,
    share_buffer,
    split_times,
    working_set,
)
from hetsim.workload import Workload

_BISECT_STEPS = 24  # alpha to 6e-8: far below what any module time can resolve
_BRACKET_EVALS = 16  # runs that narrow the bracket before the bisection (6 typically suffice)


def balanced_alpha(rig: Rig, gpu: str, cpu: str, op: Op, cpu_dtype: str = "fp16") -> float:
    """The alpha where the CPU path and the copy+GPU path of one split module end together.

    Bisection on the engine's timeline (DRAM contention, link latency, activation copies and op
    overheads included), by ``bisect_crossing``.
    """

    def gap(alpha: float) -> float:  # > 0: the CPU path ends later
        _, cpu_end, gpu_end = measure_split(rig, gpu, cpu, op, alpha, cpu_dtype=cpu_dtype)
        return cpu_end - gpu_end

    return bisect_crossing(gap)


def _alike(op: Op, measured: bool, issued: bool = False) -> tuple[Op, str | None, float]:
    """What a lone split module's engine run (``measure_split``, untraced) reads of ``op``: all but
    its names (trace labels); where a device of the run has measured kernels (``measured``), the
    kernel its name selects (``measured_kernel``); where one's host issue is measured (``issued``),
    its kernel count and the bytes of the passes its name selects (``eager_bytes``), else neither
    (``hetsim.costs.op_cost``). Modules alike so have the same balanced alpha (Llama's q_proj and
    out_proj, k_proj and v_proj, where no host issue is measured; gate_proj and up_proj; the LM head
    of both phases)."""
    kernel = measured_kernel(op.name) if measured else None
    passes = eager_bytes(op).passes if issued else 0.0
    return dataclasses.replace(op, name="", module="", kernels=op.kernels if issued else 1), kernel, passes


def bisect_crossing(gap: Callable[[float], float], steps: int = _BISECT_STEPS) -> float:
    """``steps`` halvings of [0, 1], keeping the side where ``gap`` > 0 below the midpoint.

    ``gap`` is non-increasing (the CPU path shortens and the GPU path lengthens as alpha grows), so
    the side of a midpoint is known without running it when it lies at or below a point measured
    with gap > 0, or at or above one measured with gap <= 0. ``crossing_bracket`` first narrows
    those two points in a few runs; the bisection then runs only the midpoints left between them:
    the same halvings and the same result as running every midpoint, in about 6 runs instead of 24.
    """
    measured: dict[float, float] = {}

    def once(alpha: float) -> float:
        if alpha not in measured:
            measured[alpha] = gap(alpha)
        return measured[alpha]

    a, _, b, _ = crossing_bracket(once, _BRACKET_EVALS, 0.5 ** (steps + 6))
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if mid <= a or (mid < b and once(mid) > 0):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def crossing_bracket(
    gap: Callable[[float], float], evals: int, width: float
) -> tuple[float, float, float, float]:
    """(a, gap(a), b, gap(b)) with gap(a) > 0 >= gap(b) and a < b, for a non-increasing ``gap`` on
    [0, 1], in at most ``evals`` runs after the two ends, stopping once b - a <= ``width``. Where
    gap does not change sign on [0, 1], a = b = 1 (CPU late everywhere) or a = b = 0 (nowhere).

    Each probe is the secant through the last two points with gap > 0, a quarter ``width`` past
    the crossing it predicts on the side not seen last: the engine's gap is linear in alpha before
    the crossing and can be zero past it (the partial output queues behind the weight copy on the
    same link), so the secant from that side lands on it in two or three runs where regula falsi
    would crawl. Outside (a, b) it falls back to Illinois regula falsi, then to the midpoint."""
    fa, fb = gap(0.0), gap(1.0)
    if not (fa > 0 >= fb):
        return (1.0, fa, 1.0, fb) if fb > 0 else (0.0, fa, 0.0, fb)
    a, b = 0.0, 1.0
    late = [(0.0, fa)]  # the last two points with gap > 0, unweighted by Illinois
    side = 0
    for _ in range(evals):
        if b - a <= width:
            break
        c = -1.0
        if len(late) == 2 and late[0][1] != late[1][1]:
            (x0, f0), (x1, f1) = late
            c = x1 + f1 * (x1 - x0) / (f0 - f1) + (0.25 * width if side == 1 else -0.25 * width)
        if not a < c < b and fb != fa:  # equal only when gap underflows (a subnormal crossing)
            c = (a * fb - b * fa) / (fb - fa)
        if not a < c < b:
            c = 0.5 * (a + b)
        fc = gap(c)
        if fc > 0:
            late = [late[-1], (c, fc)]
            a, fa = c, fc
            if side == 1:
                fb *= 0.5
            side = 1
        else:
            b, fb = c, fc
            if side == -1:
                fa *= 0.5
            side = -1
    return a, fa, b, fb


@dataclass(frozen=True)
class Item:
    """One module kind as knapsack items: ``count`` identical modules."""

    kind: str
    count: int
    nbytes: int  # GPU memory of one resident module
    saved_s: float  # time saved over the whole workload by making one module resident
    buffer_bytes: int  # GPU buffer needed while any module of this kind is streamed


def items_for(
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    gpu: str,
    cpu: str,
    alphas: Mapping[Phase, Mapping[str, float]],
    *,
    weight_dtype: str = "fp16",
    sync_s: float = SPLIT_SYNC_S,
    buffers: int = 1,
    cpu_dtype: str = "fp16",
) -> list[Item]:
    b = workload.batch
    sizes = module_bytes(model, weight_dtype)
    counts = module_counts(model)
    phases: tuple[tuple[Phase, int, int], ...] = (
        ("prefill", workload.prompt_len, 1),
        ("decode", 1, workload.gen_len - 1),
    )
    out = []
    for kind, size in sizes.items():
        saved = 0.0
        for phase, seq, repeats in phases:
            if repeats == 0:
                continue
            op = module_ops(model, phase, b, seq, weight_dtype)[kind]
            split_t, _, _ = measure_split(rig, gpu, cpu, op, alphas[phase][kind], sync_s, cpu_dtype)
            resident_t = op_cost(rig.devices[gpu], op).time_s
            saved += repeats * max(0.0, split_t - resident_t)
        a = max(alphas["prefill"][kind], alphas["decode"][kind])
        buf = share_buffer(a * size, STREAM_CHUNK_BYTES)
        out.append(Item(kind, counts[kind], int(size), saved, int(buffers * buf + 0.5)))
    return out


def solve_resident(items: list[Item], capacity: float) -> dict[str, int]:
    """Exact bounded knapsack with CP-SAT: maximise time saved under ``capacity`` bytes.

    Resident weights plus the weight buffer (sized by the largest share of a kind not fully
    resident) must fit in ``capacity``. The optimum is rarely unique (q/k/v/out_proj are the same
    item; whole microseconds of saving tie other mixes), so ties are broken explicitly, not by the
    solver's search: a second solve with the saving fixed at its optimum takes the fewest GPU bytes
    (resident weights plus buffer: the same time for less memory), then the kinds in ``items``' order
    (a layer's execution order: q_proj before k_proj ...; the engine's time is the same for either).
    """
    # no choice uses more than every module plus the largest buffer: a larger budget changes
    # nothing, and one past 2^63 (or inf) would not reach CP-SAT (TypeError, OverflowError)
    most = sum(it.nbytes * it.count for it in items) + max((it.buffer_bytes for it in items), default=0)
    cap = int(min(capacity, max(most, 1)))
    if cap <= 0:
        return {it.kind: 0 for it in items}
    # loaded when a knapsack is solved (~0.1 s), not before; ``CpModel``: without the deprecated
    # aliases CP-SAT's own sets on every model (~0.7 ms a model): the same model, built by their names
    from hetsim.planner.cpsat import CpModel, cp_model

    m = CpModel()
    count = {it.kind: m.new_int_var(0, it.count, f"n_{it.kind}") for it in items}
    full = {it.kind: m.new_bool_var(f"full_{it.kind}") for it in items}
    buf = m.new_int_var(0, max((it.buffer_bytes for it in items), default=0), "buffer")
    for it in items:
        m.add(count[it.kind] == it.count).only_enforce_if(full[it.kind])
        m.add(count[it.kind] <= it.count - 1).only_enforce_if(full[it.kind].negated())
        m.add(buf >= it.buffer_bytes).only_enforce_if(full[it.kind].negated())
    used = sum(it.nbytes * count[it.kind] for it in items) + buf
    m.add(used <= cap)
    micros = {it.kind: round(it.saved_s * 1e6) for it in items}  # whole microseconds: exact integers
    saved = sum(micros[it.kind] * count[it.kind] for it in items)
    m.maximize(saved)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    # a limit on CP-SAT's deterministic time (work counted, not the clock: a loaded machine cannot
    # stop it early and change the answer); the largest shipped knapsack takes ~0.003 units
    solver.parameters.max_deterministic_time = 10.0
    solver.parameters.catch_sigint_signal = False  # Ctrl-C stays the caller's (see hexgen_cpsat)
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return {it.kind: 0 for it in items}
    first = {it.kind: int(solver.value(count[it.kind])) for it in items}
    if status != cp_model.OPTIMAL:  # no proven optimum to hold (never seen: 7 variables)
        return first
    # The tie-break: bytes first, then each kind's place (rank < ranks, so any byte outweighs it).
    # the optimum from the answer's counts, in integers: ``objective_value`` is a float (6999.999999999999
    # for 7000), and int() of it made the second model infeasible, so ties fell back to the first answer
    m.add(saved == sum(micros[k] * n for k, n in first.items()))
    ranks = 1 + sum(i * it.count for i, it in enumerate(items))
    m.minimize(used * ranks + sum(i * count[it.kind] for i, it in enumerate(items)))
    # without presolve: its cost was ~8x this solve's (the objective's coefficients reach 1e14), and
    # on large ties it ran into the time limit unproven (the first answer then stood); the search from
    # the hint proves the optimum in milliseconds. (The first solve keeps presolve: its knapsack DP
    # solves what a bare search can take 10 s for.) A proven optimum either way: only choices equal
    # in saving, bytes and ranks can come out differently.
    solver.parameters.cp_model_presolve = False
    for it in items:  # the first solve's answer is feasible: a hint
        m.add_hint(count[it.kind], first[it.kind])
    if solver.solve(m) != cp_model.OPTIMAL:
        return first
    return {it.kind: int(solver.value(count[it.kind])) for it in items}


def greedy_resident(items: list[Item], capacity: float) -> dict[str, int]:
    """The paper's Param. Scheduler: modules by time saved per byte, while they fit.

    The buffer for the largest streamed share is reserved up front (the greedy does not revisit it).
    """
    left = capacity - max((it.buffer_bytes for it in items), default=0)
    counts = {it.kind: 0 for it in items}
    for it in sorted(items, key=lambda i: (-i.saved_s / i.nbytes, i.kind)):
        n = int(max(0.0, left) // it.nbytes) if it.nbytes else it.count
        n = min(n, it.count)
        counts[it.kind] = n
        left -= n * it.nbytes
    return counts


def saved_time(items: list[Item], counts: Mapping[str, int]) -> float:
    return sum(it.saved_s * counts.get(it.kind, 0) for it in items)


def plan_hetegen(
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    gpu: str,
    gpu_mem_budget: float,
    *,
    weight_dtype: str = "fp16",
    split_sync_s: float = SPLIT_SYNC_S,
    runtime_reserve_bytes: float = RUNTIME_RESERVE_BYTES,
    cpu_dtype: str = "fp16",
) -> HeteGenPlan:
    """Alphas per kind and phase, then the resident set that fits ``gpu_mem_budget``.

    When even the working set (KV cache, activations, runtime) does not fit, the plan keeps every
    module split; ``footprint`` then reports it infeasible against the budget.
    """
    base, capacity = split_plan(
        rig,
        model,
        workload,
        gpu,
        gpu_mem_budget,
        weight_dtype=weight_dtype,
        split_sync_s=split_sync_s,
        runtime_reserve_bytes=runtime_reserve_bytes,
        cpu_dtype=cpu_dtype,
    )
    return resident_plan(base, capacity, rig, model, workload)


def split_plan(
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    gpu: str,
    gpu_mem_budget: float,
    *,
    weight_dtype: str = "fp16",
    split_sync_s: float = SPLIT_SYNC_S,
    runtime_reserve_bytes: float = RUNTIME_RESERVE_BYTES,
    cpu_dtype: str = "fp16",
) -> tuple[HeteGenPlan, float]:
    """``plan_hetegen``'s first half: the plan with its alphas and nothing resident, and the GPU
    bytes left for resident modules and the weight buffer (the knapsack's capacity)."""
    check_cpu_dtype(cpu_dtype, weight_dtype)
    gpu_mem_budget = usable_bytes(rig.devices[gpu].mem_bytes, gpu_mem_budget)  # no more than the GPU holds
    cpu = rig.host_cpu(gpu)
    b = workload.batch
    alphas: dict[Phase, dict[str, float]] = {"prefill": {}, "decode": {}}
    found: dict[tuple[Op, str | None, float], float] = {}  # one bisection per shape (``_alike``)
    measured = any(rig.devices[d].efficiency.kernel_tables for d in (gpu, cpu))
    issued = any(rig.devices[d].efficiency.kernel_issue_s for d in (gpu, cpu))
    for phase, seq in (("prefill", workload.prompt_len), ("decode", 1)):
        for kind, op in module_ops(model, phase, b, seq, weight_dtype).items():
            key = _alike(op, measured, issued)
            if key not in found:
                found[key] = round(balanced_alpha(rig, gpu, cpu, op, cpu_dtype), 6)
            alphas[phase][kind] = found[key]
    base = HeteGenPlan(
        gpu=gpu,
        cpu=cpu,
        gpu_mem_budget=float(gpu_mem_budget),
        resident={},
        alpha_prefill=alphas["prefill"],
        alpha_decode=alphas["decode"],
        weight_dtype=weight_dtype,
        split_sync_s=split_sync_s,
        runtime_reserve_bytes=runtime_reserve_bytes,
        cpu_dtype=cpu_dtype,
    )
    fixed = working_set(base, model, workload)
    fixed.pop("weight_buffers")  # the knapsack accounts for the buffers itself
    return base, gpu_mem_budget - sum(fixed.values())


def resident_plan(
    base: HeteGenPlan, capacity: float, rig: Rig, model: ModelSpec, workload: Workload
) -> HeteGenPlan:
    """``plan_hetegen``'s second half: ``base`` with the resident set the knapsack picks."""
    alphas: dict[Phase, Mapping[str, float]] = {"prefill": base.alpha_prefill, "decode": base.alpha_decode}
    items = items_for(
        rig,
        model,
        workload,
        base.gpu,
        base.cpu,
        alphas,
        weight_dtype=base.weight_dtype,
        sync_s=base.split_sync_s,
        cpu_dtype=base.cpu_dtype,
    )
    counts = solve_resident(items, capacity)
    return HeteGenPlan(**{**base.__dict__, "resident": {k: v for k, v in counts.items() if v}})


class _Candidate:
    """One GPU kind's plan in ``search``: alphas when its plan may still rank first (``beaten``)
    or is run, the knapsack only when a bound over every resident set leaves it in the race."""

    def __init__(self, rig: Rig, model: ModelSpec, workload: Workload, gpu: str, budget: float):
        self.rig, self.model, self.workload = rig, model, workload
        self.gpu, self.budget = gpu, budget
        self._split: tuple[HeteGenPlan, float] | None = None
        self._plan: HeteGenPlan | None = None

    @property
    def base(self) -> HeteGenPlan:
        return self._split_plan()[0]

    @property
    def capacity(self) -> float:
        return self._split_plan()[1]

    def _split_plan(self) -> tuple[HeteGenPlan, float]:
        if self._split is None:
            self._split = split_plan(self.rig, self.model, self.workload, self.gpu, self.budget)
        return self._split

    @property
    def plan(self) -> HeteGenPlan:
        if self._plan is None:
            self._plan = resident_plan(self.base, self.capacity, self.rig, self.model, self.workload)
        return self._plan

    def beaten(self, time_s: float) -> bool:
        """True when the plan's run takes at least ``time_s`` (or cannot run): first when its working
        set alone is over the budget (no alpha bisected), then by a floor over every resident set
        that fits (no knapsack solved), then by the plan's own ``e2e_floor``. At ``time_s`` = inf
        (``best_plan`` while its best is infeasible: is this plan sure not to run?) the budget alone
        answers: the floors are finite, and working them out would balance the alphas."""
        if math.isinf(time_s):
            return self._over_budget()
        return (
            self._over_budget()
            or self._any_resident_floor() >= time_s
            or e2e_floor(self.plan, self.rig, self.model, self.workload) >= time_s
        )

    def _over_budget(self) -> bool:
        """True when every plan on this GPU is refused by its footprint (``HeteGen.footprint``:
        ``check_budget`` of resident weights and the working set), whatever its alphas: the working
        set with nothing resident and no weight buffer (each of those adds bytes >= 0) is already
        over the budget, by more (1e-9) than the order of a float sum can move it. Its run is then
        infeasible and cannot rank first, as a run of the split plan would find, a few hundred
        engine runs later (HeteGen's alphas). The routes the split plan reads are read (a rig
        without one raises here as the split plan would)."""
        cpu = self.rig.host_cpu(self.gpu)
        self.rig.route(cpu, self.gpu), self.rig.route(self.gpu, cpu)
        bare = HeteGenPlan(gpu=self.gpu, cpu=cpu, gpu_mem_budget=float(self.budget))
        tags = {"resident_weights": 0.0, **working_set(bare, self.model, self.workload)}
        try:
            capacity = self.rig.devices[self.gpu].mem_bytes
            check_budget(
                self.gpu, "hetegen GPU working set", tags, bare.gpu_mem_budget, capacity, rel_tol=1e-9
            )
        except OutOfMemory:
            return True
        return False

    def estimate_floor(self) -> float:
        """A lower bound of the estimated ``e2e_s`` of this candidate's plan whatever its resident
        set (``FloorParts`` of the split plan, its proxy run's as ``estimate`` simulates it): the
        resident counts that make the bound least within the knapsack's capacity, by the fractional
        knapsack (kinds by time saved per byte, the last one in part), a bound over every set of
        whole modules that fits (a kind saving nothing stays split). The counts are chosen by the
        estimate's weights (``floor_run``); ``estimate_floor`` then bounds the estimate at them."""
        proxy, scale = floor_run(self.workload)
        parts = floor_parts(self.base, self.rig, self.model, proxy)
        saved = {
            k: (s[0] - r[0]) + (s[1] - r[1]) * scale
            for k, s, r in ((k, parts.split[k], parts.resident[k]) for k in parts.split)
        }
        counts = self._fractional_resident(saved)
        return estimate_floor(self.workload, lambda w: parts.run(counts, self.model.layers))

    def _any_resident_floor(self) -> float:
        """``e2e_floor`` of the best resident set that could fit: all split, less the most split time
        whole modules (bytes as the knapsack counts them) could take off within the capacity, by the
        fractional knapsack (modules by time per byte, the last one in part) - at least what any
        choice of whole modules takes off. Sums of positive floats, then one difference: each side
        is moved a part in 1e9 its own way."""
        times = split_times(self.base, self.rig, self.model, self.workload)
        off = 0.0
        for kind, n in self._fractional_resident(times).items():
            off += n * times[kind]
        return FLOOR_SLACK * self.model.layers * sum(times.values()) - (2 - FLOOR_SLACK) * off

    def _fractional_resident(self, saved: Mapping[str, float]) -> dict[str, float]:
        """The resident count of each kind (a fraction allowed) that saves the most of ``saved``
        (seconds one layer's module saves resident) within the knapsack's capacity (bytes as it
        counts them), by the fractional knapsack: kinds by saving per byte, each as far as the
        bytes left allow, the last one in part; a kind saving nothing is left out. No choice of
        whole modules that fits saves more (the relaxation's optimum)."""
        sizes = module_bytes(self.model, self.base.weight_dtype)
        layers = self.model.layers
        left, counts = max(0.0, self.capacity), {}
        for kind in sorted(saved, key=lambda k: -saved[k] / max(int(sizes[k]), 1e-300)):
            if saved[kind] <= 0:
                break
            size = int(sizes[kind])
            counts[kind] = layers if size == 0 else min(layers, left / size)
            left -= counts[kind] * size
        return counts


def gpu_kinds(rig: Rig) -> list[ComputeDevice]:
    """The first GPU of each kind on each kind of host (model, host CPU model, memory): GPUs of one
    kind on the same kind of host give the same plan."""
    kinds: dict[tuple[str, str, float], ComputeDevice] = {}
    for gpu in rig.gpus():
        kinds.setdefault((gpu.model, rig.devices[rig.host_cpu(gpu.name)].model, gpu.mem_bytes), gpu)
    return list(kinds.values())


def _candidates(rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[_Candidate]:
    """``search``'s candidates: one a GPU kind (``gpu_kinds``)."""
    return (_Candidate(rig, model, workload, g.name, g.mem_bytes) for g in gpu_kinds(rig))


def search(
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    objective: str,
    evaluate: Evaluate,
    *,
    allow_lossy: bool = False,  # HeteGen has no lossy option
) -> HeteGenPlan | None:
    """Per GPU (with its host socket): alphas balanced in the engine, residency by CP-SAT; the plans
    ranked by ``evaluate``. A GPU's plan that a lower bound shows no faster than the best run so far
    is not run (``best_plan``'s ``beaten``), nor its knapsack solved when a bound over every
    resident set shows it."""
    candidates = _candidates(rig, model, workload)
    best = best_plan(candidates, lambda c: evaluate(c.plan), objective, lambda c, t: c.beaten(t))
    return None if best is None else best.plan


def search_floor(rig: Rig, model: ModelSpec, workload: Workload) -> float:
    """A lower bound of the estimated ``e2e_s`` (``hetsim.planner.ranking.estimate``) of every plan
    ``search`` may return that runs (inf: none can), with no knapsack solved and nothing run: the
    least over its candidates of ``_Candidate.estimate_floor``, a candidate over its GPU budget
    whatever its alphas left out (its plan is refused). The batch ladder leaves out a batch this
    shows cannot rank first (``hetsim.planner.search``)."""
    floors = [c.estimate_floor() for c in _candidates(rig, model, workload) if not c._over_budget()]
    return min(floors, default=math.inf)
