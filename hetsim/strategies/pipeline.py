"""Pipelines of tensor-parallel stages, shared by gpu-only, HexGen and HexGen serving.

A stage is one tensor-parallel group of GPUs in one machine holding a contiguous run of layers.
This module is the one home of what a stage holds (``stage_memory``), how layers are spread over
stages (``balance_layers``, ``even_layers``), and how one forward step of a batch runs through the
stages on the engine (``pipeline_pass``: one lockstep task per stage, leader-to-leader sends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hetsim.hardware.rig import Rig
from hetsim.models.memory import (
    embed_bytes,
    head_bytes,
    hidden_bytes,
    kv_cache_bytes,
    rank_activation_workspace,
)
from hetsim.models.sharding import embed_ops, head_ops, kv_share, layer_blocks, rank_layer_bytes
from hetsim.models.spec import ModelSpec, Phase
from hetsim.workload import Workload

# KV cache precisions the GPU pipelines (gpu-only, hexgen) run when asked with --kv-dtype: 16-bit, fp32,
# and int8 (TensorRT-LLM's and LMDeploy's int8 KV cache; lossy).
GPU_KV_DTYPES = ("fp16", "bf16", "fp32", "int8")
# Weight precisions they run when asked with --dtype: 16-bit, fp32, and weight-only int8/int4 (GPTQ/AWQ
# group-128 formats dequantised inside the GEMM, as vLLM, TGI and TensorRT-LLM serve them; lossy).
GPU_WEIGHT_DTYPES = ("fp16", "bf16", "fp32", "int8", "int4")


def gpu_dtypes(model: ModelSpec, workload: Workload) -> tuple[str, str]:
    """(weights, KV cache) a GPU pipeline runs: what the user asked for, else fp16 for a 16-bit
    checkpoint and fp32 for an fp32 one (narrowing it to 16 bits is lossy: the user's to ask for)."""
    own = "fp32" if model.dtype == "fp32" else "fp16"
    return workload.weight_dtype or own, workload.kv_dtype or own


@dataclass(frozen=True)
class Stage:
    devices: tuple[str, ...]  # one tensor-parallel group, all in one node
    layers: int


def micro_batch_sizes(batch: int, parts: int) -> list[int]:
    """``batch`` sequences in at most ``parts`` near-equal micro-batches (larger ones first)."""
    parts = max(1, min(parts, batch))
    base, extra = divmod(batch, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def even_layers(total: int, parts: int) -> tuple[int, ...]:
    """``total`` layers over ``parts`` stages, ±1 (the earlier stages take the remainder)."""
    base, extra = divmod(total, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


def pipeline_load(workload: Workload, micro_batches: int, weight_dtype: str, kv_dtype: str) -> dict:
    """What every stage holds besides its layers' weights, as ``stage_memory``'s and
    ``balance_layers``' keywords: every micro-batch's KV is resident at once (they are all in flight),
    and a layer's workspace is one micro-batch's prompt."""
    return {
        "kv_sequences": workload.batch,
        "context": workload.context_len,
        "act_tokens": max(micro_batch_sizes(workload.batch, micro_batches)) * workload.prompt_len,
        "weight_dtype": weight_dtype,
        "kv_dtype": kv_dtype,
    }


def stage_memory(
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
    """One GPU of a stage, as the engine's memory ledger charges it: its weight shard (the embedding
    replicated on the first stage, the head split on the last), its KV shard for ``kv_sequences`` x
    ``context`` tokens, and the activation workspace of ``act_tokens`` tokens in flight through a layer
    (the intermediate split by ``tp``, the residual stream whole: ``rank_activation_workspace``).

    Not charged (a known gap): the last stage's logits, transient after a layer's workspace is freed,
    a step's sequences x vocab (the last position only at prefill; about 6 bytes each where vLLM
    gathers 16-bit logits and samples in fp32). They exceed the layer workspace only for prompts under
    3 x vocab / (intermediate / tp + 2 x hidden) tokens: 4 on llama2-70b at TP 8, 20 on qwen-72b,
    about 100 on qwen3-30b-a3b."""
    tp = len(stage.devices)
    weights = stage.layers * rank_layer_bytes(model, weight_dtype, tp)
    if first:
        weights += embed_bytes(model, weight_dtype)
    if last:
        weights += head_bytes(model, weight_dtype) / tp
    kv = kv_cache_bytes(model, kv_sequences, context, stage.layers, kv_dtype) * kv_share(tp, model.kv_groups)
    return {
        "weights": weights,
        "kv_cache": kv,
        "activations": rank_activation_workspace(model, 1, max(1, act_tokens), tp),
    }


def layer_capacity(
    model: ModelSpec,
    group: tuple[str, ...],
    rig: Rig,
    first: bool,
    last: bool,
    kv_sequences: int,
    context: int,
    act_tokens: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
) -> int:
    """The most layers a TP group holds as a stage: the largest count whose ``stage_memory`` fits the
    smallest GPU of the group (every rank holds the same bytes), as the memory ledger checks it."""
    mem = min(rig.devices[d].mem_bytes for d in group)

    def need(n: int) -> float:
        tags = stage_memory(
            model, Stage(group, n), first, last, kv_sequences, context, act_tokens, weight_dtype, kv_dtype
        )
        return sum(tags.values())

    fixed = need(0)
    per_layer = need(1) - fixed
    if fixed > mem:
        return 0
    n = min(model.layers, int((mem - fixed) // per_layer)) if per_layer > 0 else model.layers
    while n > 0 and need(n) > mem:  # the linear guess can be one over by rounding
        n -= 1
    return n


def balance_layers(
    model: ModelSpec,
    groups: list[tuple[str, ...]],
    rig: Rig,
    *,
    kv_sequences: int,
    context: int,
    act_tokens: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
) -> tuple[int, ...] | None:
    """Layers per stage in proportion to each group's memory bandwidth (decode is bandwidth-bound),
    capped by what fits in its memory (``layer_capacity``: each rank's weights, KV of
    ``kv_sequences`` x ``context`` tokens and workspace of ``act_tokens`` tokens, the embedding on the
    first stage and the head on the last); None when the groups cannot hold the model."""
    last = len(groups) - 1
    caps = [
        layer_capacity(
            model, g, rig, i == 0, i == last, kv_sequences, context, act_tokens, weight_dtype, kv_dtype
        )
        for i, g in enumerate(groups)
    ]
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
    """One forward step of a batch through a pipeline on the engine: each stage one lockstep task
    (layers x [attention, all-reduce, mlp, all-reduce]), leader-to-leader sends between stages.

    The steps of a shape are worked out once per engine (serving repeats a few shapes thousands of
    times) and booked as ``engine.lockstep`` would book them, one event each, in the same order."""
    key = (id(stages), id(model), phase, batch, seq_len, kv_len, weight_dtype, kv_dtype)
    hit = engine.step_cache.get(key)
    if hit is None or hit[0] is not stages or hit[1] is not model:  # ids are held, so not reused
        steps = _pass_steps(engine, stages, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype)
        hit = engine.remember(key, (stages, model, steps))
    for devices, fixed, repeat, label, message in hit[2]:
        if fixed is None:
            yield engine.send(devices[0], devices[1], message, label=label)
        else:
            yield engine.run_lockstep(devices, fixed, repeat, label)


def _pass_steps(engine, stages, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype) -> tuple:
    """``pipeline_pass``'s tasks in order: (devices, lockstep part, repeat, label, 0.0) for a stage's
    lockstep, ((leader, next leader), None, 0, label, bytes) for a send."""
    steps = []
    last = len(stages) - 1
    message = hidden_bytes(model, batch, seq_len)
    for i, st in enumerate(stages):
        tp = len(st.devices)
        if i == 0:
            work = [embed_ops(model, batch, seq_len, weight_dtype)]
            steps.append((st.devices, engine.lockstep_fixed(st.devices, work), 1, "embed", 0.0))
        blocks = layer_blocks(model, phase, batch, seq_len, kv_len, tp, weight_dtype, kv_dtype)
        work = [blocks.attention, message, blocks.mlp, message]
        fixed = engine.lockstep_fixed(st.devices, work, st.layers)
        steps.append((st.devices, fixed, st.layers, f"stage{i}", 0.0))
        if i == last:
            head = head_ops(model, phase, batch, seq_len, tp, weight_dtype)
            steps.append((st.devices, engine.lockstep_fixed(st.devices, [head]), 1, "lm_head", 0.0))
        else:
            pair = (st.devices[0], stages[i + 1].devices[0])
            steps.append((pair, None, 0, "pp-send", message))
    return tuple(steps)
