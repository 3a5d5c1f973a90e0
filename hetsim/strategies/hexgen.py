"""HexGen (Jiang et al., ICML 2024): asymmetric tensor and pipeline parallelism on heterogeneous GPUs.

A plan is a set of independent replicas (data parallel); each replica is a pipeline of stages and
each stage is one tensor-parallel group of same-type GPUs in one machine with its own TP degree and
its own number of layers. Stage compute, TP all-reduces over the links inside the stage, pipeline
sends leader to leader over the routes between stages (cross-region WAN included) and every GPU's
memory (weights / TP, GQA-aware KV / TP) all run in the engine.

Offline batch (``hetsim compare``): the batch is dispatched over the replicas in proportion to
their estimated speed, none given more than its GPUs hold (``replica_shares``); each replica
pipelines its share in micro-batches (gpu_only's schedule).
Online serving lives in ``hetsim.serving``; the two-level CP-SAT scheduler in
``hetsim.planner.hexgen_cpsat``. ``symmetric_plan`` builds the uniform TP x PP baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.models.sharding import tp_degrees
from hetsim.models.spec import ModelSpec
from hetsim.sim.run import footprint_fits, remembered_cost
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, no_gpu, register
from hetsim.strategies.gpu_only import PipelinePlan, pipeline_schedule
from hetsim.strategies.pipeline import (
    GPU_KV_DTYPES,
    GPU_WEIGHT_DTYPES,
    Stage,
    balance_layers,
    even_layers,
    gpu_dtypes,
    micro_batch_sizes,
    pipeline_load,
    stage_memory,
)
from hetsim.strategies.pipeline_costs import step_time
from hetsim.workload import MAX_WORK, WHY_MAX, Workload, largest_batch_where

__all__ = ["HexGen", "HexGenPlan", "Replica", "Stage", "symmetric_plan"]


@dataclass(frozen=True)
class Replica:
    stages: tuple[Stage, ...]

    @property
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s.devices]


@dataclass(frozen=True)
class HexGenPlan:
    replicas: tuple[Replica, ...]
    max_batch: int = 8  # serving: sequences per in-flight batch (continuous batching)
    weight_dtype: str = "fp16"
    kv_dtype: str = "fp16"
    symmetric: bool = False  # informational: built as uniform TP x PP (the baseline)

    @property
    def devices(self) -> list[str]:
        return [d for r in self.replicas for d in r.devices]

    def pipeline(self, i: int, micro_batches: int = 1) -> PipelinePlan:
        return PipelinePlan(self.replicas[i].stages, micro_batches, self.weight_dtype, self.kv_dtype)


# ---- memory ---------------------------------------------------------------------------------------
def replica_footprint(
    model: ModelSpec, replica: Replica, kv_sequences: int, context: int, act_tokens: int, plan: HexGenPlan
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    n = len(replica.stages)
    for i, st in enumerate(replica.stages):
        tags = stage_memory(
            model, st, i == 0, i == n - 1, kv_sequences, context, act_tokens, plan.weight_dtype, plan.kv_dtype
        )
        for d in st.devices:
            out[d] = tags
    return out


def share_footprint(
    model: ModelSpec, replica: Replica, share: int, workload: Workload, plan: HexGenPlan
) -> dict[str, dict[str, float]]:
    """What a replica holds to run ``share`` sequences of the offline batch: their KV, and the
    workspace of its largest micro-batch (a replica of S stages runs its share in up to S)."""
    mb = max(micro_batch_sizes(share, len(replica.stages))) if share else 1
    return replica_footprint(model, replica, share, workload.context_len, mb * workload.prompt_len, plan)


def split_batch(batch: int, weights: list[float]) -> list[int]:
    """``batch`` sequences over replicas in proportion to ``weights`` (largest remainders, stable)."""
    total = sum(weights)
    raw = [batch * w / total for w in weights]
    out = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: batch - sum(out)]:
        out[i] += 1
    return out


def capped_split(batch: int, weights: list[float], caps: list[int]) -> list[int]:
    """``split_batch``, no share above its cap: a replica whose share would pass what it holds takes
    that, and the rest is split over the others in proportion to their weights, until none passes.
    Where the caps hold less than the batch, the plain split (the run then says which overflows).

    Each round caps at least one more replica, and the uncapped ones always hold what is left (the
    caps hold the batch, the capped ones were given less than their plain shares), so it ends."""
    if sum(caps) < batch:
        return split_batch(batch, weights)
    out = [0] * len(weights)
    free = list(range(len(weights)))
    while True:
        rest = batch - sum(out[i] for i in range(len(out)) if i not in free)
        shares = split_batch(rest, [weights[i] for i in free])
        over = [i for i, s in zip(free, shares, strict=True) if s > caps[i]]
        if not over:
            for i, s in zip(free, shares, strict=True):
                out[i] = s
            return out
        for i in over:
            out[i] = caps[i]
        free = [i for i in free if i not in over]


def replica_speed(
    rig: Rig, model: ModelSpec, replica: Replica, workload: Workload, plan: HexGenPlan
) -> float:
    """Decode steps per second of one sequence alone at the whole run's context (``Workload.whole``:
    a sample splits the batch as its run): the dispatcher's weight. Kept while runs are remembered
    (``remembered_cost``): the offline search and every run's footprint and schedule ask it of the
    same replicas for every candidate and rung."""
    wd, kv, context = plan.weight_dtype, plan.kv_dtype, workload.whole.context_len
    return remembered_cost(
        rig,
        ("hexgen replica speed", replica.stages, model, context, wd, kv),
        lambda: 1.0 / step_time(rig, replica.stages, model, "decode", 1, 1, context, wd, kv),
    )


def replica_holds(rig: Rig, model: ModelSpec, replica: Replica, workload: Workload, plan: HexGenPlan) -> int:
    """The most sequences of the offline batch (at most all of it) whose ``share_footprint`` fits
    the replica's GPUs, as ``simulate`` allocates it (0 where not even one does); by bisection, the
    footprint growing with the share. Kept while runs are remembered, as ``replica_speed``.

    Of the whole run (``Workload.whole``: its prompt, its context): a search's proxy and a
    fast-forward's head, middle and tail samples (``Workload.sample``) split the batch as the run
    does, not by their shorter KV (a proxy of opt-13b's 448 on mixed-lab gave the faster replica 252
    of the 209 the run holds, and the search ranked it 21 % above its run) nor by a tail's longer
    prompt's prefill (llama2-70b's 1536 x (512 + 256) on hexgen-full-budget: the tail split
    [300, 462, 462, 312] against the run's [350, 417, 416, 353], and the run went step by step)."""
    whole = workload.whole
    run = (whole.prompt_len, whole.gen_len, plan.weight_dtype, plan.kv_dtype)

    def most() -> int:
        """Any batch's answer (a ladder's rungs share it)."""
        caps = rig.capacities()
        return largest_batch_where(
            lambda share: footprint_fits(caps, share_footprint(model, replica, share, whole, plan))
        )

    return min(
        workload.batch, remembered_cost(rig, ("hexgen replica holds", replica.stages, model, *run), most)
    )


def replica_shares(plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> list[int]:
    """The offline batch's sequences each replica runs: in proportion to its ``replica_speed``, no
    replica given more than it holds (``capped_split``, ``replica_holds``): a dispatcher sends a
    sequence where there is room for it, so a fast replica on little memory does not refuse a batch
    the others have room for (llama2-70b on hexgen-full-budget at batch 1024: nine replicas hold
    1566 sequences, yet the speed split gave the TP-8 RTX 3090 Ti groups 156 of their 152)."""
    if len(plan.replicas) == 1:
        return [workload.batch]
    speeds = [replica_speed(rig, model, r, workload, plan) for r in plan.replicas]
    caps = [replica_holds(rig, model, r, workload, plan) for r in plan.replicas]
    return capped_split(workload.batch, speeds, caps)


def speed_shares(plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> list[int]:
    """The offline batch split by ``replica_speed`` alone, whatever each replica holds: the shares
    ``replica_shares`` gives where every replica holds its own."""
    return split_batch(workload.batch, [replica_speed(rig, model, r, workload, plan) for r in plan.replicas])


T = TypeVar("T")
MAX_SETTLE = 8  # offline: layouts per latency cap while the largest share outgrows the layout's


def held_for(share: int) -> int:
    """The sequences a replica is laid out for to hold ``share``: the next of 1, 2, 3 and 4..7 x 2^n
    (at most 1/4 more), so that a ladder's rungs, whose shares differ by a few sequences, share
    layouts (each costs a few dozen inner solves) at a little memory held back."""
    if share <= 4:
        return max(1, share)
    top = 1 << (share.bit_length() - 3)  # share in [4, 8) x top
    return -(-share // top) * top


def settling(
    lay_out: Callable[[int], T | None],
    plan_of: Callable[[T], HexGenPlan],
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
) -> Iterator[tuple[T, bool, bool]]:
    """The layouts on the share fixed point (one rule for the offline search and
    ``HexGen.default_plan``): lay out for ``k`` sequences (first 1), split the batch by speed; while
    the largest share exceeds ``k``, again for that share (``held_for``), at most ``MAX_SETTLE``
    layouts; none once ``lay_out`` gives None (nothing holds ``k``). Yields each layout, whether its
    replicas hold the batch together (``replica_holds``), and whether it is the settled one."""
    k = 1
    for _ in range(MAX_SETTLE):
        found = lay_out(k)
        if found is None:
            return
        plan = plan_of(found)
        held = sum(replica_holds(rig, model, r, workload, plan) for r in plan.replicas) >= workload.batch
        share = max(speed_shares(plan, rig, model, workload))
        yield found, held, share <= k
        if share <= k:
            return
        k = min(workload.batch, held_for(share))


# ---- the baseline ---------------------------------------------------------------------------------
def symmetric_plan(
    rig: Rig, model: ModelSpec, replica_gpus: list[list[str]], tp: int, workload: Workload, **kw
) -> HexGenPlan:
    """Uniform TP x PP on given GPU sets: every stage the same TP degree and (±1) the same layers."""
    replicas = []
    for gpus in replica_gpus:
        groups: list[tuple[str, ...]] = []
        by_node: dict[str, list[str]] = {}
        for g in gpus:
            by_node.setdefault(rig.devices[g].node, []).append(g)
        for node_gpus in by_node.values():
            for i in range(len(node_gpus) // tp):
                groups.append(tuple(node_gpus[i * tp : (i + 1) * tp]))
        layers = even_layers(model.layers, len(groups))
        replicas.append(Replica(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True) if n)))
    return HexGenPlan(tuple(replicas), symmetric=True, **kw)


def check_plan(plan: HexGenPlan, rig: Rig, model: ModelSpec) -> None:
    """A plan from a file must name the rig's GPUs, keep each TP group on one machine and one GPU
    type, use each GPU once, and give every replica all the model's layers (``InputError``, field
    ``params.<path>``)."""
    if not plan.replicas:
        raise pc.problem("replicas", "needs at least one replica")
    seen: set[str] = set()
    for i, replica in enumerate(plan.replicas):
        pc.stages_cover(replica.stages, model.layers, f"replicas[{i}].stages")
        for j, st in enumerate(replica.stages):
            field = f"replicas[{i}].stages[{j}].devices"
            pc.tp_group(rig, model, st.devices, field)
            if len({rig.devices[d].model for d in st.devices}) > 1:
                raise pc.problem(field, "a tensor-parallel group must be GPUs of one type")
            for d in st.devices:
                if d in seen:  # in another stage or replica: two plans' weights on one GPU
                    raise pc.problem(field, f"{d!r} is used twice")
                seen.add(d)


def _strongest(groups: list[tuple[str, ...]], limit: int, rig: Rig) -> list[tuple[str, ...]]:
    """At most ``limit`` of the TP groups: those with the most memory bandwidth, in their rig order."""
    if len(groups) <= limit:
        return groups
    bw = {g: sum(rig.devices[d].mem_bw for d in g) for g in groups}
    keep = set(sorted(groups, key=lambda g: -bw[g])[:limit])  # stable: ties keep rig order
    return [g for g in groups if g in keep]


def _regions_plan(
    rig: Rig, model: ModelSpec, workload: Workload, regions: dict[str, list[tuple[str, ...]]], k: int
) -> HexGenPlan | None:
    """One replica per region whose groups hold the model with the KV of ``k`` sequences and the
    workspace of the largest micro-batch they make, layers by memory bandwidth (None: no region)."""
    wd, kv = gpu_dtypes(model, workload)
    held = replace(workload, batch=k)
    replicas = []
    for groups in regions.values():
        layers = balance_layers(model, groups, rig, **pipeline_load(held, len(groups), wd, kv))
        if layers is not None:
            replicas.append(Replica(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))))
    return HexGenPlan(tuple(replicas), weight_dtype=wd, kv_dtype=kv) if replicas else None


def _settled_regions(
    rig: Rig, model: ModelSpec, workload: Workload, regions: dict[str, list[tuple[str, ...]]]
) -> HexGenPlan | None:
    """``_regions_plan`` for the shares its replicas get (``HexGen.default_plan``): the first layout
    on the fixed point (``settling``) whose replicas hold the batch, or the settled one; None where no
    region holds a sequence, the shares do not settle in ``MAX_SETTLE`` layouts, or a replica's
    machines have no route between them (its speed is unknown: the run says why)."""
    try:
        for plan, held, settled in settling(
            lambda k: _regions_plan(rig, model, workload, regions, k), lambda p: p, rig, model, workload
        ):
            if held or settled:
                return plan
    except NoRouteError:
        return None
    return None


# the --max-batch flag's cap and reason, one rule for both (10**30 was taken)
_RANGES = {"max_batch": (1, MAX_WORK["batch"], WHY_MAX["batch"])}


@register
class HexGen(Strategy):
    name = "hexgen"
    search_weight = 5  # CP-SAT, costly on large rigs (compare runs it in HeteGen's worker job)
    summary = "HexGen: replicas of asymmetric TP x PP pipelines over heterogeneous GPUs"
    plan_type = HexGenPlan
    knob_ranges = _RANGES
    kv_dtypes = GPU_KV_DTYPES
    weight_dtypes = GPU_WEIGHT_DTYPES

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        return no_gpu(rig)

    def check_plan(self, plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        check_plan(plan, rig, model)
        pc.in_ranges(plan, self.knob_ranges)
        pc.known_dtype(plan.weight_dtype, "weight_dtype")
        pc.known_dtype(plan.kv_dtype, "kv_dtype")

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> HexGenPlan:
        """Each region one replica: per machine its largest TP group, layers by memory bandwidth, each
        replica laid out for the share of the batch it gets (``replica_shares``). The shares depend on
        the layouts, so they settle as the offline search's do (``held_for``): lay every region out
        for ``k`` sequences (first 1), split the batch; done where the replicas hold it, else again
        for the largest share by speed. ``k`` only grows, and a layout for the whole batch holds it."""
        regions: dict[str, list[tuple[str, ...]]] = {}
        for node in rig.nodes.values():
            by_type: dict[str, list[str]] = {}
            for g in node.gpus:  # a TP group is GPUs of one type
                by_type.setdefault(rig.devices[g].model, []).append(g)
            for gpus in by_type.values():
                tp = max(tp_degrees(model, len(gpus)))
                regions.setdefault(node.region, []).append(tuple(gpus[:tp]))
        # more groups than layers would leave stages empty: keep the ones with the most bandwidth
        regions = {name: _strongest(groups, model.layers, rig) for name, groups in regions.items()}
        plan = _settled_regions(rig, model, workload, regions)
        if plan is None:  # not settled: every region laid out for the whole batch (the old default)
            plan = _regions_plan(rig, model, workload, regions, workload.batch)
        if plan is not None:
            return plan
        # nothing fits per region: one pipeline over everything, so the run says why
        groups = _strongest([g for gs in regions.values() for g in gs], model.layers, rig)
        layers = even_layers(model.layers, len(groups))
        wd, kv = gpu_dtypes(model, workload)
        return HexGenPlan(
            (Replica(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))),),
            weight_dtype=wd,
            kv_dtype=kv,
        )

    def batch_split(self, plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> list[int]:
        return replica_shares(plan, rig, model, workload)

    def footprint(self, plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        check_plan(plan, rig, model)
        out: dict[str, dict[str, float]] = {}
        for rep, b in zip(plan.replicas, self.batch_split(plan, rig, model, workload), strict=True):
            out.update(share_footprint(model, rep, b, workload, plan))
        return out

    def devices(self, plan: HexGenPlan) -> list[str]:
        return plan.devices

    def schedule(self, plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload):
        split = self.batch_split(plan, rig, model, workload)
        runs = []
        for i, b in enumerate(split):
            if b == 0:
                continue
            sub = Workload(b, workload.prompt_len, workload.gen_len)
            runs.append(pipeline_schedule(plan.pipeline(i, min(b, len(plan.replicas[i].stages))), model, sub))

        def run(engine):
            yield engine.all_of(engine.env.process(r(engine)) for r in runs)

        return run
