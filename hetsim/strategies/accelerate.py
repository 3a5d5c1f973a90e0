"""Hugging Face Accelerate-style offloading (``device_map="auto"``) on one GPU.

The embeddings, the LM head and as many decoder layers as fit stay on the GPU; the other layers
live in host memory (then on disk) and are copied to the GPU by module hooks right before they
run, one at a time and synchronously: no copy overlaps any compute. Accelerate 0.16.0 (Jan 2023,
huggingface/accelerate, Apache-2.0) hooks every leaf module of an offloaded block that owns tensors
(hooks.py:352-365); ``AlignDevicesHook.pre_forward`` (:259-268) sets each of its tensors from the
CPU weights map with ``value.to(device)`` (utils/modeling.py:136-140: no ``non_blocking``, and the
map holds the model's own pageable CPU tensors), and ``post_forward`` (:270-275) puts them back on
the meta device, freeing them. So the GPU holds one leaf module's copy at a time
(``largest_leaf_bytes``), and a layer costs its copies then its kernels, serially; it is costed as
one copy of the layer then one kernel per op (HF's OPT fuses nothing): the per-tensor copy latency
(16 copies a layer for OPT) adds about 7.7 ms per step on OPT-30B at the link's assumed 10 us. The
KV cache and activations stay on the GPU, so the batch is bounded by GPU memory. Sequences beyond
one pass are processed row by row: every offloaded weight crosses PCIe again for every pass and
every token.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hetsim.hardware.rig import Rig
from hetsim.models.memory import (
    embed_bytes,
    head_bytes,
    hf_eager_workspace,
    kv_cache_bytes,
    largest_leaf_bytes,
    layer_bytes,
)
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks
from hetsim.models.spec import ModelSpec
from hetsim.sim.memory import check_budget, usable_bytes
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, no_gpu, register
from hetsim.workload import Step, Workload, steps


@dataclass(frozen=True)
class OffloadPlan:
    gpu: str
    cpu: str  # the socket whose DRAM holds the offloaded layers
    gpu_layers: int  # the first layers, resident on the GPU
    cpu_layers: int  # then these, in host memory
    disk_layers: int  # the rest, on disk (read through host memory)
    batch_per_pass: int
    disk: str = ""
    pinned: bool = False  # accelerate's hooks copy from pageable memory by default
    gpu_mem_budget: float | None = None  # bytes; None = the whole GPU


def gpu_reserve(model: ModelSpec, batch: int, workload: Workload, dtype: str = "fp16") -> float:
    """GPU memory that is not resident decoder layers: tables, KV cache, workspace, one staging module.

    The workspace is what HF transformers' own forward holds at its peak (``hf_eager_workspace``:
    attention scores, the prompt's logits, the previous step's cache while the next is built). The
    hooks copy one leaf module in at a time and drop it after it runs (``largest_leaf_bytes``)."""
    return (
        embed_bytes(model, dtype)
        + head_bytes(model, dtype)
        + kv_cache_bytes(model, batch, workload.context_len, model.layers)
        + hf_eager_workspace(model, batch, workload.prompt_len, workload.context_len)
        + largest_leaf_bytes(model, dtype)
    )


def place_layers(
    rig: Rig, model: ModelSpec, workload: Workload, gpu: str, batch: int, budget: float | None
) -> OffloadPlan:
    """Fill the GPU, then host memory, then disk, in layer order (as ``device_map="auto"`` does)."""
    cpu = rig.host_cpu(gpu)
    capacity = usable_bytes(rig.devices[gpu].mem_bytes, budget)
    per_layer = layer_bytes(model)
    room = capacity - gpu_reserve(model, batch, workload)
    gpu_layers = max(0, min(model.layers, math.floor(room / per_layer)))
    host_room = rig.devices[cpu].mem_bytes * 0.9  # leave room for the OS and the framework
    cpu_layers = max(0, min(model.layers - gpu_layers, math.floor(host_room / per_layer)))
    disks = rig.disks_of(rig.devices[gpu].node)
    return OffloadPlan(
        gpu=gpu,
        cpu=cpu,
        gpu_layers=gpu_layers,
        cpu_layers=cpu_layers,
        disk_layers=model.layers - gpu_layers - cpu_layers,
        batch_per_pass=batch,
        disk=disks[0].name if disks else "",
        gpu_mem_budget=budget,
    )


def largest_gpu(rig: Rig) -> str:
    return max(rig.gpus(), key=lambda g: (g.mem_bytes, g.mem_bw, g.name)).name


@register
class Accelerate(Strategy):
    name = "accelerate"
    summary = "HF Accelerate offloading: layers copied to the GPU one at a time, no overlap"
    plan_type = OffloadPlan

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        return no_gpu(rig)

    def check_plan(self, plan: OffloadPlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        pc.device_of_kind(rig, plan.gpu, "gpu", "gpu")
        pc.device_of_kind(rig, plan.cpu, "cpu", "cpu")
        for name in ("gpu_layers", "cpu_layers", "disk_layers"):
            pc.in_range(getattr(plan, name), 0, model.layers, name)
        total = plan.gpu_layers + plan.cpu_layers + plan.disk_layers
        if total != model.layers:
            raise pc.problem(
                "gpu_layers", f"gpu + cpu + disk layers add up to {total}, the model has {model.layers}"
            )
        if plan.disk_layers and not plan.disk:
            raise pc.problem("disk", "disk_layers > 0 needs a disk")
        if plan.disk:
            pc.device_of_kind(rig, plan.disk, "disk", "disk")
        # a pass of more than the batch sized the KV cache for sequences that do not exist
        pc.in_range(plan.batch_per_pass, 1, workload.batch, "batch_per_pass")
        pc.optional_budget(plan.gpu_mem_budget)

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> OffloadPlan:
        return place_layers(rig, model, workload, largest_gpu(rig), workload.batch, None)

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[OffloadPlan]:
        """The largest pass (up to the whole batch) that leaves the KV cache room on the GPU."""
        gpu = largest_gpu(rig)
        for batch in range(workload.batch, 0, -1):
            plan = place_layers(rig, model, workload, gpu, batch, None)
            fits = gpu_reserve(model, batch, workload) <= rig.devices[gpu].mem_bytes
            if fits and (plan.disk_layers == 0 or plan.disk):
                yield plan
                return

    def pass_batch(self, plan: Any) -> int | None:
        return plan.batch_per_pass

    def footprint(self, plan: OffloadPlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        per_layer = layer_bytes(model)
        out: dict[str, dict[str, float]] = {
            plan.gpu: {
                "weights": plan.gpu_layers * per_layer + embed_bytes(model) + head_bytes(model),
                "staging": largest_leaf_bytes(model) if plan.gpu_layers < model.layers else 0.0,
                "kv_cache": kv_cache_bytes(model, plan.batch_per_pass, workload.context_len, model.layers),
                "activations": hf_eager_workspace(
                    model, plan.batch_per_pass, workload.prompt_len, workload.context_len
                ),
            },
            plan.cpu: {"offloaded": plan.cpu_layers * per_layer + (per_layer if plan.disk_layers else 0.0)},
        }
        if plan.disk_layers:
            if not plan.disk:
                out[plan.cpu]["offloaded"] += plan.disk_layers * per_layer  # nowhere else to go
            else:
                out[plan.disk] = {"offloaded": plan.disk_layers * per_layer}
        capacity = rig.devices[plan.gpu].mem_bytes
        check_budget(plan.gpu, "gpu_mem_budget", out[plan.gpu], plan.gpu_mem_budget, capacity)
        return out

    def devices(self, plan: OffloadPlan) -> list[str]:
        return [plan.gpu, plan.cpu]

    def schedule(self, plan: OffloadPlan, rig: Rig, model: ModelSpec, workload: Workload):
        per_layer = layer_bytes(model)
        passes = [plan.batch_per_pass] * (workload.batch // plan.batch_per_pass)
        if workload.batch % plan.batch_per_pass:
            passes.append(workload.batch % plan.batch_per_pass)

        def forward(engine, b: int, step: Step):
            blocks = layer_blocks(model, step.phase, b, step.seq_len, step.kv_len)
            yield engine.compute(plan.gpu, embed_ops(model, b, step.seq_len))
            if plan.gpu_layers:
                yield engine.lockstep(
                    [plan.gpu], [blocks.whole], repeat=plan.gpu_layers, label="resident layers"
                )
            for i in range(plan.gpu_layers, model.layers):
                if i >= plan.gpu_layers + plan.cpu_layers:  # disk -> host memory first
                    yield engine.transfer(plan.disk, plan.cpu, per_layer, label=f"layer{i} from disk")
                yield engine.transfer(
                    plan.cpu, plan.gpu, per_layer, pinned=plan.pinned, label=f"layer{i} to gpu"
                )
                yield engine.compute(plan.gpu, blocks.whole, label=f"layer{i}")
            yield engine.compute(plan.gpu, head_ops(model, step.phase, b, step.seq_len))

        def run(engine):
            for b in passes:  # row by row: one pass finishes all its tokens before the next starts
                for step in steps(workload):
                    yield from forward(engine, b, step)
                    engine.token_done(b)

        return run
