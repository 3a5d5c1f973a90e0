"""The kernels an inference engine runs for a block of layer ops (vLLM, TensorRT-LLM, SGLang).

hetsim's layer ops are the model's modules, one op each. Serving engines fuse them: one GEMM for
q, k and v (``QKVParallelLinear``), one for gate and up (``MergedColumnParallelLinear``), and the
residual add into the following RMSNorm (``fused_add_rms_norm``). A fused kernel does the same
FLOPs and reads the weights once each, but reads its input activation once and pays one launch.

``fuse`` merges, within one block (the ops between two all-reduces):

- adjacent matmuls that read the same input: q/k/v_proj -> ``qkv_proj``, gate/up_proj ->
  ``gate_up_proj``;
- a residual add with the block's norm over the same tokens -> ``add_norm`` (reads residual and
  input, writes both: vLLM's in-place kernel). Within a layer the add after attention pairs with
  the MLP's norm and the add after the MLP with the next layer's norm; merging each block's own pair
  costs the same, so blocks stay self-contained.

Everything else passes through unchanged (attention, activations, the LM head, MoE experts).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from hetsim.models.spec import Op, OpKind

FUSED_MATMULS = {
    ("q_proj", "k_proj", "v_proj"): "qkv_proj",
    ("gate_proj", "up_proj"): "gate_up_proj",
}


def _merge_matmuls(ops: tuple[Op, ...], name: str) -> Op:
    first = ops[0]
    return dataclasses.replace(
        first,
        name=name,
        module=name,
        flops=sum(o.flops for o in ops),
        weight_bytes=sum(o.weight_bytes for o in ops),
        act_in_bytes=first.act_in_bytes,  # the shared input is read once
        act_out_bytes=sum(o.act_out_bytes for o in ops),
        weight_row_bytes=sum(o.weight_row_bytes for o in ops),
        dequant_ops=sum(o.dequant_ops for o in ops),
    )


def _add_norm(norm: Op, residual: Op) -> Op:
    return dataclasses.replace(
        norm,
        name="add_norm",
        flops=norm.flops + residual.flops,
        act_in_bytes=residual.act_in_bytes,  # residual stream and the sublayer's output
        act_out_bytes=2 * norm.act_out_bytes,  # the updated residual and the normalised input
    )


@lru_cache(maxsize=4096)
def fuse(ops: tuple[Op, ...]) -> tuple[Op, ...]:
    out: list[Op] = []
    i = 0
    while i < len(ops):
        for names, fused in FUSED_MATMULS.items():
            group = ops[i : i + len(names)]
            if tuple(o.name for o in group) == names and all(o.kind == OpKind.MATMUL for o in group):
                out.append(_merge_matmuls(group, fused))
                i += len(names)
                break
        else:
            out.append(ops[i])
            i += 1
    norms = [k for k, o in enumerate(out) if o.name.startswith("norm") and o.kind == OpKind.ELEMENTWISE]
    residuals = [k for k, o in enumerate(out) if o.name.startswith("residual")]
    if len(norms) == 1 and len(residuals) == 1:
        n, r = out[norms[0]], out[residuals[0]]
        if n.act_out_bytes == r.act_out_bytes:  # same tokens x hidden
            out[norms[0]] = _add_norm(n, r)
            del out[residuals[0]]
    return tuple(out)
