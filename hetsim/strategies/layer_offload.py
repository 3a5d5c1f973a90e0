"""Whole-layer offload on one GPU and its host CPU, as llama.cpp runs a model with ``-ngl N``.

llama.cpp (ggml-org/llama.cpp, MIT) puts the last N decoder layers (``--n-gpu-layers``), their KV
cache and the output layer on the GPU; the token embedding and the other layers, with their KV cache,
stay in host memory and run on the CPU. Each step runs the CPU layers, hands the hidden states to the
GPU over PCIe once, and runs the GPU layers and the LM head. Nothing is copied per layer, so the CPU
part streams its weights from DRAM at its own speed. The baseline for ``moe-offload``, which
splits inside a layer instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from hetsim.hardware.rig import Rig
from hetsim.models.layer_ops import decoder_layer_ops, relabel
from hetsim.models.memory import activation_workspace, embed_bytes, hidden_bytes, kv_cache_bytes
from hetsim.models.sharding import embed_ops, head_ops
from hetsim.models.spec import DTYPES, ModelSpec
from hetsim.models.weights import layer_weight_bytes, lm_head_bytes
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, no_gpu, register
from hetsim.strategies.moe_offload import WEIGHT_DTYPES, with_routing
from hetsim.workload import Workload, steps


@dataclass(frozen=True)
class LayerOffloadPlan:
    gpu: str
    cpu: str
    gpu_layers: int  # the last layers (and the LM head) run on the GPU; the first ones on the CPU
    weight_dtype: str = "bf16"
    kv_dtype: str = "fp16"


@lru_cache(maxsize=256)
def _layer_sizes(model: ModelSpec, dtype: str) -> tuple[float, ...]:
    """Bytes of each decoder layer in ``dtype`` (``layer_weight_bytes`` of its kind, worked out once a
    kind: the batch ladder sums them at every footprint it tries, ~4,500 layers a compare)."""
    kinds: dict[bool, float] = {}
    for i in range(model.layers):
        moe = model.layer_is_moe(i)
        if moe not in kinds:
            kinds[moe] = layer_weight_bytes(model, DTYPES[dtype], moe)
    return tuple(kinds[model.layer_is_moe(i)] for i in range(model.layers))


def _head_bytes(model: ModelSpec, dtype: str) -> float:
    """The output layer on the GPU: its own copy even when tied to the token table, which stays on the CPU."""
    return lm_head_bytes(model, DTYPES[dtype])


def _runs(model: ModelSpec, first: int, last: int) -> list[tuple[bool, int, int]]:
    """Layers [first, last) as runs of one kind: (moe, first index, count)."""
    out: list[tuple[bool, int, int]] = []
    for i in range(first, last):
        moe = model.layer_is_moe(i)
        if out and out[-1][0] == moe:
            out[-1] = (moe, out[-1][1], out[-1][2] + 1)
        else:
            out.append((moe, i, 1))
    return out


@register
class LayerOffload(Strategy):
    name = "layer-offload"
    summary = "llama.cpp-style -ngl: the last N layers on the GPU, the rest on the host CPU"
    plan_type = LayerOffloadPlan
    weight_dtypes = WEIGHT_DTYPES
    kv_dtypes = ("fp16", "bf16", "fp32", "int8", "int4")  # llama.cpp's -ctk/-ctv f16, bf16, f32, q8_0, q4_0

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        return no_gpu(rig)

    def _fitting_layers(self, rig: Rig, model: ModelSpec, workload: Workload, gpu: str, wd: str) -> int:
        room = (
            rig.devices[gpu].mem_bytes
            - _head_bytes(model, wd)
            - activation_workspace(model, workload.batch, workload.prompt_len)
        )
        kv = kv_cache_bytes(model, workload.batch, workload.context_len, 1, workload.kv_dtype or "fp16")
        n = 0
        sizes = _layer_sizes(model, wd)
        for i in range(model.layers - 1, -1, -1):
            room -= sizes[i] + kv
            if room < 0:
                break
            n += 1
        return n

    def check_plan(self, plan: LayerOffloadPlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        pc.device_of_kind(rig, plan.gpu, "gpu", "gpu")
        pc.device_of_kind(rig, plan.cpu, "cpu", "cpu")
        pc.in_range(plan.gpu_layers, 0, model.layers, "gpu_layers")  # was: -1 ran, 1e30 hung

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> LayerOffloadPlan:
        gpu = max(rig.gpus(), key=lambda g: (g.mem_bytes, g.mem_bw, g.name)).name
        # 16-bit weights in bf16 where the GPU has a bf16 unit, else fp16 (T4, V100: bf16 would run on
        # the fp32 cores; the two are peers, neither narrows the other)
        own = "bf16" if "bf16" in rig.devices[gpu].peak_flops else "fp16"
        wd, kv = workload.weight_dtype or own, workload.kv_dtype or "fp16"
        n = self._fitting_layers(rig, model, workload, gpu, wd)
        return LayerOffloadPlan(gpu, rig.host_cpu(gpu), n, wd, kv)

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[LayerOffloadPlan]:
        yield self.default_plan(rig, model, workload)  # more layers on the GPU is never slower here

    def footprint(self, plan: LayerOffloadPlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        wd, split = plan.weight_dtype, model.layers - plan.gpu_layers
        kv = kv_cache_bytes(model, workload.batch, workload.context_len, 1, plan.kv_dtype)
        sizes = _layer_sizes(model, wd)
        gpu_w = sum(sizes[split:])
        cpu_w = sum(sizes[:split])
        return {
            plan.gpu: {
                "weights": gpu_w + (_head_bytes(model, wd) if plan.gpu_layers else 0.0),
                "kv_cache": kv * plan.gpu_layers,
                "activations": activation_workspace(model, workload.batch, workload.prompt_len),
            },
            plan.cpu: {
                "weights": cpu_w
                + embed_bytes(model, wd)
                + (0.0 if plan.gpu_layers else _head_bytes(model, wd)),
                "kv_cache": kv * split,
            },
        }

    def devices(self, plan: LayerOffloadPlan) -> list[str]:
        return [plan.gpu, plan.cpu]

    def schedule(self, plan: LayerOffloadPlan, rig: Rig, model: ModelSpec, workload: Workload):
        b, wd, kvd = workload.batch, DTYPES[plan.weight_dtype], DTYPES[plan.kv_dtype]
        split = model.layers - plan.gpu_layers
        routing = workload.routing if model.is_moe else None

        def run(engine):
            for step in steps(workload):
                yield engine.compute(plan.cpu, embed_ops(model, b, step.seq_len, plan.weight_dtype))
                for dev, first, last in ((plan.cpu, 0, split), (plan.gpu, split, model.layers)):
                    if dev == plan.gpu and first < last:
                        yield engine.transfer(plan.cpu, plan.gpu, hidden_bytes(model, b, step.seq_len))
                    for moe, start, count in _runs(model, first, last):
                        ops = decoder_layer_ops(
                            model, step.phase, b, step.seq_len, step.kv_len, wd, kvd, layer=start
                        )
                        if not (moe and routing):
                            yield engine.lockstep([dev], [ops], repeat=count, label=f"layers {start}+{count}")
                            continue
                        for i in range(start, start + count):  # each layer reads its own distinct experts
                            probs = routing.pick_probs(i - model.dense_layers, model.experts_per_token)
                            layer_ops = relabel(with_routing(ops, model, probs, b * step.seq_len), i)
                            yield engine.lockstep([dev], [layer_ops], label=f"layer {i}")
                head_dev = plan.gpu if plan.gpu_layers else plan.cpu
                yield engine.compute(
                    head_dev, head_ops(model, step.phase, b, step.seq_len, 1, plan.weight_dtype)
                )
                engine.token_done(b)

        return run
