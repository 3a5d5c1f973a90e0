"""Bytes a deployment holds: weights by part, the KV cache, activations in flight (by dtype name)."""

from __future__ import annotations

from hetsim.models.spec import DTYPES, ModelSpec
from hetsim.models.weights import (
    embedding_bytes,
    kv_bytes_per_token_layer,
    layer_weight_bytes,
    lm_head_bytes,
)


def layer_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    return layer_weight_bytes(model, DTYPES[weight_dtype])


def embed_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    return embedding_bytes(model, DTYPES[weight_dtype])


def head_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    """LM head and final norm; zero extra when tied to the embedding table."""
    return 0.0 if model.tied_embeddings else lm_head_bytes(model, DTYPES[weight_dtype])


def kv_cache_bytes(
    model: ModelSpec, sequences: int, tokens: int, layers: int, kv_dtype: str = "fp16"
) -> float:
    """KV cache of ``sequences`` x ``tokens`` over ``layers`` layers (pre-allocated for the full context).

    Sliding-window layers hold only the window's tokens (a ring buffer, as vLLM and transformers'
    hybrid cache allocate them); ``layers`` is counted at the model's mean, exact for the whole model
    and for any run of layers of a regular pattern (Gemma-2's alternation) up to one layer's share."""
    return sequences * model.kv_tokens(tokens) * layers * kv_bytes_per_token_layer(model, DTYPES[kv_dtype])


def activation_workspace(model: ModelSpec, batch: int, seq_len: int, act_dtype: str = "fp16") -> float:
    """Peak transient activations of one layer: the widest intermediate (MLP inner) plus the residual."""
    return rank_activation_workspace(model, batch, seq_len, 1, act_dtype)


def rank_activation_workspace(
    model: ModelSpec, batch: int, seq_len: int, tp: int, act_dtype: str = "fp16"
) -> float:
    """``activation_workspace`` on one of ``tp`` tensor-parallel ranks (Megatron-style).

    Only the column-parallel outputs are split: the MLP up/gate projections (the widest intermediate)
    and the attention heads. The residual stream -- a layer's input and output, 2 x hidden per token --
    and the all-reduce that sums the row-parallel outputs into it are whole on every rank (Shoeybi et
    al., Megatron-LM, arXiv 1909.08053, section 3 and figure 3: f/g are the identity and all-reduce
    around each split block, whose input X and output Z are full on each GPU)."""
    widest = max(model.intermediate, model.dense_intermediate, model.shared_intermediate)
    inner = widest * (2 if model.gated_mlp else 1)
    return batch * seq_len * (inner / tp + 2 * model.hidden) * DTYPES[act_dtype].bytes_per_element


def hidden_bytes(model: ModelSpec, batch: int, seq_len: int, act_dtype: str = "fp16") -> float:
    """Hidden states handed from one layer (or pipeline stage) to the next."""
    return batch * seq_len * model.hidden * DTYPES[act_dtype].bytes_per_element
