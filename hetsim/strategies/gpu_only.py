"""GPUs alone: tensor parallel inside a node, pipeline parallel across nodes (Megatron-style).

A plan is a pipeline of stages; each stage is a tensor-parallel group of GPUs in one node holding a
contiguous run of layers. The batch is split into micro-batches that flow through the stages, so
stages overlap on different micro-batches. The model must fit: weights, the KV cache for the full
context and the activation workspace, or the plan is infeasible with the device and the bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations

from hetsim.hardware.rig import Rig
from hetsim.models.sharding import tp_degrees
from hetsim.models.spec import ModelSpec
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, no_gpu, register
from hetsim.strategies.pipeline import (
    GPU_KV_DTYPES,
    GPU_WEIGHT_DTYPES,
    Stage,
    balance_layers,
    even_layers,
    gpu_dtypes,
    micro_batch_sizes,
    pipeline_load,
    pipeline_pass,
    stage_memory,
)
from hetsim.workload import Workload, steps


@dataclass(frozen=True)
class PipelinePlan:
    stages: tuple[Stage, ...]
    micro_batches: int = 1
    weight_dtype: str = "fp16"
    kv_dtype: str = "fp16"

    @property
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s.devices]


def stage_footprint(
    model: ModelSpec, stage: Stage, first: bool, last: bool, workload: Workload, plan: PipelinePlan
) -> dict[str, float]:
    """Memory of one GPU of a stage: the KV cache of the whole batch, the workspace of a micro-batch."""
    return stage_memory(
        model,
        stage,
        first,
        last,
        **pipeline_load(workload, plan.micro_batches, plan.weight_dtype, plan.kv_dtype),
    )


# Exhaustive enumeration (any subset of nodes, any split per node) is exponential in the number of
# nodes; beyond this many it falls back to the strongest nodes first with one TP degree throughout.
EXHAUSTIVE_NODES = 4


def _node_options(rig: Rig, model: ModelSpec, gpus: list[str]) -> dict[int, list[list[tuple[str, ...]]]]:
    """Per TP degree, the ways to use some of a node's GPUs (fastest first) as TP groups."""
    gpus = sorted(gpus, key=lambda g: (-rig.devices[g].mem_bw, g))
    options = {}
    for tp in tp_degrees(model, len(gpus)):
        groups = [tuple(gpus[i * tp : (i + 1) * tp]) for i in range(len(gpus) // tp)]
        options[tp] = [groups[:k] for k in range(1, len(groups) + 1)]
    return options


def candidate_groups(rig: Rig, model: ModelSpec) -> Iterator[list[tuple[str, ...]]]:
    """Pipelines of TP groups over the rig's nodes.

    Small rigs: any subset of nodes (in rig order), each using some of its GPUs (fastest first) as
    equal TP groups. Large rigs: the k strongest nodes (by aggregate memory bandwidth), all their
    GPUs, with one TP degree for the whole pipeline.
    """
    nodes = [n for n in rig.nodes.values() if n.gpus]
    per_node = [_node_options(rig, model, list(n.gpus)) for n in nodes]
    if len(nodes) <= EXHAUSTIVE_NODES:
        flat = [[o for opts in tp_opts.values() for o in opts] for tp_opts in per_node]
        for k in range(1, len(flat) + 1):
            for chosen in combinations(flat, k):
                yield from _product_concat(list(chosen))
        return
    order = sorted(
        range(len(nodes)), key=lambda i: (-sum(rig.devices[g].mem_bw for g in nodes[i].gpus), nodes[i].name)
    )
    for tp in (1, 2, 4, 8):
        for k in range(1, len(order) + 1):
            picked = [per_node[i].get(tp) for i in order[:k]]
            if all(picked):
                yield [g for opts in picked for g in opts[-1]]


def _product_concat(options_per_node: list[list[list[tuple[str, ...]]]]) -> Iterator[list[tuple[str, ...]]]:
    if not options_per_node:
        yield []
        return
    for head in options_per_node[0]:
        for tail in _product_concat(options_per_node[1:]):
            yield head + tail


@register
class GpuOnly(Strategy):
    name = "gpu-only"
    search_weight = 3  # ~0.11 s of CPU on the headline compare (llama2-70b, mixed-lab)
    summary = "GPUs alone: tensor parallel within a node, pipeline parallel across nodes"
    plan_type = PipelinePlan
    kv_dtypes = GPU_KV_DTYPES
    weight_dtypes = GPU_WEIGHT_DTYPES

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        return no_gpu(rig)

    def check_plan(self, plan: PipelinePlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        pc.stages_cover(plan.stages, model.layers, "stages")
        for i, st in enumerate(plan.stages):
            pc.tp_group(rig, model, st.devices, f"stages[{i}].devices")
        pc.in_range(plan.micro_batches, 1, workload.batch, "micro_batches")  # was: 1e30 echoed, run as batch
        pc.known_dtype(plan.weight_dtype, "weight_dtype")
        pc.known_dtype(plan.kv_dtype, "kv_dtype")

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> PipelinePlan:
        """Every GPU: one TP group per node, layers by memory bandwidth (even split if it cannot fit)."""
        groups = [tuple(n.gpus) for n in rig.nodes.values() if n.gpus]
        groups = [g[: max(tp_degrees(model, len(g)))] for g in groups]
        wd, kv = gpu_dtypes(model, workload)
        mbs = min(len(groups), workload.batch)
        layers = balance_layers(model, groups, rig, **pipeline_load(workload, mbs, wd, kv))
        if layers is None:  # does not fit: keep an even split so the run reports where it overflows
            layers = even_layers(model.layers, len(groups))
        stages = tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))
        return PipelinePlan(stages, mbs, weight_dtype=wd, kv_dtype=kv)

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[PipelinePlan]:
        """Pipelines over subsets of nodes and TP degrees whose layers fit, with and without
        micro-batching (a micro-batch's smaller workspace may fit where the whole batch's does not)."""
        wd, kv = gpu_dtypes(model, workload)
        for groups in candidate_groups(rig, model):
            for mbs in sorted({1, min(len(groups), workload.batch)}):
                layers = balance_layers(model, groups, rig, **pipeline_load(workload, mbs, wd, kv))
                if layers is None:
                    continue
                stages = tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))
                yield PipelinePlan(stages, micro_batches=mbs, weight_dtype=wd, kv_dtype=kv)

    def footprint(self, plan: PipelinePlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        out: dict[str, dict[str, float]] = {}
        n = len(plan.stages)
        for i, stage in enumerate(plan.stages):
            tags = stage_footprint(model, stage, i == 0, i == n - 1, workload, plan)
            for d in stage.devices:
                out[d] = tags
        return out

    def devices(self, plan: PipelinePlan) -> list[str]:
        return plan.devices

    def schedule(self, plan: PipelinePlan, rig: Rig, model: ModelSpec, workload: Workload):
        return pipeline_schedule(plan, model, workload)


def pipeline_schedule(plan: PipelinePlan, model: ModelSpec, workload: Workload):
    """Each micro-batch walks every step through every stage; stages overlap across micro-batches."""
    sizes = micro_batch_sizes(workload.batch, plan.micro_batches)

    def micro_batch(engine, mb: int):
        for step in steps(workload):
            yield from pipeline_pass(
                engine,
                plan.stages,
                model,
                step.phase,
                mb,
                step.seq_len,
                step.kv_len,
                plan.weight_dtype,
                plan.kv_dtype,
            )
            engine.token_done(mb)

    def run(engine):
        yield engine.all_of(engine.env.process(micro_batch(engine, mb)) for mb in sizes)

    return run
