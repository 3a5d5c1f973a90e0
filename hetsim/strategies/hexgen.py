"""HexGen (Jiang et al., ICML 2024): asymmetric tensor and pipeline parallelism on heterogeneous GPUs.

A plan is a set of independent replicas (data parallel); each replica is a pipeline of stages and
each stage is one tensor-parallel group of same-type GPUs in one machine with its own TP degree and
its own number of layers. Stage compute, TP all-reduces over the links inside the stage, pipeline
sends leader to leader over the routes between stages (cross-region WAN included) and every GPU's
memory (weights / TP, GQA-aware KV / TP) all run in the engine.

Offline batch (``hetsim compare``): the batch is dispatched over the replicas in proportion to
their estimated speed; each replica pipelines its share in micro-batches (gpu_only's schedule).
Online serving lives in ``hetsim.serving``; the two-level CP-SAT scheduler in
``hetsim.planner.hexgen_cpsat``. ``symmetric_plan`` builds the uniform TP x PP baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from hetsim.hardware.rig import Rig
from hetsim.models.sharding import tp_degrees
from hetsim.models.spec import ModelSpec
from hetsim.sim.run import remembered_cost
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
from hetsim.workload import MAX_WORK, WHY_MAX, Workload

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


def split_batch(batch: int, weights: list[float]) -> list[int]:
    """``batch`` sequences over replicas in proportion to ``weights`` (largest remainders, stable)."""
    total = sum(weights)
    raw = [batch * w / total for w in weights]
    out = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: batch - sum(out)]:
        out[i] += 1
    return out


def replica_speed(
    rig: Rig, model: ModelSpec, replica: Replica, workload: Workload, plan: HexGenPlan
) -> float:
    """Decode steps per second of one sequence alone: the dispatcher's weight. Kept while runs are
    remembered (``remembered_cost``): the offline search and every run's footprint and schedule ask
    it of the same replicas for every candidate and rung."""
    wd, kv, context = plan.weight_dtype, plan.kv_dtype, workload.context_len
    return remembered_cost(
        rig,
        ("hexgen replica speed", replica.stages, model, context, wd, kv),
        lambda: 1.0 / step_time(rig, replica.stages, model, "decode", 1, 1, context, wd, kv),
    )


def replica_shares(plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> list[int]:
    """The offline batch's sequences each replica runs: in proportion to its ``replica_speed``."""
    return split_batch(workload.batch, [replica_speed(rig, model, r, workload, plan) for r in plan.replicas])


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
        """Each region one replica: per machine its largest TP group, layers by memory bandwidth."""
        wd, kv = gpu_dtypes(model, workload)
        replicas = []
        regions: dict[str, list[tuple[str, ...]]] = {}
        for node in rig.nodes.values():
            by_type: dict[str, list[str]] = {}
            for g in node.gpus:  # a TP group is GPUs of one type
                by_type.setdefault(rig.devices[g].model, []).append(g)
            for gpus in by_type.values():
                tp = max(tp_degrees(model, len(gpus)))
                regions.setdefault(node.region, []).append(tuple(gpus[:tp]))
        for name, groups in regions.items():
            # more groups than layers would leave stages empty: keep the ones with the most bandwidth
            groups = regions[name] = _strongest(groups, model.layers, rig)
            # The batch is split after the replicas are laid out, by their speeds, so a layout is checked
            # with the KV of the whole batch and the workspace of the largest micro-batch a share can
            # make (the ``footprint`` of any split is at most this).
            layers = balance_layers(model, groups, rig, **pipeline_load(workload, len(groups), wd, kv))
            if layers is None:
                continue
            replicas.append(Replica(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))))
        if not replicas:  # nothing fits per region: one pipeline over everything, so the run says why
            groups = _strongest([g for gs in regions.values() for g in gs], model.layers, rig)
            layers = even_layers(model.layers, len(groups))
            replicas.append(Replica(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))))
        return HexGenPlan(tuple(replicas), weight_dtype=wd, kv_dtype=kv)

    def batch_split(self, plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> list[int]:
        return replica_shares(plan, rig, model, workload)

    def footprint(self, plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        check_plan(plan, rig, model)
        out: dict[str, dict[str, float]] = {}
        for rep, b in zip(plan.replicas, self.batch_split(plan, rig, model, workload), strict=True):
            mb = max(micro_batch_sizes(b, len(rep.stages))) if b else 1
            act = mb * workload.prompt_len
            out.update(replica_footprint(model, rep, b, workload.context_len, act, plan))
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
