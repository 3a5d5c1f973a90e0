"""GPUs alone: tensor parallel inside a node, pipeline parallel across nodes (Megatron-style).

A plan is a pipeline of stages; each stage is a tensor-parallel group of GPUs in one node holding a
contiguous run of layers. The batch is split into micro-batches that flow through the stages, so
stages overlap on different micro-batches. The model must fit: weights, the KV cache for the full
context and the activation workspace, or the plan is infeasible with the device and the bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations

from hetsim.hardware.rig import Rig
from hetsim.models.spec import ModelSpec
from hetsim.strategies.base import Footprint, Objective, Strategy, register
from hetsim.strategies.common import (
    activation_workspace,
    embed_bytes,
    embed_ops,
    head_bytes,
    head_ops,
    hidden_bytes,
    kv_cache_bytes,
    layer_blocks,
    layer_bytes,
    steps,
)
from hetsim.workload import Workload


@dataclass(frozen=True)
class Stage:
    devices: tuple[str, ...]  # one tensor-parallel group, all in one node
    layers: int


@dataclass(frozen=True)
class PipelinePlan:
    stages: tuple[Stage, ...]
    micro_batches: int = 1
    weight_dtype: str = "fp16"
    kv_dtype: str = "fp16"

    @property
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s.devices]


def micro_batch_sizes(batch: int, parts: int) -> list[int]:
    parts = max(1, min(parts, batch))
    base, extra = divmod(batch, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def stage_footprint(
    model: ModelSpec, stage: Stage, first: bool, last: bool, workload: Workload, plan: PipelinePlan
) -> dict[str, float]:
    """Memory of one GPU of a stage: its share of weights and KV cache, plus a workspace."""
    tp = len(stage.devices)
    weights = stage.layers * layer_bytes(model, plan.weight_dtype) / tp
    if first:
        weights += embed_bytes(model, plan.weight_dtype)  # replicated on every TP rank
    if last:
        weights += head_bytes(model, plan.weight_dtype) / tp
    kv_share = max(1.0 / tp, 1.0 / model.kv_heads)
    kv = kv_cache_bytes(model, workload.batch, workload.context_len, stage.layers, plan.kv_dtype) * kv_share
    mb = max(micro_batch_sizes(workload.batch, plan.micro_batches))
    return {
        "weights": weights,
        "kv_cache": kv,
        "activations": activation_workspace(model, mb, workload.prompt_len) / tp,
    }


def balance_layers(
    model: ModelSpec, groups: list[tuple[str, ...]], rig: Rig, workload: Workload, weight_dtype: str = "fp16"
) -> tuple[int, ...] | None:
    """Layers per stage in proportion to each group's memory bandwidth (decode is bandwidth-bound),
    capped by what fits in its memory; None when the groups cannot hold the model."""
    per_layer = layer_bytes(model, weight_dtype) + kv_cache_bytes(
        model, workload.batch, workload.context_len, 1
    ) * max(1.0 / len(groups[0]), 1.0 / model.kv_heads)
    caps = []
    for i, g in enumerate(groups):
        tp = len(g)
        mem = min(rig.devices[d].mem_bytes for d in g) * tp
        fixed = (embed_bytes(model, weight_dtype) * tp if i == 0 else 0.0) + (
            head_bytes(model, weight_dtype) if i == len(groups) - 1 else 0.0
        )
        fixed += activation_workspace(model, workload.batch, workload.prompt_len)
        caps.append(max(0, int((mem - fixed) // per_layer)))
    if sum(caps) < model.layers:
        return None
    speed = [sum(rig.devices[d].mem_bw for d in g) for g in groups]
    layers = [0] * len(groups)
    left = model.layers
    # water-fill: proportional share, clipped at capacity, the rest redistributed
    open_ = set(range(len(groups)))
    while left > 0 and open_:
        total = sum(speed[i] for i in open_)
        for i in sorted(open_):
            want = max(1, math.floor(left * speed[i] / total))
            take = min(want, caps[i] - layers[i], left)
            layers[i] += take
            left -= take
        open_ = {i for i in open_ if layers[i] < caps[i]}
    if left > 0 or min(layers) == 0:
        return None
    return tuple(layers)


def _tp_sizes(model: ModelSpec, n: int) -> list[int]:
    return [t for t in (1, 2, 4, 8) if t <= n and model.heads % t == 0]


# Exhaustive enumeration (any subset of nodes, any split per node) is exponential in the number of
# nodes; beyond this many it falls back to the strongest nodes first with one TP degree throughout.
EXHAUSTIVE_NODES = 4


def _node_options(rig: Rig, model: ModelSpec, gpus: list[str]) -> dict[int, list[list[tuple[str, ...]]]]:
    """Per TP degree, the ways to use some of a node's GPUs (fastest first) as TP groups."""
    gpus = sorted(gpus, key=lambda g: (-rig.devices[g].mem_bw, g))
    options = {}
    for tp in _tp_sizes(model, len(gpus)):
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
    summary = "GPUs alone: tensor parallel within a node, pipeline parallel across nodes"
    plan_type = PipelinePlan

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        return None if rig.gpus() else "the rig has no GPUs"

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> PipelinePlan:
        """Every GPU: one TP group per node, layers by memory bandwidth (even split if it cannot fit)."""
        groups = [tuple(n.gpus) for n in rig.nodes.values() if n.gpus]
        groups = [g[: max(_tp_sizes(model, len(g)))] for g in groups]
        layers = balance_layers(model, groups, rig, workload)
        if layers is None:  # does not fit: keep an even split so the run reports where it overflows
            base, extra = divmod(model.layers, len(groups))
            layers = tuple(base + (1 if i < extra else 0) for i in range(len(groups)))
        stages = tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))
        return PipelinePlan(stages, micro_batches=min(len(stages), workload.batch))

    def search(
        self, rig: Rig, model: ModelSpec, workload: Workload, objective: Objective
    ) -> PipelinePlan | None:
        from hetsim.sim.run import best_plan

        def plans():
            for groups in candidate_groups(rig, model):
                layers = balance_layers(model, groups, rig, workload)
                if layers is None:
                    continue
                stages = tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))
                for mbs in sorted({1, min(len(stages), workload.batch)}):
                    yield PipelinePlan(stages, micro_batches=mbs)

        return best_plan(self, plans(), rig, model, workload, objective)

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


def pipeline_schedule(plan: PipelinePlan, model: ModelSpec, workload: Workload, on_token=None):
    """Each micro-batch walks every step through every stage; stages overlap across micro-batches."""
    stages = plan.stages
    sizes = micro_batch_sizes(workload.batch, plan.micro_batches)

    def stage_pass(engine, i: int, mb: int, step):
        stage = stages[i]
        tp = len(stage.devices)
        blocks = layer_blocks(
            model, step.phase, mb, step.seq_len, step.kv_len, tp, plan.weight_dtype, plan.kv_dtype
        )
        message = hidden_bytes(model, mb, step.seq_len)
        if i == 0:
            yield engine.lockstep(stage.devices, [embed_ops(model, mb, step.seq_len, plan.weight_dtype)])
        layer = [blocks.attention, message, blocks.mlp, message]
        yield engine.lockstep(stage.devices, layer, repeat=stage.layers, label=f"stage{i}")
        if i == len(stages) - 1:
            head = head_ops(model, step.phase, mb, step.seq_len, tp, plan.weight_dtype)
            yield engine.lockstep(stage.devices, [head], label="lm_head")

    def micro_batch(engine, mb: int):
        for step in steps(workload):
            for i in range(len(stages)):
                yield from stage_pass(engine, i, mb, step)
                if i + 1 < len(stages):
                    src, dst = stages[i].devices[0], stages[i + 1].devices[0]
                    yield engine.send(src, dst, hidden_bytes(model, mb, step.seq_len), label="pp-send")
            engine.token_done(mb)
            if on_token is not None:
                on_token(engine, mb, step)

    def run(engine):
        yield engine.all_of(engine.env.process(micro_batch(engine, mb)) for mb in sizes)

    return run
