"""The ops of one FlexGen sub-step: a scheduling layer for one GPU batch, GPU and CPU parts.

Attention and MLP blocks are separate scheduling layers (``sep_layer=True``), plus the input
embedding and the output layer: 2l + 2 in all. Index j = 0 is the input embedding, odd j the
attention block of decoder layer (j - 1) // 2, even j > 0 its MLP block, j = 2l + 1 the output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from hetsim.models.layer_ops import embedding_op, lm_head_ops
from hetsim.models.sharding import layer_blocks
from hetsim.models.spec import FLEXGEN_INT4 as INT4  # FlexGen's group-64 4-bit format
from hetsim.models.spec import FP16, ModelSpec, Op, OpKind, Phase
from hetsim.strategies.flexgen_policy import scheduling_layer_tensors

FP32_BYTES = 4.0
DEQUANT_FLOPS = 2.0  # per element: q / scale + min
QUANT_FLOPS = 6.0  # per element: min/max reduction, scale, round, pack


def layer_kind(model: ModelSpec, j: int) -> str:
    last = 2 * model.layers + 1
    if j == 0:
        return "embed"
    if j == last:
        return "output"
    return "attention" if j % 2 == 1 else "mlp"


def kv_token_bytes(model: ModelSpec, compressed: bool) -> float:
    """K and V of one token of one sequence in one layer."""
    return 2 * model.kv_heads * model.head_dim * (INT4 if compressed else FP16).bytes_per_element


def _dequant(name: str, elems: float) -> Op:
    """Group-wise 4-bit to fp16 on the GPU: memory-bound, reads 0.5625 B and writes 2 B per element."""
    return Op(
        name,
        OpKind.ELEMENTWISE,
        0,
        DEQUANT_FLOPS * elems,
        0.0,
        elems * INT4.bytes_per_element,
        elems * FP16.bytes_per_element,
    )


def _quant(name: str, elems: float) -> Op:
    return Op(
        name,
        OpKind.ELEMENTWISE,
        0,
        QUANT_FLOPS * elems,
        0.0,
        elems * FP16.bytes_per_element,
        elems * INT4.bytes_per_element,
    )


@dataclass(frozen=True)
class SubStepOps:
    """GPU ops of one sub-step; with CPU attention, ``gpu_pre`` / CPU op / ``gpu_post`` in sequence."""

    gpu_pre: tuple[Op, ...]
    cpu: tuple[Op, ...] = ()
    gpu_post: tuple[Op, ...] = ()
    to_cpu_bytes: float = 0.0  # q, k, v of the new token to the CPU
    to_gpu_bytes: float = 0.0  # the attention output back to the GPU


@lru_cache(maxsize=8192)
def substep_ops(
    model: ModelSpec,
    kind: str,
    phase: Phase,
    gbs: int,
    seq: int,
    kv_len: int,
    cpu_attention: bool,
    cpu_share: float,
    compress_weight: bool,
    compress_cache: bool,
) -> SubStepOps:
    """Ops of one GPU batch through one scheduling layer.

    ``cpu_share`` = fraction of the KV cache off the GPU; with CPU attention in decode, that share
    of the attention runs on the CPU in fp32 over the gathered workspace and the rest on the GPU.
    """
    wdeq: tuple[Op, ...] = ()
    if compress_weight:
        idx = {"embed": 0, "attention": 1, "mlp": 2, "output": 2 * model.layers + 1}[kind]
        elems = sum(n for n, m in scheduling_layer_tensors(model)[idx] if m)
        wdeq = (_dequant("dequant_weights", elems),)
    if kind == "embed":
        return SubStepOps((*wdeq, embedding_op(model, gbs, seq)))
    if kind == "output":
        return SubStepOps(wdeq + lm_head_ops(model, phase, gbs, seq, all_logits=phase == "prefill"))
    blocks = layer_blocks(model, phase, gbs, seq, kv_len)
    if kind == "mlp":
        return SubStepOps(wdeq + blocks.mlp)
    att = blocks.attention
    kv_elems_new = gbs * seq * 2 * model.kv_heads * model.head_dim
    kvq: tuple[Op, ...] = (_quant("compress_kv", kv_elems_new),) if compress_cache else ()
    if phase == "prefill" or not cpu_attention:
        kvdq: tuple[Op, ...] = ()
        if compress_cache and phase == "decode":
            cached = gbs * (kv_len - 1) * 2 * model.kv_heads * model.head_dim
            kvdq = (_dequant("dequant_kv", cached),)
        return SubStepOps(wdeq + kvdq + att + kvq)
    split = next(i for i, o in enumerate(att) if o.kind == OpKind.ATTENTION)
    gpu_att = att[split]
    pre = wdeq + att[:split]
    if cpu_share < 1.0:
        pre = (*pre, _scale(gpu_att, 1.0 - cpu_share))
    cpu_op = _cpu_attention(model, gpu_att, gbs, kv_len, cpu_share)
    h_q = model.heads * model.head_dim
    h_kv = model.kv_heads * model.head_dim
    return SubStepOps(
        gpu_pre=pre,
        cpu=(cpu_op,),
        gpu_post=att[split + 1 :],
        to_cpu_bytes=gbs * (h_q + 2 * h_kv) * FP16.bytes_per_element,
        to_gpu_bytes=gbs * h_q * FP16.bytes_per_element,
    )


def _scale(op: Op, share: float) -> Op:
    return dataclasses.replace(
        op, flops=op.flops * share, kv_read_bytes=op.kv_read_bytes * share, kv_write_bytes=0.0
    )


def _cpu_attention(model: ModelSpec, op: Op, gbs: int, kv_len: int, share: float) -> Op:
    """fp32 decode attention on the CPU over ``share`` of the KV (pytorch_backend.py: mha_gen).

    Reads the fp32 K and V workspace, writes and reads back the fp32 score matrix.
    """
    kv_fp32 = gbs * kv_len * 2 * model.kv_heads * model.head_dim * FP32_BYTES * share
    scores = gbs * model.heads * kv_len * FP32_BYTES * 2 * share
    q = gbs * model.heads * model.head_dim * FP32_BYTES
    return Op(
        "cpu_attention",
        OpKind.ATTENTION,
        op.layer,
        op.flops * share,
        0.0,
        q + scores / 2,
        q + scores / 2,
        kv_read_bytes=kv_fp32,
        compute_dtype="fp32",
    )


@lru_cache(maxsize=4096)
def kv_gather_op(model: ModelSpec, gbs: int, tokens: int, share: float) -> Op:
    """Copy ``share`` of a batch's fp16 KV into the fp32 CPU workspace (load_cache, path 1)."""
    elems = gbs * tokens * 2 * model.kv_heads * model.head_dim * share
    return Op("kv_gather", OpKind.ELEMENTWISE, 0, elems, 0.0, elems * 2.0, elems * FP32_BYTES)
