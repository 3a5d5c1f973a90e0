"""Read measured GPU kernel tables in Vidur's format (microsoft/vidur, MIT; ``data/profiling/``).

A profiles folder holds ``compute/<gpu>/<org>/<model>/mlp.csv`` (one decoder layer's ops, per
``num_tokens`` and ``num_tensor_parallel_workers``, times in ms; columns ``time_stats.<op>.median``
and the model shape ``n_head, n_kv_head, n_embd, n_expanded_embd, use_gated_mlp``) and
``network/<node>/all_reduce.csv`` (NCCL all-reduce per ``size`` in fp16 elements and
``num_workers``). Each measured kernel becomes a ``KernelSample``: the hetsim ``Op`` with the
kernel's FLOPs and bytes (fused QKV and fused gate+up are one GEMM each, as the engines run them)
and its measured seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hetsim.costs.kernel_tables import ELEMENTWISE, MATMULS, SHAPE, kernel_op
from hetsim.errors import InputError
from hetsim.models.spec import FP16, Op


@dataclass(frozen=True)
class KernelSample:
    gpu: str  # folder name, e.g. a100
    model: str  # org/model folder, e.g. meta-llama/Llama-2-7b-hf
    op: str  # Vidur's op name
    tp: int
    tokens: int
    kernel: Op
    seconds: float
    source: str  # the file it came from, relative to the profiles folder


@dataclass(frozen=True)
class CollectiveSample:
    node: str  # e.g. a100_dgx
    ranks: int
    nbytes: float
    seconds: float
    source: str


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", source=str(path)) from None


def compute_files(root: Path, gpu: str) -> list[Path]:
    folder = root / "compute" / gpu
    files = sorted(folder.glob("*/*/mlp.csv"))
    if not files:
        raise InputError(f"no compute/{gpu}/<org>/<model>/mlp.csv tables", source=str(root), field="--gpu")
    return files


def read_kernels(root: Path, gpu: str) -> list[KernelSample]:
    """Every measured per-layer kernel of ``gpu`` (median times)."""
    out: list[KernelSample] = []
    for path in compute_files(root, gpu):
        df = _read(path)
        rel = str(path.relative_to(root))
        need = [*SHAPE, "num_tokens", "num_tensor_parallel_workers"]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise InputError(f"missing columns {', '.join(missing)}", source=str(path))
        model = str(path.parent.relative_to(root / "compute" / gpu))
        ops = [o for o in (*MATMULS, *ELEMENTWISE) if f"time_stats.{o}.median" in df.columns]
        for row in df.to_dict("records"):
            tp, tokens = int(row["num_tensor_parallel_workers"]), int(row["num_tokens"])
            for op in ops:
                ms = row[f"time_stats.{op}.median"]
                if pd.isna(ms) or ms <= 0:
                    continue
                out.append(
                    KernelSample(gpu, model, op, tp, tokens, kernel_op(op, tokens, tp, row), ms * 1e-3, rel)
                )
    return out


def read_allreduce(root: Path, node: str) -> list[CollectiveSample]:
    """NCCL all-reduce medians inside one node (``devices_per_node == num_workers`` where given)."""
    return read_collective(root, node, "all_reduce")


def read_collective(root: Path, node: str, collective: str) -> list[CollectiveSample]:
    """NCCL ``collective`` (``all_reduce``, ``send_recv``) medians inside one node
    (``devices_per_node == num_workers`` where given); bytes are fp16 elements x 2."""
    path = root / "network" / node / f"{collective}.csv"
    if not path.is_file():
        raise InputError(f"no such {collective} table", source=str(path))
    df = _read(path)
    col = f"time_stats.{collective}.median"
    missing = [c for c in ("num_workers", "size", col) if c not in df.columns]
    if missing:
        raise InputError(f"missing columns {', '.join(missing)}", source=str(path))
    if "devices_per_node" in df.columns:
        df = df[df.devices_per_node == df.num_workers]
    rel = str(path.relative_to(root))
    return [
        CollectiveSample(node, int(r["num_workers"]), 2.0 * r["size"], r[col] * 1e-3, rel)
        for r in df.to_dict("records")
    ]


@dataclass(frozen=True)
class AttentionSample:
    gpu: str
    model: str
    phase: str  # prefill or decode
    batch: int
    seq_len: int  # query tokens per sequence
    kv_len: int  # context after the step
    tp: int
    kernel: Op
    seconds: float
    source: str


def attention_files(root: Path, gpu: str) -> list[Path]:
    """``attention*/<gpu>/<org>/<model>/attention.csv`` (Vidur's name, or a partial copy of it)."""
    return sorted(
        p for folder in sorted(root.glob("attention*")) for p in folder.glob(f"{gpu}/*/*/attention.csv")
    )


def read_attention(root: Path, gpu: str) -> list[AttentionSample]:
    """Measured attention medians for models hetsim knows (the op needs the model's heads and KV
    layout); prefill rows are fresh or chunked prompts, decode rows a batch over a KV context."""
    from hetsim.errors import InputError as _InputError
    from hetsim.models import get_model
    from hetsim.models.layer_ops import attention_op

    out: list[AttentionSample] = []
    for path in attention_files(root, gpu):
        name = path.parent.name.lower()
        try:
            spec = get_model(name)
        except _InputError:
            continue  # a model hetsim has no shape for
        rel = str(path.relative_to(root))
        df = _read(path)
        for r in df.to_dict("records"):
            tp = int(r["num_tensor_parallel_workers"])
            if bool(r["is_prefill"]):
                ms, phase = r.get("time_stats.attn_prefill.median"), "prefill"
                batch, seq = 1, int(r["prefill_chunk_size"])
                kv = seq + int(r["kv_cache_size"])
            else:
                ms, phase = r.get("time_stats.attn_decode.median"), "decode"
                batch, seq, kv = int(r["batch_size"]), 1, int(r["kv_cache_size"])
            if ms is None or pd.isna(ms) or ms <= 0 or tp != 1:
                continue
            op = attention_op(spec, phase, batch, seq, kv, FP16, FP16)
            out.append(AttentionSample(gpu, name, phase, batch, seq, kv, tp, op, ms * 1e-3, rel))
    return out
