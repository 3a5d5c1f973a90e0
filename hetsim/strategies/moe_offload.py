"""MoE expert offload on one GPU and CPU sockets, as KTransformers runs DeepSeek-V3/R1 and Qwen3-MoE.

KTransformers (kvcache-ai/ktransformers, Apache-2.0; doc/en/DeepseekR1_V3_tutorial.md) keeps attention
(MLA), the KV cache, the dense layers, the routers and the shared experts on the GPU, and runs the
routed experts on the CPU sockets, whose DRAM holds their weights. Per expert layer: the GPU runs
attention and the router, sends the hidden states and the routing over PCIe, the sockets run the
selected experts while the GPU runs the shared expert, and the expert outputs come back over PCIe.
Layers depend on each other, so there is no overlap across layers at batch 1.

With several sockets each runs 1/S of every expert's work and sends its partial sum to the GPU. Where
the weights live is the plan's ``numa``, and the planner chooses among:

* ``slice``: each socket holds its own slice of every expert (the inner dimension split, Megatron-style;
  KTransformers' later NUMA-aware tensor parallelism), so every read is local and the experts are held once;
* ``replicate``: every socket holds all routed experts (KTransformers V0.2 with USE_NUMA): the same local
  reads as ``slice`` at S times the DRAM;
* ``interleave``: the experts held once, spread over the sockets' DRAM (llama.cpp with memory interleaved
  over the NUMA nodes): a socket reads (S-1)/S of its weights from the other sockets, over the UPI links
  (the rig's datasheet bandwidth) and out of the other sockets' DRAM, while it computes.

``gpu_experts`` of each layer's experts may stay on the GPU (when VRAM allows). Under uniform routing
they take that share of the token-expert pairs; with a routing profile (``--routing-profile``) they are
the layer's most often picked experts and take their share of the picks, and the experts a step reads
on either side are the expected distinct experts its tokens hit there (``models.layer_ops``) -- except
where the CPU runs llama.cpp k-quants and a step has 2-9 tokens: KTransformers V0.2 then runs its
experts token by token and reads every token's experts (``GROUP_MIN_LEN``).

Weights are stored in the precision the user asks for (``--dtype``; bf16 otherwise), but for MLA's
``kv_b_proj``: KTransformers' DeepSeek rules (``optimize/optimize_rules/DeepSeek-V3-Chat.yaml``) replace
every linear of a layer with its quantised GPU kernel *except* ``self_attn.kv_b_proj``, which stays a
16-bit torch Linear that the absorbed attention splits into ``q_absorb``/``out_absorb``; the GPU holds
and reads it in bf16 (more precise than asked, not less). Expert matmuls in bf16 cost the CPU's
catalogue peak (AMX) at the CPU efficiency class; weight-only int8/int4 (group 128) compute in the
activations' 16-bit dtype after dequantising on the vector units (an int8 x int8 AMX kernel, W8A8,
would quantise the activations too: not offered); in llama.cpp's Q4_K_M they cost its measured k-quant
kernels (``efficiency.yaml`` ``cpu.kernel_cycles``, ``hetsim.costs.op_cost``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from hetsim.costs.op_cost import repeated
from hetsim.hardware.rig import Rig
from hetsim.models.layer_ops import decoder_layer_ops, distinct_experts, expected_distinct_experts
from hetsim.models.memory import activation_workspace, hidden_bytes, kv_cache_bytes
from hetsim.models.sharding import embed_ops, head_ops, shard
from hetsim.models.spec import DTYPES, ModelSpec, Op, Phase
from hetsim.models.weights import layer_weight_tensors, tensor_bytes, weight_bytes
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, no_gpu, register
from hetsim.workload import Workload, steps

# The routed experts' ops (models.layer_ops names); everything else of an expert layer runs on the GPU.
ROUTED_OPS = frozenset({"gate_proj", "up_proj", "act", "down_proj", "expert_combine"})
# KTransformers V0.2's CPU MoE (ktransformers_ext/operators/llamafile/moe.cpp): below GROUP_MIN_LEN tokens a
# layer runs token by token (MOE::forward calls MOE::forward_one once per token), so b tokens read b x k
# experts' weights (a GEMV each), not the distinct experts they hit, and each token quantises its hidden
# state and its experts' intermediates to the kernels' activation type on one thread (its 64-row task
# stride is not a multiple of Q8_K's 256-element block); from GROUP_MIN_LEN tokens on (forward_many) the
# tokens of an expert share its weight reads and the quantisation runs inside the jobs. hetsim runs the
# llamafile path for llama.cpp's k-quants (ACTIVATION_TYPE), the format V0.2 serves them in.
GROUP_MIN_LEN = 10
ACTIVATION_TYPE = {"q4_k_m": "q8_k"}  # k-quant weights multiply Q8_K activations
KV_B_DTYPE = "bf16"  # MLA's kv_b_proj on the GPU: KTransformers leaves it out of its quantised kernels
ROUTING_BYTES_PER_CHOICE = 8.0  # an int32 expert id and an fp32 weight per token and chosen expert
WEIGHT_DTYPES = ("bf16", "fp16", "int8", "int4", "q4_k_m")
Numa = Literal["slice", "replicate", "interleave"]
NUMA_MODES: tuple[Numa, ...] = ("slice", "replicate", "interleave")


@dataclass(frozen=True)
class MoEOffloadPlan:
    gpu: str
    sockets: tuple[str, ...]  # CPU sockets running the routed experts, each a slice of every expert
    weight_dtype: str = "bf16"
    kv_dtype: str = "fp16"
    gpu_experts: int = 0  # routed experts of every expert layer kept on the GPU
    numa: Numa = "slice"  # where the routed experts live over several sockets (module docstring)


def routed_expert_bytes(model: ModelSpec, dtype: str) -> float:
    """Bytes of all routed experts of all expert layers (what lives in host memory)."""
    per_layer = sum(
        tensor_bytes(t, DTYPES[dtype])
        for t in layer_weight_tensors(model, True)
        if t.name.startswith("experts.")
    )
    return per_layer * (model.layers - model.dense_layers)


def _scaled(op: Op, share: float, weight_share: float | None = None) -> Op:
    """``share`` of a routed-expert op's token-expert pairs (FLOPs, activations) and ``weight_share``
    (default: the same) of the expert weights it reads."""
    return dataclasses.replace(
        op,
        flops=op.flops * share,
        weight_bytes=op.weight_bytes * (share if weight_share is None else weight_share),
        dequant_ops=op.dequant_ops * (share if weight_share is None else weight_share),
        act_in_bytes=op.act_in_bytes * share,
        act_out_bytes=op.act_out_bytes * share,
    )


def with_routing(
    ops: tuple[Op, ...], model: ModelSpec, probs: tuple[float, ...], tokens: int
) -> tuple[Op, ...]:
    """A layer's ops reading the distinct experts ``tokens`` tokens hit under a routing profile's pick
    probabilities ``probs``, instead of the uniform count the ops were built with."""
    share = distinct_experts(probs, tokens) / expected_distinct_experts(
        model.num_experts, model.experts_per_token, tokens
    )
    return tuple(_scaled(o, 1.0, share) if o.name in ROUTED_OPS else o for o in ops)


def _kv_b_16bit(op: Op, wd: str) -> Op:
    """MLA's kv_b_proj (and the absorbed products that read it) in ``KV_B_DTYPE`` when ``wd`` is narrower."""
    ratio = DTYPES[KV_B_DTYPE].bytes_per_element / DTYPES[wd].bytes_per_element
    if op.module != "kv_b_proj" or ratio <= 1.0:
        return op
    return dataclasses.replace(
        op,
        weight_bytes=op.weight_bytes * ratio,
        weight_row_bytes=op.weight_row_bytes * ratio,
        compute_dtype=KV_B_DTYPE,
        dequant_ops=0.0,  # a 16-bit Linear: nothing to unpack
    )


def kv_b_extra_bytes(model: ModelSpec, wd: str) -> float:
    """What holding every layer's kv_b_proj in ``KV_B_DTYPE`` adds to the GPU's weights in ``wd``."""
    if not model.is_mla:
        return 0.0
    extra = DTYPES[KV_B_DTYPE].bytes_per_element - DTYPES[wd].bytes_per_element
    per_layer = sum(t.numel for t in layer_weight_tensors(model) if t.module == "kv_b_proj" and t.is_matrix)
    return max(0.0, extra) * per_layer * model.layers


@dataclass(frozen=True)
class _LayerWork:
    before: tuple[Op, ...]  # GPU: attention .. router
    shared: tuple[Op, ...]  # GPU, while the sockets run the experts: shared experts
    routed: tuple[Op, ...]  # one socket's slice of the routed experts
    after: tuple[Op, ...]  # GPU: the residual add
    serial_elements: float = 0.0  # activations each socket quantises on one thread (GROUP_MIN_LEN)
    repeat: int = 1  # ``routed`` runs this many times back to back (V0.2's token-by-token forward_one)


@lru_cache(maxsize=1024)
def _layer_work(
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq: int,
    kv: int,
    wd: str,
    kvd: str,
    sockets: int,
    moe: bool,
    gpu_experts: int = 0,
    probs: tuple[float, ...] | None = None,
    per_token: bool = True,
) -> _LayerWork:
    """One layer's work; ``probs``: a routing profile's pick probability of each expert (None: uniform);
    ``per_token``: the CPU's experts as V0.2 runs a few tokens (GROUP_MIN_LEN), else as one batch."""
    layer = model.dense_layers if moe else 0
    ops = decoder_layer_ops(model, phase, batch, seq, kv, DTYPES[wd], DTYPES[kvd], layer=layer)
    if model.is_mla:
        ops = tuple(_kv_b_16bit(o, wd) for o in ops)
    if not moe:
        return _LayerWork(ops, (), (), ())
    cut = next(i for i, o in enumerate(ops) if o.name == "router") + 1
    e, k = model.num_experts, model.experts_per_token
    tokens = batch * seq
    if per_token and wd in ACTIVATION_TYPE and 1 < tokens < GROUP_MIN_LEN and gpu_experts < e:
        # V0.2's forward_one per token: the CPU's work is one token's, ``tokens`` times over
        one = _layer_work(model, phase, 1, 1, kv, wd, kvd, sockets, moe, gpu_experts, probs)
        work = _layer_work(model, phase, batch, seq, kv, wd, kvd, sockets, moe, gpu_experts, probs, False)
        return dataclasses.replace(
            work, routed=one.routed, serial_elements=tokens * one.serial_elements, repeat=tokens
        )
    if probs is None:  # uniform: the GPU's experts take that share of the pairs and of the experts read
        pairs_gpu = weights_gpu = gpu_experts / e
        weights_cpu = 1.0 - weights_gpu
    else:  # the GPU holds the most often picked experts; each side reads the distinct experts hit there
        order = sorted(range(e), key=lambda x: (-probs[x], x))
        hot_p, cold_p = [probs[x] for x in order[:gpu_experts]], [probs[x] for x in order[gpu_experts:]]
        uniform = expected_distinct_experts(e, k, batch * seq)  # what the ops' weight bytes count
        pairs_gpu = sum(hot_p) / k
        weights_gpu = distinct_experts(tuple(hot_p), batch * seq) / uniform
        weights_cpu = distinct_experts(tuple(cold_p), batch * seq) / uniform
    routed_all = [o for o in ops if o.name in ROUTED_OPS]
    routed = ()
    if gpu_experts < e:
        routed = tuple(
            shard(_scaled(o, 1.0 - pairs_gpu, weights_cpu), sockets, model.kv_groups) for o in routed_all
        )
    hot = tuple(_scaled(o, pairs_gpu, weights_gpu) for o in routed_all) if gpu_experts > 0 else ()
    shared = hot + tuple(o for o in ops[cut:] if o.name.startswith("shared_"))
    after = tuple(o for o in ops[cut:] if o.name == "residual2")
    serial = 0.0
    if routed and wd in ACTIVATION_TYPE and tokens < GROUP_MIN_LEN:
        serial = tokens * (model.hidden + k * (1.0 - pairs_gpu) * model.intermediate / sockets)
    return _LayerWork(ops[:cut], shared, routed, after, serial)


def node_sockets(rig: Rig, gpu: str) -> tuple[str, ...]:
    """The GPU's host socket first, then the node's other sockets."""
    host = rig.host_cpu(gpu)
    others = sorted(c for c in rig.node_of(gpu).cpus if c != host)
    return (host, *others)


@register
class MoEOffload(Strategy):
    name = "moe-offload"
    summary = (
        "KTransformers-style: attention, KV, dense and shared experts on the GPU; routed experts on CPUs"
    )
    plan_type = MoEOffloadPlan
    weight_dtypes = WEIGHT_DTYPES
    kv_dtypes = ("fp16", "bf16", "fp32", "int8")

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        if (why := no_gpu(rig)) is not None:
            return why
        if not model.is_moe:
            return "a dense model has no routed experts to offload (see layer-offload)"
        return None

    def _gpu(self, rig: Rig) -> str:
        return max(rig.gpus(), key=lambda g: (g.mem_bytes, g.mem_bw, g.name)).name

    def check_plan(self, plan: MoEOffloadPlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        pc.device_of_kind(rig, plan.gpu, "gpu", "gpu")
        if not plan.sockets:  # was: a division by zero
            raise pc.problem("sockets", "needs at least one CPU socket to run the routed experts")
        for i, socket in enumerate(plan.sockets):
            pc.device_of_kind(rig, socket, "cpu", f"sockets[{i}]")
        if len(set(plan.sockets)) < len(plan.sockets):
            raise pc.problem("sockets", "a socket is listed twice")
        pc.in_range(plan.gpu_experts, 0, model.num_experts, "gpu_experts")  # was: -1 ran

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> MoEOffloadPlan:
        gpu = self._gpu(rig)
        wd, kv = workload.weight_dtype or "bf16", workload.kv_dtype or "fp16"
        return MoEOffloadPlan(gpu, node_sockets(rig, gpu), wd, kv_dtype=kv)

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[MoEOffloadPlan]:
        """Every socket of the GPU's node in each NUMA layout, or only its host socket; no experts on the
        GPU, or as many as its free memory holds."""
        plan = self.default_plan(rig, model, workload)
        layouts = [(plan.sockets, m) for m in NUMA_MODES] if len(plan.sockets) > 1 else []
        hot = self.gpu_expert_room(plan, rig, model, workload)
        for sockets, numa in [*layouts, (plan.sockets[:1], "slice")]:
            for n in dict.fromkeys((0, hot)):
                yield dataclasses.replace(plan, sockets=sockets, gpu_experts=n, numa=numa)

    def gpu_expert_room(self, plan: MoEOffloadPlan, rig: Rig, model: ModelSpec, workload: Workload) -> int:
        """Experts per layer that fit in the GPU memory the rest of the plan leaves free."""
        used = sum(
            self.footprint(dataclasses.replace(plan, gpu_experts=0), rig, model, workload)[plan.gpu].values()
        )
        per_expert = routed_expert_bytes(model, plan.weight_dtype) / model.num_experts
        free = rig.devices[plan.gpu].mem_bytes - used
        return max(0, min(model.num_experts, math.floor(free / per_expert))) if per_expert > 0 else 0

    def footprint(self, plan: MoEOffloadPlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        routed = routed_expert_bytes(model, plan.weight_dtype)
        hot = routed * plan.gpu_experts / model.num_experts
        out: dict[str, dict[str, float]] = {
            plan.gpu: {
                "weights": weight_bytes(model, DTYPES[plan.weight_dtype])
                - routed
                + hot
                + kv_b_extra_bytes(model, plan.weight_dtype),
                "kv_cache": kv_cache_bytes(
                    model, workload.batch, workload.context_len, model.layers, plan.kv_dtype
                ),
                "activations": activation_workspace(model, workload.batch, workload.prompt_len),
            }
        }
        held = 1 if plan.numa == "replicate" else len(plan.sockets)  # sockets sharing one copy
        for s in plan.sockets:
            out[s] = {"experts": (routed - hot) / held}
        return out

    def devices(self, plan: MoEOffloadPlan) -> list[str]:
        return [plan.gpu, *plan.sockets]

    def schedule(self, plan: MoEOffloadPlan, rig: Rig, model: ModelSpec, workload: Workload):
        gpu, sockets, wd, kvd = plan.gpu, plan.sockets, plan.weight_dtype, plan.kv_dtype
        b, hot = workload.batch, plan.gpu_experts
        n_s = len(sockets)
        remote = plan.numa == "interleave" and n_s > 1

        def layer(engine, work: _LayerWork, tokens: int, label: str):
            yield engine.compute(gpu, work.before, label=f"{label} attention")
            if not work.routed and not work.shared:
                return
            pending = [engine.compute(gpu, work.shared, label=f"{label} shared")] if work.shared else []
            send = (
                hidden_bytes(model, 1, tokens) + tokens * model.experts_per_token * ROUTING_BYTES_PER_CHOICE
            )
            for s in sockets if work.routed else ():
                arrived = engine.book_transfer(gpu, s, send, label=f"{label} to {s}")
                ops, ready = work.routed, arrived
                if remote:  # interleave: (S-1)/S of this socket's weights stream in over UPI meanwhile
                    ops = tuple(dataclasses.replace(o, weight_bytes=o.weight_bytes / n_s) for o in ops)
                    wb = work.repeat * sum(o.weight_bytes for o in work.routed) / n_s
                    for other in sockets:
                        if other != s:
                            remote_end = engine.book_transfer(
                                other, s, wb, label=f"{label} remote experts", after=arrived
                            )
                            ready = max(ready, remote_end)
                cost = engine.cost_of(s, ops)
                if work.repeat > 1:
                    cost = repeated(cost, work.repeat)
                cycles = rig.devices[s].efficiency.quantize_cycles.get(ACTIVATION_TYPE.get(wd, ""), 0.0)
                if work.serial_elements and cycles and rig.devices[s].clock_hz:
                    t = work.serial_elements * cycles / rig.devices[s].clock_hz  # one thread, the others wait
                    cost = dataclasses.replace(cost, time_s=cost.time_s + t, overhead_s=cost.overhead_s + t)
                args = {"layer": ops[0].layer, "ops": len(ops)}
                end = engine.book_execute(s, cost, label=f"{label} experts", args=args, after=arrived)
                done = max(end, ready)
                back = engine.transfer(s, gpu, hidden_bytes(model, 1, tokens), label="back", after=done)
                pending.append(back)
            yield engine.all_of(pending)
            yield engine.compute(gpu, work.after, label=f"{label} combine")

        routing = workload.routing
        probs = [
            routing.pick_probs(i - model.dense_layers, model.experts_per_token)
            if routing and model.layer_is_moe(i)
            else None
            for i in range(model.layers)
        ]

        def run(engine):
            for step in steps(workload):
                tokens = b * step.seq_len
                yield engine.compute(gpu, embed_ops(model, b, step.seq_len, wd))
                for i in range(model.layers):
                    moe = model.layer_is_moe(i)
                    work = _layer_work(
                        model, step.phase, b, step.seq_len, step.kv_len, wd, kvd, n_s, moe, hot, probs[i]
                    )
                    yield from layer(engine, work, tokens, f"layer{i}")
                yield engine.compute(gpu, head_ops(model, step.phase, b, step.seq_len, 1, wd))
                engine.token_done(b)

        return run
