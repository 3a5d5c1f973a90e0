"""Parameter tensors of a model, their counts and their bytes.

Conventions:

- Matrices (2-D tensors: linear weights, embedding and position tables, the LM head) are stored in
  the requested ``DType``; vectors (biases, norm scales and shifts) in the same float format (an fp32
  run keeps them fp32), in 16-bit beside a quantised one (``vector_bytes``).
- Linear weights have torch's ``(out_features, in_features)`` shape.
- A tied LM head shares the embedding table: it is counted (and stored) once, in the embedding.
- A GPTQ/AWQ checkpoint (``ModelSpec.quantized``) keeps the token table, the LM head and OPT's
  projections at its own precision (``table_dtype``): only its decoder layers are quantised, and its
  LM head where it says so (``head_dtype``).
"""

from __future__ import annotations

from functools import lru_cache

from hetsim.models.spec import DTYPES, DType, ModelSpec, WeightTensor

_FLOATS = frozenset({"fp32", "fp16", "bf16"})


def vector_bytes(dtype: DType) -> float:
    """Bytes per element of a vector (a bias, a norm's scale or shift) beside matrices in ``dtype``:
    ``dtype``'s own where it is a float format (torch keeps a module's vectors in the dtype its
    matrices load in: an fp32 checkpoint run at full precision keeps 4-byte norms, which were counted
    at 2), 16-bit beside a quantised one, whose activations are 16-bit and whose converter leaves vectors
    alone (GPTQ/AWQ at an fp16 checkpoint's dtype, FlexGen's int4; llama.cpp's GGUF keeps norms f32 and
    an fp32 GPTQ checkpoint its biases: not told apart here, under 0.1 % of a layer's bytes)."""
    return dtype.bytes_per_element if dtype.name in _FLOATS else 2.0


def _norm_tensors(
    spec: ModelSpec, module: str, block: str, prefix: str, size: int | None = None
) -> list[WeightTensor]:
    n = size or spec.hidden
    out = [WeightTensor(f"{prefix}.weight", module, block, (n,), False)]  # type: ignore[arg-type]
    if spec.norm == "layernorm":
        out.append(WeightTensor(f"{prefix}.bias", module, block, (n,), False))  # type: ignore[arg-type]
    return out


def _linear(name: str, module: str, block: str, out_f: int, in_f: int, bias: bool) -> list[WeightTensor]:
    out = [WeightTensor(f"{name}.weight", module, block, (out_f, in_f), True)]  # type: ignore[arg-type]
    if bias:
        out.append(WeightTensor(f"{name}.bias", module, block, (out_f,), False))  # type: ignore[arg-type]
    return out


def _gated(prefix: str, mod: str, inter: int, h: int, bias: bool) -> list[WeightTensor]:
    return [
        *_linear(f"{prefix}gate_proj", f"{mod}gate_proj", "mlp", inter, h, bias),
        *_linear(f"{prefix}up_proj", f"{mod}up_proj", "mlp", inter, h, bias),
        *_linear(f"{prefix}down_proj", f"{mod}down_proj", "mlp", h, inter, bias),
    ]


def _attention_tensors(spec: ModelSpec) -> list[WeightTensor]:
    h, hd = spec.hidden, spec.head_dim
    t: list[WeightTensor] = []
    if spec.is_mla:
        # DeepSeek-V2 MLA (arXiv:2405.04434 §2.1): q through an optional low-rank pair, one down-projection
        # to the KV latent plus the shared rotary key, one up-projection to per-head no-rope K and V.
        nope = hd - spec.rope_head_dim
        if spec.q_lora_rank:
            t += _linear("q_a_proj", "q_a_proj", "attention", spec.q_lora_rank, h, spec.qkv_bias)
            t += _norm_tensors(spec, "q_a_norm", "attention", "q_a_norm", spec.q_lora_rank)
            t += _linear("q_b_proj", "q_b_proj", "attention", spec.heads * hd, spec.q_lora_rank, False)
        else:
            t += _linear("q_proj", "q_proj", "attention", spec.heads * hd, h, False)
        kv_a = spec.kv_lora_rank + spec.rope_head_dim
        t += _linear("kv_a_proj", "kv_a_proj", "attention", kv_a, h, spec.qkv_bias)
        t += _norm_tensors(spec, "kv_a_norm", "attention", "kv_a_norm", spec.kv_lora_rank)
        kv_b = spec.heads * (nope + spec.v_head_dim)
        t += _linear("kv_b_proj", "kv_b_proj", "attention", kv_b, spec.kv_lora_rank, False)
        t += _linear("out_proj", "out_proj", "attention", h, spec.heads * spec.v_head_dim, spec.linear_bias)
    else:
        q_out, kv_out = spec.heads * hd, spec.kv_heads * hd
        t += _linear("q_proj", "q_proj", "attention", q_out, h, spec.qkv_bias)
        t += _linear("k_proj", "k_proj", "attention", kv_out, h, spec.qkv_bias)
        t += _linear("v_proj", "v_proj", "attention", kv_out, h, spec.qkv_bias)
        t += _linear("out_proj", "out_proj", "attention", h, q_out, spec.linear_bias)
        if spec.qk_norm:
            t += _norm_tensors(spec, "q_norm", "attention", "q_norm", hd)
            t += _norm_tensors(spec, "k_norm", "attention", "k_norm", hd)
    t += _norm_tensors(spec, "norm1", "attention", "norm1")
    if spec.layer_norms == 4:
        t += _norm_tensors(spec, "post_attn_norm", "attention", "post_attn_norm")
    return t


@lru_cache(maxsize=256)
def layer_weight_tensors(spec: ModelSpec, moe: bool | None = None) -> tuple[WeightTensor, ...]:
    """The parameter tensors of one decoder layer, in the implementation's order.

    Attention block: q W/b, k W/b, v W/b, out W/b, then the pre-attention norm; MLP block: the MLP
    matrices (fc1 W/b, fc2 W/b for OPT; gate, up, down for gated MLPs; router then experts for MoE),
    then the pre-MLP norm. This is FlexGen's per-tensor order in ``flex_opt.py: init_weight_list``,
    which decides its step-function placement, so keep it. MLA, q/k norms, shared experts and
    sandwich norms (other families) add their tensors to the block they run in.

    ``moe`` picks the layer kind of a model whose first layers are dense (DeepSeek); ``None`` is the
    typical layer (an expert layer for an MoE model).
    """
    h = spec.hidden
    moe = spec.is_moe if moe is None else (moe and spec.is_moe)
    t = _attention_tensors(spec)
    inter, bias = spec.intermediate, spec.linear_bias
    if moe:
        kept = router_dtype(spec, DTYPES[spec.quantized]).name if spec.router_16bit else ""
        t.append(WeightTensor("router.weight", "router", "mlp", (spec.num_experts, h), True, kept))
        for e in range(spec.num_experts):
            t += _gated(f"experts.{e}.", "", inter, h, bias)
        if spec.shared_intermediate:
            t += _gated("shared_expert.", "shared_", spec.shared_intermediate, h, False)
        if spec.shared_expert_gate:
            t += _linear("shared_expert_gate", "shared_expert_gate", "mlp", 1, h, False)
    elif spec.is_moe:  # a dense layer of an MoE model
        t += _gated("", "", spec.dense_intermediate or inter, h, bias)
    elif spec.gated_mlp:
        t += _gated("", "", inter, h, bias)
    else:
        t += _linear("fc1", "fc1", "mlp", inter, h, bias)
        t += _linear("fc2", "fc2", "mlp", h, inter, bias)
    if spec.layer_norms >= 2:
        t += _norm_tensors(spec, "norm2", "mlp", "norm2")
    if spec.layer_norms == 4:
        t += _norm_tensors(spec, "post_mlp_norm", "mlp", "post_mlp_norm")
    return tuple(t)


def layer_leaf_modules(spec: ModelSpec, moe: bool | None = None) -> tuple[tuple[WeightTensor, ...], ...]:
    """``layer_weight_tensors`` grouped by the leaf module that owns them (q_proj's weight and bias,
    one expert's gate_proj, a norm's scale and shift), in the same order: the unit that module hooks
    (Accelerate's, ZeRO-3's) move to the GPU and release."""
    out: list[list[WeightTensor]] = []
    last = None
    for t in layer_weight_tensors(spec, moe):
        leaf = t.name.rsplit(".", 1)[0]
        if leaf != last:
            out.append([])
            last = leaf
        out[-1].append(t)
    return tuple(tuple(leaf) for leaf in out)


def layer_kinds(spec: ModelSpec) -> tuple[tuple[bool, int], ...]:
    """``(moe, count)`` for each kind of decoder layer the model has."""
    if not spec.is_moe or not spec.dense_layers:
        return ((spec.is_moe, spec.layers),)
    return ((False, spec.dense_layers), (True, spec.layers - spec.dense_layers))


def tensor_bytes(t: WeightTensor, dtype: DType) -> float:
    """Bytes of one tensor: matrices in ``dtype`` (one the checkpoint kept apart in its own), vectors as
    ``vector_bytes``."""
    if not t.is_matrix:
        return t.numel * vector_bytes(dtype)
    return t.numel * (DTYPES[t.stored] if t.stored else dtype).bytes_per_element


def _final_norm_params(spec: ModelSpec) -> int:
    if not spec.final_norm:
        return 0
    return spec.hidden * (2 if spec.norm == "layernorm" else 1)


def _projection_params(spec: ModelSpec) -> int:
    """One of OPT-350m's project_in / project_out matrices (no bias); 0 when the widths agree."""
    return spec.hidden * spec.embed_dim if spec.embed_dim else 0


def layer_param_count(spec: ModelSpec, moe: bool | None = None) -> int:
    return sum(t.numel for t in layer_weight_tensors(spec, moe))


def decoder_param_count(spec: ModelSpec) -> int:
    """Parameters of all decoder layers (dense and expert layers of an MoE model each counted)."""
    return sum(n * layer_param_count(spec, moe) for moe, n in layer_kinds(spec))


def embedding_param_count(spec: ModelSpec) -> int:
    """Token table, the learned position table (OPT) and project_in (OPT-350m), if any."""
    return spec.vocab * spec.token_dim + spec.learned_positions * spec.hidden + _projection_params(spec)


def param_count(spec: ModelSpec) -> int:
    """All parameters: embeddings, layers, final norm and an untied LM head."""
    head = (0 if spec.tied_embeddings else spec.vocab * spec.token_dim) + _projection_params(spec)
    return embedding_param_count(spec) + decoder_param_count(spec) + _final_norm_params(spec) + head


def active_param_count(spec: ModelSpec) -> int:
    """Parameters one token touches: for MoE only ``experts_per_token`` of the routed experts count.

    Equals ``param_count`` for a dense model. The embedding table counts in full (as Mistral's
    "12.9B active" for Mixtral does), although a token gathers only one row of it.
    """
    if not spec.is_moe:
        return param_count(spec)
    per_expert = sum(t.numel for t in layer_weight_tensors(spec, True) if t.name.startswith("experts.0."))
    idle = (spec.num_experts - spec.experts_per_token) * per_expert
    return param_count(spec) - (spec.layers - spec.dense_layers) * idle


def layer_weight_bytes(spec: ModelSpec, dtype: DType, moe: bool | None = None) -> float:
    """Bytes of one decoder layer (matrices in ``dtype``, biases and norms as ``vector_bytes``).

    ``moe=None`` is the typical layer; a model with dense first layers (DeepSeek) has smaller ones.
    """
    return sum(tensor_bytes(t, dtype) for t in layer_weight_tensors(spec, moe))


def decoder_weight_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes of all decoder layers."""
    return sum(n * layer_weight_bytes(spec, dtype, moe) for moe, n in layer_kinds(spec))


def table_dtype(spec: ModelSpec, dtype: DType) -> DType:
    """The dtype of the token table, the LM head and OPT's projections where the layers are in ``dtype``.

    ``dtype``, except in a GPTQ/AWQ checkpoint's own format (``spec.quantized``): those quantise only
    the linear modules of the decoder layers, so the tables stay at the checkpoint's ``spec.dtype``
    (optimum 1.23.3 gptq/quantizer.py:220 replaces the layers under ``block_name_to_quantize`` only;
    transformers 4.46.3 quantizers/quantizer_awq.py:97 leaves out the output embedding that
    integrations/bitsandbytes.py:316 ``get_keys_to_not_convert`` names; an embedding is no linear).
    """
    return DTYPES[spec.dtype] if spec.quantized and dtype == DTYPES[spec.quantized] else dtype


def router_dtype(spec: ModelSpec, dtype: DType) -> DType:
    """The MoE router's dtype where the layers are in ``dtype``: ``dtype``, or ``table_dtype``'s where a
    quantised checkpoint left it unconverted (``spec.router_16bit``). It is then stored as the tables it
    left unconverted: AutoAWQ 0.2.9 holds the whole model at the ``torch_dtype`` it
    loaded (awq/models/base.py ``from_pretrained``, float16 by default), quantises the linears but the
    ``modules_to_not_convert`` (awq/models/mixtral.py: ``["gate"]``) and ``save_pretrained`` records
    that dtype as config.json's ``torch_dtype``: so the checkpoint's own (``spec.dtype``), 32-bit in an
    fp32 one."""
    return table_dtype(spec, dtype) if spec.router_16bit else dtype


def head_dtype(spec: ModelSpec, dtype: DType) -> DType:
    """The LM head matrix's dtype: ``table_dtype``'s, or the checkpoint's quantised one where it
    quantised the head too (``spec.quantized_head``: GPTQModel's ``lm_head: true``)."""
    return dtype if spec.quantized_head and dtype == DTYPES[spec.quantized] else table_dtype(spec, dtype)


def embedding_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes of the whole token embedding table plus the learned position table (OPT)."""
    return embedding_param_count(spec) * table_dtype(spec, dtype).bytes_per_element


def final_norm_bytes(spec: ModelSpec, dtype: DType) -> float:
    """The final norm's bytes where the layers are in ``dtype``: kept beside the tables (``table_dtype``)."""
    return _final_norm_params(spec) * vector_bytes(table_dtype(spec, dtype))


def lm_head_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes the final norm + LM head read: the head matrix, project_out (OPT-350m) and the final norm.

    For a tied head the matrix is the embedding table, so this overlaps ``embedding_bytes``;
    ``weight_bytes`` counts it once.
    """
    head = spec.vocab * spec.token_dim * head_dtype(spec, dtype).bytes_per_element
    projections = _projection_params(spec) * table_dtype(spec, dtype).bytes_per_element
    return head + projections + final_norm_bytes(spec, dtype)


def weight_bytes(spec: ModelSpec, dtype: DType) -> float:
    """Bytes of all the model's weights, a tied head counted once."""
    if spec.tied_embeddings:
        projections = _projection_params(spec) * table_dtype(spec, dtype).bytes_per_element
        head = final_norm_bytes(spec, dtype) + projections
    else:
        head = lm_head_bytes(spec, dtype)
    return embedding_bytes(spec, dtype) + decoder_weight_bytes(spec, dtype) + head


NORM_MODULES = frozenset(
    {"norm1", "norm2", "post_attn_norm", "post_mlp_norm", "q_norm", "k_norm", "q_a_norm", "kv_a_norm"}
)


def module_weight_bytes(spec: ModelSpec, dtype: DType, moe: bool | None = None) -> dict[str, float]:
    """Bytes of each linear module of one layer (weights + biases; all experts for MoE).

    Keys are the ``module`` names of the matmul ops: q_proj, k_proj, v_proj, out_proj, then fc1, fc2
    or (router,) gate_proj, up_proj, down_proj (shared_* for shared experts). Norms are left out.
    """
    out: dict[str, float] = {}
    for t in layer_weight_tensors(spec, moe):
        if t.module in NORM_MODULES:
            continue
        out[t.module] = out.get(t.module, 0.0) + tensor_bytes(t, dtype)
    return out


# A 4-bit KV cache: 4.5 bits per element, as llama.cpp's q4_0 (32 values and an fp16 scale) and
# FlexGen's group-64 compression (an fp16 scale and min per 64) both store it.
KV_INT4_BYTES = 0.5625


def kv_element_bytes(kv_dtype: DType) -> float:
    """Bytes of one cached K or V element. KV formats are not the weight formats: an int8 KV cache
    keeps one scale per tensor or head (TensorRT-LLM's and LMDeploy's int8 KV cache; its few bytes are
    left out), a 4-bit one ``KV_INT4_BYTES``."""
    return KV_INT4_BYTES if kv_dtype.name == "int4" else kv_dtype.bits / 8.0


def kv_bytes_per_token_layer(spec: ModelSpec, kv_dtype: DType) -> float:
    """K and V of one token in one layer: 2·kv_heads·head_dim·bytes (GQA-aware).

    MLA caches the compressed latent and the shared rotary key instead, (kv_lora_rank + rope_head_dim)
    elements (DeepSeek-V2, arXiv:2405.04434, Table 1), as vLLM, SGLang and KTransformers do.
    """
    if spec.is_mla:
        return (spec.kv_lora_rank + spec.rope_head_dim) * kv_element_bytes(kv_dtype)
    return 2 * spec.kv_heads * spec.head_dim * kv_element_bytes(kv_dtype)


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: DType) -> float:
    """K and V of one token over all layers: 2·L·kv_heads·head_dim·bytes."""
    return spec.layers * kv_bytes_per_token_layer(spec, kv_dtype)
