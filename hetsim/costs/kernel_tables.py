"""Measured kernel times, interpolated over tokens inside the measured range.

A GPU profile may point at a folder of per-layer kernel tables in Vidur's format
(``<org>/<model>/mlp.csv`` under ``compute/<gpu>``; microsoft/vidur, MIT). A GEMM whose shape
(fused QKV, output projection, fused gate+up, down projection; hetsim.models.fusion) was measured
then costs the measured median at its token count, interpolated linearly between measured counts.
Outside the measured range, or for shapes not measured, the fitted roofline (``op_cost``) applies.
``kernel_op`` is also what calibration fits against: one home for a measured kernel's FLOPs and bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from hetsim.models.layer_ops import RESIDUAL_FLOPS, RMSNORM_FLOPS, SWIGLU_FLOPS, elementwise_op, matmul_op
from hetsim.models.spec import FP16, Op, OpKind

if TYPE_CHECKING:  # numpy costs ~0.1-0.2 s to import; only rigs with measured kernel tables use it
    import numpy as np

MATMULS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
SHAPE = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp")
ROPE_FLOPS = 3.0  # per q/k element: two multiplies and an add
# hetsim's (fused) GEMM names -> Vidur's kernel names
VIDUR_GEMMS = {
    "qkv_proj": "attn_pre_proj",
    "out_proj": "attn_post_proj",
    "gate_up_proj": "mlp_up_proj",
    "down_proj": "mlp_down_proj",
}


def kernel_op(op: str, tokens: int, tp: int, shape: Mapping[str, float]) -> Op:
    """The hetsim op of one measured kernel on one of ``tp`` ranks (fp16 weights and activations)."""
    heads, kv_heads, h, ffn = (int(shape[k]) for k in SHAPE[:4])
    gated = bool(shape["use_gated_mlp"])
    hd = h // heads
    q = heads // tp * hd
    kv = max(1, kv_heads // tp) * hd
    f = ffn // tp
    t = float(tokens)
    if op == "attn_pre_proj":
        return matmul_op(op, 0, t, h, q + 2 * kv, FP16, FP16, bias=False)
    if op == "attn_post_proj":
        return matmul_op(op, 0, t, q, h, FP16, FP16, bias=False)
    if op == "mlp_up_proj":
        return matmul_op(op, 0, t, h, f * (2 if gated else 1), FP16, FP16, bias=False)
    if op == "mlp_down_proj":
        return matmul_op(op, 0, t, f, h, FP16, FP16, bias=False)
    if op in ("input_layernorm", "post_attention_layernorm"):
        return elementwise_op(op, 0, t * h, RMSNORM_FLOPS, FP16, weight=h * FP16.bytes_per_element)
    if op == "add":
        return elementwise_op(op, 0, t * h, RESIDUAL_FLOPS, FP16, n_in=2)
    if op == "mlp_act":
        return elementwise_op(op, 0, t * f, SWIGLU_FLOPS, FP16, n_in=2 if gated else 1)
    if op == "attn_rope":
        return elementwise_op(op, 0, t * (q + kv), ROPE_FLOPS, FP16)
    raise ValueError(f"unknown kernel {op!r}")


def measured_kernel(op_name: str) -> str | None:
    """The Vidur kernel whose curve may time a matmul named ``op_name`` (None: never measured): the
    only part of an op's name that its cost reads."""
    return VIDUR_GEMMS.get(op_name)


def _key(kernel: str, weight_bytes: float, weight_row_bytes: float) -> tuple[str, int, int]:
    return kernel, round(weight_bytes), round(weight_row_bytes)


@dataclass(frozen=True)
class KernelTables:
    """(Vidur kernel, weight bytes, weight row bytes) -> measured (tokens, seconds), tokens ascending."""

    curves: Mapping[tuple[str, int, int], tuple[np.ndarray, np.ndarray]]

    def seconds(self, op: Op) -> float | None:
        """The measured time of ``op`` at its token count, or None (not measured, or outside)."""
        kernel = measured_kernel(op.name)
        if kernel is None or op.kind != OpKind.MATMUL or op.weight_row_bytes <= 0:
            return None
        curve = self.curves.get(_key(kernel, op.weight_bytes, op.weight_row_bytes))
        if curve is None:
            return None
        tokens, secs = curve
        if not tokens[0] <= op.rows <= tokens[-1]:
            return None
        import numpy as np  # loaded by ``load_tables`` already: a dictionary look-up

        return float(np.interp(op.rows, tokens, secs))


@lru_cache(maxsize=8)
def load_tables(folder: str) -> KernelTables:
    """Every GEMM curve in ``folder/<org>/<model>/mlp.csv`` (median column), per measured shape."""
    import numpy as np
    import pandas as pd  # ~0.4 s to import; only rigs with measured kernel tables need it

    points: dict[tuple[str, int, int], dict[int, list[float]]] = {}
    for path in sorted(Path(folder).glob("*/*/mlp.csv")):
        df = pd.read_csv(path)
        for row in df.to_dict("records"):
            tp, tokens = int(row["num_tensor_parallel_workers"]), int(row["num_tokens"])
            for kernel in MATMULS:
                ms = row.get(f"time_stats.{kernel}.median")
                if ms is None or pd.isna(ms) or ms <= 0:
                    continue
                op = kernel_op(kernel, tokens, tp, row)
                key = _key(kernel, op.weight_bytes, op.weight_row_bytes)
                points.setdefault(key, {}).setdefault(tokens, []).append(ms * 1e-3)
    curves = {}
    for key, by_tokens in points.items():
        ts = sorted(by_tokens)
        curves[key] = (np.array(ts, dtype=float), np.array([np.median(by_tokens[t]) for t in ts]))
    return KernelTables(curves)
