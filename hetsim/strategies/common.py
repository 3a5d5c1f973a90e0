"""Pieces several strategies share: tensor-parallel sharding of ops, per-step op blocks, memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from hetsim.models.ops import decoder_layer_ops, embedding_op, lm_head_ops
from hetsim.models.spec import DTYPES, DType, ModelSpec, Op, OpKind, Phase
from hetsim.models.weights import (
    embedding_bytes,
    kv_bytes_per_token_layer,
    layer_weight_bytes,
    lm_head_bytes,
)
from hetsim.workload import Workload

# Megatron-style 1-D tensor parallelism: column-parallel modules read the full input and write a
# slice; row-parallel modules read a slice and write full-size partial sums (then all-reduce).
COLUMN_PARALLEL = frozenset({"q_proj", "k_proj", "v_proj", "fc1", "gate_proj", "up_proj", "lm_head"})
ROW_PARALLEL = frozenset({"out_proj", "fc2", "down_proj"})
ATTENTION_MODULES = ("norm1", "q_proj", "k_proj", "v_proj", "attention", "out_proj", "residual1")


def dtype(name: str) -> DType:
    return DTYPES[name]


@dataclass(frozen=True)
class Step:
    """One forward step of the offline batch: the prefill, or decode step ``index`` (1-based)."""

    phase: Phase
    index: int
    seq_len: int
    kv_len: int


def steps(workload: Workload) -> Iterator[Step]:
    """Prefill (which yields the first token), then ``gen_len - 1`` decode steps."""
    yield Step("prefill", 0, workload.prompt_len, workload.prompt_len)
    for i in range(1, workload.gen_len):
        yield Step("decode", i, 1, workload.prompt_len + i)


def shard(op: Op, parts: int, kv_heads: int) -> Op:
    """The share of ``op`` one of ``parts`` tensor-parallel ranks runs.

    Norms, residual adds and the embedding gather are replicated (every rank does them in full).
    Attention splits by head; a grouped KV head is replicated when ranks outnumber KV heads.
    """
    if parts == 1:
        return op
    p = float(parts)
    if op.kind == OpKind.ATTENTION:
        kv_share = max(1.0 / p, 1.0 / kv_heads)
        return dataclasses.replace(
            op,
            flops=op.flops / p,
            act_in_bytes=op.act_in_bytes / p,
            act_out_bytes=op.act_out_bytes / p,
            kv_read_bytes=op.kv_read_bytes * kv_share,
            kv_write_bytes=op.kv_write_bytes * kv_share,
        )
    if op.module in COLUMN_PARALLEL or op.module in ROW_PARALLEL:
        column = op.module in COLUMN_PARALLEL
        return dataclasses.replace(
            op,
            flops=op.flops / p,
            weight_bytes=op.weight_bytes / p,
            act_in_bytes=op.act_in_bytes if column else op.act_in_bytes / p,
            act_out_bytes=op.act_out_bytes / p if column else op.act_out_bytes,
            weight_row_bytes=op.weight_row_bytes / p if column else op.weight_row_bytes,
        )
    if op.name == "act":  # the MLP activation runs on the rank's slice of the inner dimension
        return dataclasses.replace(
            op, flops=op.flops / p, act_in_bytes=op.act_in_bytes / p, act_out_bytes=op.act_out_bytes / p
        )
    return op


@dataclass(frozen=True)
class LayerBlocks:
    """One decoder layer split where tensor parallelism all-reduces: attention half, MLP half."""

    attention: tuple[Op, ...]
    mlp: tuple[Op, ...]

    @property
    def whole(self) -> tuple[Op, ...]:
        return self.attention + self.mlp


@lru_cache(maxsize=8192)
def layer_blocks(
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    tp: int = 1,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
    act_dtype: str = "fp16",
) -> LayerBlocks:
    ops = decoder_layer_ops(
        model, phase, batch, seq_len, kv_len, dtype(weight_dtype), dtype(kv_dtype), dtype(act_dtype)
    )
    sharded = tuple(shard(o, tp, model.kv_heads) for o in ops)
    split = next(i for i, o in enumerate(sharded) if o.name == "residual1") + 1
    return LayerBlocks(sharded[:split], sharded[split:])


@lru_cache(maxsize=4096)
def head_ops(
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    tp: int = 1,
    weight_dtype: str = "fp16",
    act_dtype: str = "fp16",
) -> tuple[Op, ...]:
    """Final norm and LM head, vocabulary-split over ``tp`` ranks."""
    ops = lm_head_ops(model, phase, batch, seq_len, dtype(weight_dtype), dtype(act_dtype))
    return tuple(shard(o, tp, model.kv_heads) for o in ops)


@lru_cache(maxsize=4096)
def embed_ops(
    model: ModelSpec, batch: int, seq_len: int, weight_dtype: str = "fp16", act_dtype: str = "fp16"
) -> tuple[Op, ...]:
    return (embedding_op(model, batch, seq_len, dtype(weight_dtype), dtype(act_dtype)),)


# ---- memory -------------------------------------------------------------------------------------
def layer_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    return layer_weight_bytes(model, dtype(weight_dtype))


def embed_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    return embedding_bytes(model, dtype(weight_dtype))


def head_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    """LM head and final norm; zero extra when tied to the embedding table."""
    return 0.0 if model.tied_embeddings else lm_head_bytes(model, dtype(weight_dtype))


def kv_cache_bytes(
    model: ModelSpec, sequences: int, tokens: int, layers: int, kv_dtype: str = "fp16"
) -> float:
    """KV cache of ``sequences`` x ``tokens`` over ``layers`` layers (pre-allocated for the full context)."""
    return sequences * tokens * layers * kv_bytes_per_token_layer(model, dtype(kv_dtype))


def activation_workspace(model: ModelSpec, batch: int, seq_len: int, act_dtype: str = "fp16") -> float:
    """Peak transient activations of one layer: the widest intermediate (MLP inner) plus the residual."""
    inner = model.intermediate * (2 if model.gated_mlp else 1)
    return batch * seq_len * (inner + 2 * model.hidden) * dtype(act_dtype).bytes_per_element


def hidden_bytes(model: ModelSpec, batch: int, seq_len: int, act_dtype: str = "fp16") -> float:
    """Hidden states handed from one layer (or pipeline stage) to the next."""
    return batch * seq_len * model.hidden * dtype(act_dtype).bytes_per_element
