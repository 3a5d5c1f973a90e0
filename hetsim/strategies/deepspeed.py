"""DeepSpeed ZeRO-Inference (ZeRO-3 ``offload_param`` to CPU) on one GPU.

Every parameter lives in pinned host memory and is fetched to the GPU module by module as the
forward pass reaches it; the next module's fetch is prefetched, so one module's copy overlaps the
current module's compute. The KV cache and activations stay on the GPU, so the batch is bounded by
GPU memory, and the schedule is row by row: a pass generates all tokens of its batch, and every
weight crosses PCIe again for every token of every pass (FlexGen, arXiv 2303.06865; bench_hf.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from hetsim.hardware.rig import Rig
from hetsim.models.memory import embed_bytes, head_bytes, hf_eager_workspace, kv_cache_bytes, layer_bytes
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks
from hetsim.models.spec import ModelSpec
from hetsim.sim.memory import OutOfMemory, check_budget
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, register
from hetsim.workload import Workload, steps


@dataclass(frozen=True)
class ZeroInferencePlan:
    gpu: str
    cpu: str
    batch_per_pass: int
    pinned: bool = True  # ZeRO-3 offload_param keeps pinned host buffers (pin_memory: true)
    prefetch: bool = True  # fetch module i + 1 while module i computes
    gpu_mem_budget: float | None = None


def _modules(model: ModelSpec) -> list[float]:
    """Bytes fetched per module in forward order: embeddings, decoder layers, then the LM head.

    OPT ties the head to the token table, so the table is fetched again for the head.
    """
    head = head_bytes(model) or model.vocab * model.hidden * 2.0
    return [embed_bytes(model), *([layer_bytes(model)] * model.layers), head]


@register
class ZeroInference(Strategy):
    name = "deepspeed"
    summary = "DeepSpeed ZeRO-Inference: weights in pinned host memory streamed per layer with prefetch"
    plan_type = ZeroInferencePlan

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        if not rig.gpus():
            return "the rig has no GPU"
        return None

    def check_plan(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        pc.device_of_kind(rig, plan.gpu, "gpu", "gpu")
        pc.device_of_kind(rig, plan.cpu, "cpu", "cpu")
        pc.at_least(plan.batch_per_pass, 1, "batch_per_pass")
        pc.optional_budget(plan.gpu_mem_budget)

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> ZeroInferencePlan:
        gpu = max(rig.gpus(), key=lambda d: (d.mem_bytes, d.name)).name
        plan = ZeroInferencePlan(gpu, rig.host_cpu(gpu), workload.batch)
        best = self.largest_batch(plan, rig, model, workload)
        return replace(plan, batch_per_pass=max(1, min(workload.batch, best)))

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[ZeroInferencePlan]:
        """The largest pass that fits: more sequences share every weight fetch."""
        plan = self.default_plan(rig, model, workload)
        if self.largest_batch(plan, rig, model, workload) >= 1:
            yield plan

    def largest_batch(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> int:
        lo, hi = 0, workload.batch
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(replace(plan, batch_per_pass=mid), rig, model, workload):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def fits(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> bool:
        try:
            fp = self.footprint(plan, rig, model, workload)
        except OutOfMemory:
            return False
        return all(sum(tags.values()) <= rig.devices[d].mem_bytes for d, tags in fp.items())

    def pass_batch(self, plan: Any) -> int | None:
        return plan.batch_per_pass

    def footprint(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        b = plan.batch_per_pass
        mods = _modules(model)
        buffers = 2 * max(mods) if plan.prefetch else max(mods)
        gpu = {
            "weight_buffers": buffers,
            "kv_cache": kv_cache_bytes(model, b, workload.context_len, model.layers),
            # HF transformers' forward runs under ZeRO's hooks: its own peak (hf_eager_workspace)
            "activations": hf_eager_workspace(model, b, workload.prompt_len, workload.context_len),
        }
        check_budget(plan.gpu, "gpu_mem_budget", gpu, plan.gpu_mem_budget)
        return {plan.gpu: gpu, plan.cpu: {"weights": sum(mods)}}

    def devices(self, plan: ZeroInferencePlan) -> list[str]:
        return [plan.gpu, plan.cpu]

    def schedule(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload):
        mods = _modules(model)
        passes = math.ceil(workload.batch / plan.batch_per_pass)

        def module_ops(i: int, b: int, step):
            if i == 0:
                return embed_ops(model, b, step.seq_len)
            if i == len(mods) - 1:
                return head_ops(model, step.phase, b, step.seq_len)
            return layer_blocks(model, step.phase, b, step.seq_len, step.kv_len).whole

        def fetch(engine, i: int):
            return engine.transfer(plan.cpu, plan.gpu, mods[i], pinned=plan.pinned, label="fetch_params")

        def run(engine):
            remaining = workload.batch
            for _ in range(passes):
                b = min(plan.batch_per_pass, remaining)
                remaining -= b
                for step in steps(workload):
                    pending = fetch(engine, 0)
                    for i in range(len(mods)):
                        yield pending
                        nxt = None
                        if plan.prefetch and i + 1 < len(mods):
                            nxt = fetch(engine, i + 1)
                        yield engine.compute(plan.gpu, module_ops(i, b, step))
                        pending = (
                            nxt if nxt is not None else (fetch(engine, i + 1) if i + 1 < len(mods) else None)
                        )
                    engine.token_done(b)

        return run
