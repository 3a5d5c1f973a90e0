"""The ops of one FlexGen sub-step: a scheduling layer for one GPU batch, GPU and CPU parts.

Attention and MLP blocks are separate scheduling layers (``sep_layer=True``), plus the input
embedding and the output layer: 2l + 2 in all. Index j = 0 is the input embedding, odd j the
attention block of decoder layer (j - 1) // 2, even j > 0 its MLP block, j = 2l + 1 the output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from functools import lru_cache

from hetsim.costs.op_cost import OpCost, op_cost
from hetsim.hardware.types import ComputeDevice
from hetsim.models.layer_ops import embedding_op, lm_head_ops
from hetsim.models.sharding import layer_blocks
from hetsim.models.spec import FLEXGEN_INT4 as INT4  # FlexGen's group-64 4-bit format
from hetsim.models.spec import FP16, ModelSpec, Op, OpKind, Phase
from hetsim.strategies.flexgen_policy import embedding_tables, kv_width, q_width, scheduling_layer_tensors

FP32_BYTES = 4.0
GROUP_SCALE = 2.0 / INT4.group_size  # bytes of one fp16 scale (or min) per element of its group

# FlexGen's group-wise 4-bit kernels (flexgen/compression.py, TorchCompressedDevice), one PyTorch op
# each, none fused: (read, write) bytes per fp16 element of one tensor. decompress: the high and low
# nibbles shifted/masked out of the packed bytes, each stored into every other fp16 element, then
# div_(scale) and add_(min) in place.
DECOMPRESS_KERNELS = (
    ("unpack_hi", 0.5, 0.5),
    ("store_hi", 0.5, 1.0),
    ("unpack_lo", 0.5, 0.5),
    ("store_lo", 0.5, 1.0),
    ("div_scale", 2.0 + GROUP_SCALE, 2.0),
    ("add_min", 2.0 + GROUP_SCALE, 2.0),
)
# decompress on the CPU (--cpu-cache-compute with --compress-cache): the same six ops into the
# compressed device's fp32 workspace (compression.py:175-180, group dim 2, no fp16 tensor): the stores
# and the in-place scale and min write 4 bytes per element
HOST_DECOMPRESS_KERNELS = (
    ("unpack_hi", 0.5, 0.5),
    ("store_hi", 0.5, 2.0),
    ("unpack_lo", 0.5, 0.5),
    ("store_lo", 0.5, 2.0),
    ("div_scale", FP32_BYTES + GROUP_SCALE, FP32_BYTES),
    ("add_min", FP32_BYTES + GROUP_SCALE, FP32_BYTES),
)
# compress (compression.py: TorchCompressedDevice.compress) on the GPU, one PyTorch op each, none fused:
# min and max over each group (values and int64 indices written), mx - mn, ``B / (mx - mn)`` (a
# reciprocal, then a multiply), data - mn, mul_, clamp_, round_, .to(uint8), the pack (every other
# byte shifted left by 4, or-ed with the rest), and the cat of scale and min: 13 kernels per tensor.
INDEX_BYTES = 8.0 / INT4.group_size  # an int64 index per group from torch.min / torch.max(dim=...)
COMPRESS_KERNELS = (
    ("group_min", 2.0, GROUP_SCALE + INDEX_BYTES),
    ("group_max", 2.0, GROUP_SCALE + INDEX_BYTES),
    ("range", 2 * GROUP_SCALE, GROUP_SCALE),
    ("reciprocal", GROUP_SCALE, GROUP_SCALE),
    ("scale", GROUP_SCALE, GROUP_SCALE),
    ("sub_min", 2.0 + GROUP_SCALE, 2.0),
    ("mul_scale", 2.0 + GROUP_SCALE, 2.0),
    ("clamp", 2.0, 2.0),
    ("round", 2.0, 2.0),
    ("to_uint8", 2.0, 1.0),
    ("pack_shift", 0.5, 0.5),
    ("pack_or", 1.0, 0.5),
    ("cat_scale_min", 2 * GROUP_SCALE, 2 * GROUP_SCALE),
)


def layer_kind(model: ModelSpec, j: int) -> str:
    last = 2 * model.layers + 1
    if j == 0:
        return "embed"
    if j == last:
        return "output"
    return "attention" if j % 2 == 1 else "mlp"


def _kernels(name: str, table, elems: float, tensors: int) -> tuple[Op, ...]:
    """``table``'s kernels over ``tensors`` tensors of ``elems`` elements in all: memory-bound
    elementwise ops (one FLOP per element), each paying its own launch."""
    per = elems / max(1, tensors)
    return tuple(
        Op(f"{name}.{k}", OpKind.ELEMENTWISE, 0, per, 0.0, per * r, per * w)
        for _ in range(max(1, tensors))
        for k, r, w in table
    )


def _dequant(name: str, elems: float, tensors: int) -> tuple[Op, ...]:
    """Group-wise 4-bit to fp16 on the GPU as FlexGen's decompress runs it: 13 B of memory traffic
    per element in six kernels per tensor (0.5625 B read and 2 B written if it were one fused kernel)."""
    return _kernels(name, DECOMPRESS_KERNELS, elems, tensors)


def _quant(name: str, elems: float, tensors: int) -> tuple[Op, ...]:
    return _kernels(name, COMPRESS_KERNELS, elems, tensors)


def _padded_tables(model: ModelSpec, kind: str) -> tuple[float, tuple[Op, ...]]:
    """The embedding tables' extra work when compressed: weights are grouped along dim 0 (rows) in
    64s, so a table whose rows are no multiple of 64 (OPT: 50272 tokens, 2050 positions) is stored
    and decompressed padded to whole groups, then cut back with ``.contiguous()``, one more copy
    (compression.py: decompress, the unpad branch). Matrices of the decoder layers divide evenly.
    Returns (padding elements decompressed, the unpad copies)."""
    g = INT4.group_size
    tables = embedding_tables(model).get({"embed": "input_embed", "output": "output_embed"}.get(kind, ""), ())
    pad, ops = 0.0, []
    for rows, cols in tables:
        if rows % g:
            pad += (-rows % g) * cols
            n = float(rows * cols)
            ops.append(Op("dequant_weights.unpad", OpKind.ELEMENTWISE, 0, n, 0.0, 2.0 * n, 2.0 * n))
    return pad, tuple(ops)


def host_copy_op(nbytes: float) -> Op:
    """``Tensor.pin_memory()`` on the host: read the pageable tensor, write a pinned copy.

    FlexGen's general_copy takes this relay for every unpinned CPU tensor bound for the GPU (the
    KV cache on the CPU is never pinned), in the issuing thread, before the DMA at the pinned rate."""
    return Op("pin_memory", OpKind.ELEMENTWISE, 0, 0.0, 0.0, nbytes, nbytes)


@dataclass(frozen=True)
class SubStepOps:
    """GPU ops of one sub-step; with CPU attention, ``gpu_pre`` / CPU op / ``gpu_post`` in sequence."""

    gpu_pre: tuple[Op, ...]
    cpu: tuple[Op, ...] = ()
    gpu_post: tuple[Op, ...] = ()
    to_cpu_bytes: float = 0.0  # q (fp32), k and v (fp16) of the new token to the CPU
    to_gpu_bytes: float = 0.0  # the attention output (fp32) back to the GPU


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
    home_slots: int = 0,
) -> SubStepOps:
    """Ops of one GPU batch through one scheduling layer.

    ``cpu_share`` = fraction of the KV cache off the GPU; with CPU attention in decode, that share
    of the attention runs on the CPU in fp32 over the gathered workspace and the rest on the GPU.
    ``home_slots`` = the token slots the KV cache is allocated for (``Workload.kv_slots``): what
    a compressed cache at home on the attention's device decompresses each decode step (0: not at
    home there, or not known: the kv_len slots load_cache copied).

    With CPU attention and --compress-cache the whole attention runs on the CPU whatever the cache's
    tier (load_cache path 0 to the CPU's compressed device, flex_opt.py:345-347): mha_gen decompresses
    K, then V, into the host's fp32 workspace (``HOST_DECOMPRESS_KERNELS``, host compute and DRAM
    traffic), attends there in fp32, and compresses the new K and V on the GPU after the output
    projection (pytorch_backend.py:403-423, 458-464).
    """
    wdeq: tuple[Op, ...] = ()
    if compress_weight:
        idx = {"embed": 0, "attention": 1, "mlp": 2, "output": 2 * model.layers + 1}[kind]
        packed = [n for n, m in scheduling_layer_tensors(model)[idx] if m]
        pad, unpad = _padded_tables(model, kind)
        wdeq = _dequant("dequant_weights", sum(packed) + pad, len(packed)) + unpad
    if kind == "embed":
        return SubStepOps((*wdeq, embedding_op(model, gbs, seq)))
    if kind == "output":
        return SubStepOps(wdeq + lm_head_ops(model, phase, gbs, seq, all_logits=phase == "prefill"))
    blocks = layer_blocks(model, phase, gbs, seq, kv_len)
    if kind == "mlp":
        return SubStepOps(wdeq + blocks.mlp)
    att = blocks.attention

    def kv_elems(slots: int) -> int:  # K and V of the batch over ``slots`` token slots
        return gbs * slots * 2 * kv_width(model)

    kvq: tuple[Op, ...] = _quant("compress_kv", kv_elems(seq), 2) if compress_cache else ()  # K and V
    if phase == "prefill" or not cpu_attention:
        kvdq: tuple[Op, ...] = ()
        if compress_cache and phase == "decode":
            # load_cache copies prompt_len + i = kv_len token slots (the new token's slot included,
            # flex_opt.py: SelfAttention.load_cache path 0) and mha_gen decompresses all it got; a
            # cache on the GPU is not copied (smart_copy returns the home tensor), so mha_gen
            # decompresses all of it, then slices (pytorch_backend.py: mha_gen, decompress(k_cache))
            slots = home_slots if home_slots and cpu_share <= 0 else kv_len
            kvdq = _dequant("dequant_kv", kv_elems(slots), 2)
        return SubStepOps(wdeq + kvdq + att + kvq)
    split = next(i for i, o in enumerate(att) if o.kind == OpKind.ATTENTION)
    gpu_att = att[split]
    pre = wdeq + att[:split]
    host_dq: tuple[Op, ...] = ()
    if compress_cache:  # all of it on the CPU, decompressed there first
        cpu_share = 1.0
        host_dq = _kernels("dequant_kv", HOST_DECOMPRESS_KERNELS, kv_elems(home_slots or kv_len), 2)
    if cpu_share < 1.0:
        pre = (*pre, _scale(gpu_att, 1.0 - cpu_share))
    cpu_op = _cpu_attention(model, gpu_att, gbs, kv_len, cpu_share)
    h_q, h_kv = q_width(model), kv_width(model)
    # mha_gen: ``q.float().cpu()`` (fp32), k_new and v_new copied as fp16 into the fp32 workspace
    # (torch stages a cross-dtype device-to-host copy in the source dtype), the output back as fp32
    # (``.cuda().half()``): all direct copies to or from pageable memory
    return SubStepOps(
        gpu_pre=pre,
        cpu=(*host_dq, cpu_op),
        gpu_post=att[split + 1 :] + kvq,
        to_cpu_bytes=gbs * (h_q * FP32_BYTES + 2 * h_kv * FP16.bytes_per_element),
        to_gpu_bytes=gbs * h_q * FP32_BYTES,
    )


def _scale(op: Op, share: float) -> Op:
    return dataclasses.replace(
        op, flops=op.flops * share, kv_read_bytes=op.kv_read_bytes * share, kv_write_bytes=0.0
    )


def _cpu_attention(model: ModelSpec, op: Op, gbs: int, kv_len: int, share: float) -> Op:
    """fp32 decode attention on the CPU over ``share`` of the KV (pytorch_backend.py: mha_gen).

    Reads the fp32 K and V workspace, writes and reads back the fp32 score matrix.
    """
    kv_fp32 = gbs * kv_len * 2 * kv_width(model) * FP32_BYTES * share
    scores = gbs * model.heads * kv_len * FP32_BYTES * 2 * share
    q = gbs * q_width(model) * FP32_BYTES
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


# Host-DRAM bytes per byte of fp16 KV a copy thread reads from disk into the fp32 workspace, beside
# the read's own page-cache write: ``dst_data.copy_(src_data)`` (pytorch_backend.py:904) reads the
# memmap's pages back (2 B per element) and writes fp32 (4 B), kv_gather_op's bytes per fp16 byte.
KV_CONVERT = (2.0 + FP32_BYTES) / 2.0


# Host-DRAM bytes per packed byte (a 4-bit tensor's uint8 data) a copy thread moves as its disk read
# lands, beside the read's own page-cache write: the relay is fp16 (pytorch_backend.py:882), so
# ``tmp_cpu_buf.copy_(src_data)`` (:899-901) reads the memmap's byte back (1 B) and writes it as fp16
# (2 B): a conversion by value, streamed as the pages arrive.
PACKED_RELAY = 1.0 + 2.0


# Host-DRAM bytes per byte of fp16 data (uncompressed weights, hidden states, KV; a 4-bit tensor's
# scales) a copy thread moves as its disk read lands, beside the read's own page-cache write: the
# relay is fp16 and so is the data, so ``tmp_cpu_buf.copy_(src_data)`` (pytorch_backend.py:899-901)
# is a memcpy from the memmap's pages into the pinned relay, 1 B read back and 1 B written. It is
# memory-bound: ``validate.packed_hop``'s ``fp16_memcpy_to_pinned_s`` is 2.28 ms per 128 MiB at 16
# threads on the H200 host (59 GB/s, validate/results/h200/packed_hop.json), 23 ms on 1 thread
# (5.8 GB/s), at or above every disk's rate, so its bytes at the read's pace are its whole cost.
PLAIN_RELAY = 1.0 + 1.0


# Cycles per element of PyTorch's CPU dtype conversions on one thread (TensorIterator copy kernels;
# the intra-op pool runs them on the host's cores, torch's default threads = its physical cores). A
# part measured on one host, carried to another by cores x clock (as ``kernel_cycles``).
# measured: ``python -m validate.packed_hop --mib 128 --threads 1`` (d70be3c), torch 2.13.0+cpu, AMD
# EPYC at 2.596 GHz (the development VM): fp16 -> uint8 into a fresh pageable tensor (its first-touch
# page faults included) 0.1346 s per 2**27 elements -> 2.60 cycles. Grade: measured (one host; not the
# T4 VM's).
UNRELAY_CYCLES = 2.60
# ... and uint8 -> fp16 into the pinned relay as the disk read lands (``tmp_cpu_buf.copy_(src_data)``,
# its bytes ``PACKED_RELAY``), 0.0832 s -> 1.61 cycles. Over the cores it is under the read on every
# shipped rig (hexgen-homogeneous: 0.022 ns per packed byte vs its 16 GB/s disk's 0.0625); what of it
# outlasts a faster read is left when the read lands (``packed_unrelay_cost``'s ``read_bps``). Grade:
# measured, one part on one host (the same run as above; its relay pageable, the VM has no CUDA), not
# fitted to a whole. Checked on the H200 host (validate/results/h200/packed_hop.json, a pinned relay):
# 1 thread 0.1496 s per 2**27 elements measured, 0.1029 s carried at 2.1 GHz (2.34 cycles there, so
# per element it is host-dependent, unlike ``UNRELAY_CYCLES``' +3.8 %); 16 threads 0.0208 s measured,
# 0.0129 s on its 8 physical cores as session 17 inferred them (1.6x): a lower bound on both counts.
RELAY_CYCLES = 1.61


@lru_cache(maxsize=4096)
def packed_unrelay_op(nbytes: float) -> Op:
    """The copy thread's blocking ``dst_data.copy_(tmp_cpu_buf)`` of a packed part (fp16 relay into a
    uint8 GPU tensor): a cross-dtype copy, which PyTorch converts on the CPU when blocking
    (aten/src/ATen/native/cuda/Copy.cu, ``copy_kernel_cuda``: ``conversion_device = non_blocking ?
    kCUDA : kCPU``, then ``src.to(dst.dtype)``) into a new pageable uint8 temporary before the copy
    over the link: 2 B of fp16 read and 1 B written per packed byte, one element each, all of it before
    the hop starts (the temporary is whole before the memcpy is issued)."""
    return Op("relay_to_uint8", OpKind.ELEMENTWISE, 0, nbytes, 0.0, 2.0 * nbytes, nbytes)


def packed_unrelay_cost(cpu: ComputeDevice, nbytes: float, read_bps: float | None = None) -> OpCost:
    """``packed_unrelay_op`` on ``cpu``: its bytes at the host's memory rate (``op_cost``), its compute
    ``UNRELAY_CYCLES`` per element over the host's cores at its clock, the longer of the two. The
    conversion is compute-bound on every host measured (validate.packed_hop: ~1 ns per element on one
    thread), far from a memory-bound elementwise op's rate. ``read_bps``: the rate of the disk read
    that fed the relay, whose conversion into it (``RELAY_CYCLES``) ran as the read landed: what of
    its compute the read did not hide runs first (none on the shipped rigs; None: not charged)."""
    cost = op_cost(cpu, packed_unrelay_op(nbytes))
    if not (cpu.cores and cpu.clock_hz):
        return cost
    compute = nbytes * UNRELAY_CYCLES / (cpu.cores * cpu.clock_hz)
    if read_bps is not None:
        relay_left = nbytes * RELAY_CYCLES / (cpu.cores * cpu.clock_hz) - nbytes / read_bps
        compute += max(0.0, relay_left)
    memory_bound = cost.overhead_s + cost.memory_s if cost.memory_s > compute else 0.0
    return replace(
        cost,
        compute_s=compute,
        time_s=cost.overhead_s + max(compute, cost.memory_s),
        memory_bound_s=memory_bound,
    )


@lru_cache(maxsize=4096)
def kv_gather_op(model: ModelSpec, gbs: int, tokens: int, share: float) -> Op:
    """Copy ``share`` of a batch's fp16 KV into the fp32 CPU workspace (load_cache, path 1)."""
    elems = gbs * tokens * 2 * kv_width(model) * share
    return Op("kv_gather", OpKind.ELEMENTWISE, 0, elems, 0.0, elems * 2.0, elems * FP32_BYTES)
