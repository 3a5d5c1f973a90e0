"""Where tensor parallelism cuts a decoder: per-rank shares of ops, and a layer's op blocks.

Megatron-style 1-D tensor parallelism (Shoeybi et al., 2019, arXiv:1909.08053): column-parallel
modules read the full input and write a slice; row-parallel modules read a slice and write
full-size partial sums, which an all-reduce sums. Every strategy and planner takes its op lists
from here, so a tensor-parallel rank runs the same ops in the engine and in a planner's cost table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from hetsim.models.layer_ops import decoder_layer_ops, embedding_op, lm_head_ops
from hetsim.models.spec import DTYPES, ModelSpec, Op, OpKind, Phase, op_with
from hetsim.models.weights import layer_weight_tensors, tensor_bytes

COLUMN_PARALLEL = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "fc1",
        "gate_proj",
        "up_proj",
        "shared_gate_proj",
        "shared_up_proj",
        "lm_head",
        "q_b_proj",  # MLA: the up-projections to heads split by head like q/k/v
        "kv_b_proj",
    }
)
ROW_PARALLEL = frozenset({"out_proj", "fc2", "down_proj", "shared_down_proj"})
# MLA's q_a/kv_a (low-rank down-projections from the hidden state) and their norms are replicated; the
# absorbed decode products work head by head on head-split inputs, so everything of theirs splits.
HEAD_PARALLEL = frozenset({"q_absorb", "out_absorb"})
TP_DEGREES = (1, 2, 4, 8)  # tensor-parallel group sizes inside one machine


def splits_heads(model: ModelSpec, ranks: int) -> bool:
    """Whether ``ranks`` tensor-parallel ranks each get whole attention heads (attention splits by
    head): the one rule the searches (GPU groups, CPU sockets) and a plan file's check keep."""
    return model.heads % ranks == 0


def tp_degrees(model: ModelSpec, gpus: int) -> list[int]:
    """TP degrees a group of at most ``gpus`` devices can use: attention heads must split evenly."""
    return [t for t in TP_DEGREES if t <= gpus and splits_heads(model, t)]


def kv_share(tp: int, kv_heads: int) -> float:
    """A rank's share of the KV cache: KV heads split over ranks, replicated past their number."""
    return max(1.0 / tp, 1.0 / kv_heads)


def shard(op: Op, parts: int, kv_heads: int) -> Op:
    """The share of ``op`` one of ``parts`` tensor-parallel ranks runs.

    Norms, residual adds and the embedding gather are replicated (every rank does them in full).
    Attention splits by head; a grouped KV head is replicated when ranks outnumber KV heads.
    """
    if parts == 1:
        return op
    p = float(parts)
    if op.kind == OpKind.ATTENTION:
        share = kv_share(parts, kv_heads)
        return op_with(
            op,
            flops=op.flops / p,
            act_in_bytes=op.act_in_bytes / p,
            act_out_bytes=op.act_out_bytes / p,
            kv_read_bytes=op.kv_read_bytes * share,
            kv_write_bytes=op.kv_write_bytes * share,
            dequant_ops=op.dequant_ops * share,
        )
    if op.name in HEAD_PARALLEL:
        return op_with(
            op,
            flops=op.flops / p,
            weight_bytes=op.weight_bytes / p,
            act_in_bytes=op.act_in_bytes / p,
            act_out_bytes=op.act_out_bytes / p,
            dequant_ops=op.dequant_ops / p,
        )
    if op.module in COLUMN_PARALLEL or op.module in ROW_PARALLEL:
        column = op.module in COLUMN_PARALLEL
        return op_with(
            op,
            flops=op.flops / p,
            weight_bytes=op.weight_bytes / p,
            act_in_bytes=op.act_in_bytes if column else op.act_in_bytes / p,
            act_out_bytes=op.act_out_bytes / p if column else op.act_out_bytes,
            weight_row_bytes=op.weight_row_bytes / p if column else op.weight_row_bytes,
            dequant_ops=op.dequant_ops / p,
        )
    if op.name in ("act", "shared_act"):  # the MLP activation runs on the rank's slice of the inner dimension
        return op_with(
            op, flops=op.flops / p, act_in_bytes=op.act_in_bytes / p, act_out_bytes=op.act_out_bytes / p
        )
    return op


@lru_cache(maxsize=1024)
def rank_layer_bytes(model: ModelSpec, weight_dtype: str = "fp16", tp: int = 1) -> float:
    """Weight bytes of one typical decoder layer that one of ``tp`` ranks holds: the tensors of the
    column- and row-parallel modules split as ``shard`` splits their ops, every other tensor (norms,
    the router, MLA's q_a/kv_a down-projections) held in full on each rank."""
    dtype = DTYPES[weight_dtype]
    split = COLUMN_PARALLEL | ROW_PARALLEL
    return sum(tensor_bytes(t, dtype) / (tp if t.module in split else 1) for t in layer_weight_tensors(model))


@dataclass(frozen=True)
class LayerBlocks:
    """One decoder layer split where tensor parallelism all-reduces: attention half, MLP half."""

    attention: tuple[Op, ...]
    mlp: tuple[Op, ...]

    @cached_property
    def whole(self) -> tuple[Op, ...]:
        # kept: a schedule asks each step for the same (cached) blocks' whole layer, and the engine's
        # cost look-up by identity then hits (a new tuple each time hashed all its ops)
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
        model, phase, batch, seq_len, kv_len, DTYPES[weight_dtype], DTYPES[kv_dtype], DTYPES[act_dtype]
    )
    sharded = tuple(shard(o, tp, model.kv_groups) for o in ops)
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
    ops = lm_head_ops(model, phase, batch, seq_len, DTYPES[weight_dtype], DTYPES[act_dtype])
    return tuple(shard(o, tp, model.kv_groups) for o in ops)


@lru_cache(maxsize=4096)
def embed_ops(
    model: ModelSpec, batch: int, seq_len: int, weight_dtype: str = "fp16", act_dtype: str = "fp16"
) -> tuple[Op, ...]:
    return (embedding_op(model, batch, seq_len, DTYPES[weight_dtype], DTYPES[act_dtype]),)
