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

from hetsim.costs.collectives import allreduce_time
from hetsim.costs.ops import combine, op_cost
from hetsim.hardware.rig import Rig
from hetsim.models.spec import ModelSpec, Phase
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
)
from hetsim.strategies.gpu_only import PipelinePlan, Stage, micro_batch_sizes, pipeline_schedule
from hetsim.workload import Workload

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


# ---- costs shared by the engine schedule, the dispatcher and the planner -----------------------
def ring_alpha_beta(rig: Rig, devices: tuple[str, ...]) -> tuple[float, float]:
    """Worst latency and bandwidth of a ring over ``devices`` (as ``Engine._ring`` computes them)."""
    alpha, beta = 0.0, float("inf")
    for i, a in enumerate(devices):
        b = devices[(i + 1) % len(devices)]
        for route in (rig.route(a, b), rig.route(b, a)):
            alpha = max(alpha, route.latency_s)
            beta = min(beta, route.bw)
    return alpha, beta


def layer_time(
    rig: Rig,
    devices: tuple[str, ...],
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
) -> float:
    """Seconds one decoder layer takes on a TP group: exactly the engine's ``lockstep`` duration for
    ``[attention, all-reduce, mlp, all-reduce]``."""
    entry = _RIG_CACHES.get(id(rig))
    if entry is None or entry[0] is not rig:
        if len(_RIG_CACHES) > 16:
            _RIG_CACHES.clear()
        entry = _RIG_CACHES[id(rig)] = (rig, {})
    key = (devices, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype)
    t = entry[1].get(key)
    if t is None:
        t = entry[1][key] = _layer_time(rig, *key)
    return t


# Rigs are not hashable; cache per rig object (the entry keeps the rig alive so ids are not reused).
_RIG_CACHES: dict[int, tuple[Rig, dict]] = {}


def _layer_time(rig, devices, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype) -> float:
    tp = len(devices)
    blocks = layer_blocks(model, phase, batch, seq_len, kv_len, tp, weight_dtype, kv_dtype)
    t = 0.0
    for block in (blocks.attention, blocks.mlp):
        t += max(combine([op_cost(rig.devices[d], o) for o in block]).time_s for d in devices)
    if tp > 1:  # as the engine's lockstep: the collectives, and the wait for the slowest rank
        t *= 1.0 + max(rig.nodes[rig.devices[d].node].straggler_fraction for d in devices)
        alpha, beta = ring_alpha_beta(rig, devices)
        t += 2 * allreduce_time(tp, hidden_bytes(model, batch, seq_len), alpha, beta).time_s
    return t


def ops_time(rig: Rig, devices: tuple[str, ...], ops) -> float:
    return max(combine([op_cost(rig.devices[d], o) for o in ops]).time_s for d in devices)


def step_time(
    rig: Rig,
    stages: tuple[Stage, ...],
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
) -> float:
    """One forward step of a batch through a whole pipeline, uncontended (sum over stages + hops)."""
    total = 0.0
    last = len(stages) - 1
    for i, st in enumerate(stages):
        total += st.layers * layer_time(
            rig, st.devices, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype
        )
        if i == 0:
            total += ops_time(rig, st.devices, embed_ops(model, batch, seq_len, weight_dtype))
        if i == last:
            total += ops_time(
                rig, st.devices, head_ops(model, phase, batch, seq_len, len(st.devices), weight_dtype)
            )
        else:
            route = rig.route(st.devices[0], stages[i + 1].devices[0])
            total += route.time(hidden_bytes(model, batch, seq_len))
    return total


def request_latency(
    rig: Rig, stages: tuple[Stage, ...], model: ModelSpec, prompt_len: int, output_len: int, **dt
) -> float:
    """A single request alone on a replica: prefill, then ``output_len - 1`` decode steps."""
    t = step_time(rig, stages, model, "prefill", 1, prompt_len, prompt_len, **dt)
    for i in range(1, output_len):
        t += step_time(rig, stages, model, "decode", 1, 1, prompt_len + i, **dt)
    return t


# ---- memory ---------------------------------------------------------------------------------------
def gpu_footprint(
    model: ModelSpec,
    stage: Stage,
    first: bool,
    last: bool,
    kv_sequences: int,
    context: int,
    act_tokens: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
) -> dict[str, float]:
    """One GPU of a stage: its weight shard, its KV shard (GQA heads split over TP, replicated past
    the number of KV heads) for ``kv_sequences`` x ``context`` tokens, and the activation workspace
    of ``act_tokens`` tokens in flight through a layer."""
    tp = len(stage.devices)
    weights = stage.layers * layer_bytes(model, weight_dtype) / tp
    if first:
        weights += embed_bytes(model, weight_dtype)
    if last:
        weights += head_bytes(model, weight_dtype) / tp
    kv_share = max(1.0 / tp, 1.0 / model.kv_heads)
    kv = kv_cache_bytes(model, kv_sequences, context, stage.layers, kv_dtype) * kv_share
    return {
        "weights": weights,
        "kv_cache": kv,
        "activations": activation_workspace(model, 1, max(1, act_tokens)) / tp,
    }


def replica_footprint(
    model: ModelSpec, replica: Replica, kv_sequences: int, context: int, act_tokens: int, plan: HexGenPlan
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    n = len(replica.stages)
    for i, st in enumerate(replica.stages):
        tags = gpu_footprint(
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
    """Decode steps per second of one sequence alone: the dispatcher's weight."""
    t = step_time(
        rig,
        replica.stages,
        model,
        "decode",
        1,
        1,
        workload.context_len,
        plan.weight_dtype,
        plan.kv_dtype,
    )
    return 1.0 / t


# ---- the baseline ---------------------------------------------------------------------------------
def _tp_options(model: ModelSpec, n: int) -> list[int]:
    return [t for t in (1, 2, 4, 8) if t <= n and model.heads % t == 0]


def even_layers(total: int, parts: int) -> tuple[int, ...]:
    base, extra = divmod(total, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


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
    type, use each GPU once, and give every replica all the model's layers."""
    from hetsim.errors import InputError

    if not plan.replicas:
        raise InputError("a plan needs at least one replica", field="params.replicas")
    seen: set[str] = set()
    for i, rep in enumerate(plan.replicas):
        where = f"params.replicas.{i}"
        if not rep.stages:
            raise InputError("a replica needs at least one stage", field=f"{where}.stages")
        for j, st in enumerate(rep.stages):
            field = f"{where}.stages.{j}"
            for d in st.devices:
                if d not in rig.devices or rig.devices[d].kind != "gpu":
                    raise InputError(f"{d!r} is not a GPU of rig {rig.name}", field=f"{field}.devices")
                if d in seen:
                    raise InputError(f"{d!r} is used twice", field=f"{field}.devices")
                seen.add(d)
            if not st.devices:
                raise InputError("a stage needs at least one GPU", field=f"{field}.devices")
            kinds = {(rig.devices[d].node, rig.devices[d].model) for d in st.devices}
            if len(kinds) > 1:
                raise InputError(
                    "a TP group must be GPUs of one type in one machine", field=f"{field}.devices"
                )
            if st.layers < 1:
                raise InputError(f"must be a positive integer, got {st.layers}", field=f"{field}.layers")
        total = sum(st.layers for st in rep.stages)
        if total != model.layers:
            raise InputError(f"stages hold {total} layers, {model.name} has {model.layers}", field=where)


@register
class HexGen(Strategy):
    name = "hexgen"
    summary = "HexGen: replicas of asymmetric TP x PP pipelines over heterogeneous GPUs"
    plan_type = HexGenPlan

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        return None if rig.gpus() else "the rig has no GPUs"

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> HexGenPlan:
        """Each region one replica: per machine its largest TP group, layers by memory bandwidth."""
        from hetsim.strategies.gpu_only import balance_layers

        replicas = []
        regions: dict[str, list[tuple[str, ...]]] = {}
        for node in rig.nodes.values():
            by_type: dict[str, list[str]] = {}
            for g in node.gpus:  # a TP group is GPUs of one type
                by_type.setdefault(rig.devices[g].model, []).append(g)
            for gpus in by_type.values():
                tp = max(_tp_options(model, len(gpus)))
                regions.setdefault(node.region, []).append(tuple(gpus[:tp]))
        for groups in regions.values():
            layers = balance_layers(model, groups, rig, workload)
            if layers is None:
                continue
            replicas.append(Replica(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))))
        if not replicas:  # nothing fits per region: one pipeline over everything, so the run says why
            groups = [g for gs in regions.values() for g in gs]
            layers = even_layers(model.layers, len(groups))
            replicas.append(Replica(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True))))
        return HexGenPlan(tuple(replicas))

    def search(
        self, rig: Rig, model: ModelSpec, workload: Workload, objective: Objective
    ) -> HexGenPlan | None:
        from hetsim.planner.hexgen_cpsat import search

        return search(rig, model, workload, objective=objective)

    def batch_split(self, plan: HexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> list[int]:
        speeds = [replica_speed(rig, model, r, workload, plan) for r in plan.replicas]
        return split_batch(workload.batch, speeds)

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


def pipeline_pass(
    engine,
    stages: tuple[Stage, ...],
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
):
    """One forward step of a batch through a replica on the engine: each stage one lockstep task
    (layers x [attention, all-reduce, mlp, all-reduce]), leader-to-leader sends between stages."""
    last = len(stages) - 1
    message = hidden_bytes(model, batch, seq_len)
    for i, st in enumerate(stages):
        tp = len(st.devices)
        if i == 0:
            yield engine.lockstep(st.devices, [embed_ops(model, batch, seq_len, weight_dtype)], label="embed")
        blocks = layer_blocks(model, phase, batch, seq_len, kv_len, tp, weight_dtype, kv_dtype)
        work = [blocks.attention, message, blocks.mlp, message]
        yield engine.lockstep(st.devices, work, repeat=st.layers, label=f"stage{i}")
        if i == last:
            head = head_ops(model, phase, batch, seq_len, tp, weight_dtype)
            yield engine.lockstep(st.devices, [head], label="lm_head")
        else:
            yield engine.send(st.devices[0], stages[i + 1].devices[0], message, label="pp-send")
