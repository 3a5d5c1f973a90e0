"""Parameter tensors of a model, their counts and their bytes.

Conventions:

- Matrices (2-D tensors: linear weights, embedding and position tables, the LM head) are stored in
  the requested ``DType``; vectors (biases, norm scales and shifts) always stay in 16-bit, as FlexGen
  and HeteGen keep them.
- Linear weights have torch's ``(out_features, in_features)`` shape.
- A tied LM head shares the embedding table: it is counted (and stored) once, in the embedding.
"""

from __future__ import annotations

from functools import lru_cache

from hetsim.models.spec import DType, ModelSpec, WeightTensor

VECTOR_BYTES = 2.0  # biases and norms are kept in 16-bit whatever the matrix dtype


def _norm_tensors(spec: ModelSpec, module: str, block: str, prefix: str) -> list[WeightTensor]:
    out = [WeightTensor(f"{prefix}.weight", module, block, (spec.hidden,), False)]  # type: ignore[arg-type]
    if spec.norm == "layernorm":
        out.append(WeightTensor(f"{prefix}.bias", module, block, (spec.hidden,), False))  # type: ignore[arg-type]
    return out


def _linear(name: str, module: str, block: str, out_f: int, in_f: int, bias: bool) -> list[WeightTensor]:
    out = [WeightTensor(f"{name}.weight", module, block, (out_f, in_f), True)]  # type: ignore[arg-type]
    if bias:
        out.append(WeightTensor(f"{name}.bias", module, block, (out_f,), False))  # type: ignore[arg-type]
    return out


@lru_cache(maxsize=256)
def layer_weight_tensors(spec: ModelSpec) -> tuple[WeightTensor, ...]:
    """The parameter tensors of one decoder layer, in the implementation's order.

    Attention block: q W/b, k W/b, v W/b, out W/b, then the pre-attention norm; MLP block: the MLP
    matrices (fc1 W/b, fc2 W/b for OPT; gate, up, down for gated MLPs; router then experts for MoE),
    then the pre-MLP norm. This is FlexGen's per-tensor order in ``flex_opt.py: init_weight_list``,
    which decides its step-function placement, so keep it.
    """
    h, q_out, kv_out = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    t: list[WeightTensor] = []
    t += _linear("q_proj", "q_proj", "attention", q_out, h, spec.qkv_bias)
    t += _linear("k_proj", "k_proj", "attention", kv_out, h, spec.qkv_bias)
    t += _linear("v_proj", "v_proj", "attention", kv_out, h, spec.qkv_bias)
    t += _linear("out_proj", "out_proj", "attention", h, q_out, spec.linear_bias)
    t += _norm_tensors(spec, "norm1", "attention", "norm1")
    inter, bias = spec.intermediate, spec.linear_bias
    if spec.is_moe:
        t += _linear("router", "router", "mlp", spec.num_experts, h, False)
        for e in range(spec.num_experts):
            p = f"experts.{e}"
            t += _linear(f"{p}.gate_proj", "gate_proj", "mlp", inter, h, bias)
            t += _linear(f"{p}.up_proj", "up_proj", "mlp", inter, h, bias)
            t += _linear(f"{p}.down_proj", "down_proj", "mlp", h, inter, bias)
    elif spec.gated_mlp:
        t += _linear("gate_proj", "gate_proj", "mlp", inter, h, bias)
        t += _linear("up_proj", "up_proj", "mlp", inter, h, bias)
        t += _linear("down_proj", "down_proj", "mlp", h, inter, bias)
    else:
        t += _linear("fc1", "fc1", "mlp", inter, h, bias)
        t += _linear("fc2", "fc2", "mlp", h, inter, bias)
    t += _norm_tensors(spec, "norm2", "mlp", "norm2")
    return tuple(t)


def tensor_bytes(t: WeightTensor, dtype: DType) -> float:
    """Bytes of one tensor: matrices in ``dtype``, vectors in 16-bit."""
    return t.numel * (dtype.bytes_per_element if t.is_matrix else VECTOR_BYTES)


def _final_norm_params(spec: ModelSpec) -> int:
    return spec.hidden * (2 if spec.norm == "layernorm" else 1)


def layer_param_count(spec: ModelSpec) -> int:
    return sum(t.numel for t in layer_weight_tensors(spec))


def embedding_param_count(spec: ModelSpec) -> int:
    """Token table plus the learned position table (OPT), if any."""
    return (spec.vocab + spec.learned_positions) * spec.hidden


def param_count(spec: ModelSpec) -> int:
    """All parameters: embeddings, layers, final norm and an untied LM head."""
    head = 0 if spec.tied_embeddings else spec.vocab * spec.hidden
    return (
        embedding_param_count(spec) + spec.layers * layer_param_count(spec) + _final_norm_params(spec) + head
    )


def active_param_count(spec: ModelSpec) -> int:
    """Parameters one token touches: for MoE only ``experts_per_token`` of the experts count.

    Equals ``param_count`` for a dense model. The embedding table counts in full (as Mistral's
    "12.9B active" for Mixtral does), although a token gathers only one row of it.
    """
    if not spec.is_moe:
        return param_count(spec)
    per_expert = sum(t.numel for t in layer_weight_tensors(spec) if t.name.startswith("experts.0."))
    idle = (spec.num_experts - spec.experts_per_token) * per_expert
    return param_count(spec) - spec.layers * idle


def layer_weight_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes of one decoder layer (matrices in ``dtype``, biases and norms in 16-bit)."""
    return sum(tensor_bytes(t, dtype) for t in layer_weight_tensors(spec))


def embedding_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes of the whole token embedding table plus the learned position table (OPT)."""
    return embedding_param_count(spec) * dtype.bytes_per_element


def final_norm_bytes(spec: ModelSpec) -> float:
    return _final_norm_params(spec) * VECTOR_BYTES


def lm_head_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes the final norm + LM head read: the h×V head matrix and the final norm.

    For a tied head the matrix is the embedding table, so this overlaps ``embedding_bytes``;
    ``weight_bytes`` counts it once.
    """
    return spec.vocab * spec.hidden * dtype.bytes_per_element + final_norm_bytes(spec)


def weight_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes of all the model's weights, a tied head counted once."""
    head = final_norm_bytes(spec) if spec.tied_embeddings else lm_head_bytes(spec, dtype)
    return embedding_bytes(spec, dtype) + spec.layers * layer_weight_bytes(spec, dtype) + head


def module_weight_bytes(spec: ModelSpec, dtype: DType) -> dict[str, float]:
    """Bytes of each linear module of one layer (weights + biases; all experts for MoE).

    Keys are the ``module`` names of the matmul ops: q_proj, k_proj, v_proj, out_proj, then fc1, fc2
    or (router,) gate_proj, up_proj, down_proj. Norms are not linear modules and are left out.
    """
    out: dict[str, float] = {}
    for t in layer_weight_tensors(spec):
        if t.module in ("norm1", "norm2"):
            continue
        out[t.module] = out.get(t.module, 0.0) + tensor_bytes(t, dtype)
    return out


def kv_bytes_per_token_layer(spec: ModelSpec, kv_dtype: DType) -> float:
    """K and V of one token in one layer: 2·kv_heads·head_dim·bytes (GQA-aware)."""
    return 2 * spec.kv_heads * spec.head_dim * kv_dtype.bytes_per_element


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: DType) -> float:
    """K and V of one token over all layers: 2·L·kv_heads·head_dim·bytes."""
    return spec.layers * kv_bytes_per_token_layer(spec, kv_dtype)
