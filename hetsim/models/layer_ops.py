"""The ops of one forward step, with FLOPs and bytes, for the whole batch on one device.

Every function is cached (``functools.lru_cache``): all arguments are hashable (``ModelSpec`` and
``DType`` are frozen dataclasses) and the simulator calls these in hot loops.

Shapes and conventions
----------------------
- ``phase="prefill"``: ``seq_len`` = prompt tokens per sequence processed in this step, ``kv_len`` =
  context length after the step (``== seq_len`` for a fresh prompt, larger for a chunked prefill).
- ``phase="decode"``: ``seq_len = 1``, ``kv_len`` = context including the new token.
- ``tokens = batch * seq_len`` rows go through every matmul of a decoder layer.
- Matmul: FLOPs = 2·tokens·in·out (bias adds are not counted); weight bytes = in·out in the weight
  dtype plus the bias in 16-bit; act_in = tokens·in, act_out = tokens·out, in the activation dtype.
- ``compute_dtype`` of a matmul is the weight dtype's compute dtype; weight-only int8/int4 compute in
  the activations' dtype after dequantising inside the kernel (``dequant_ops`` counts that work); with
  fp32 activations (FlexGen's CPU path) it is fp32. An int8/int4 KV cache is dequantised the same way
  inside attention (``KV_DEQUANT_OPS`` per cached element read).
- Elementwise ops carry small per-element FLOP counts (named constants below); they are memory-bound
  in practice, so their bytes matter more than their FLOPs. Rotary embedding is folded into nothing:
  its FLOPs (≈ 3 per q/k element) are below 0.1 % of a layer and left out.
- Attention FLOPs = 2·2·batch·heads·seq_len·kv_len·head_dim (QKᵀ and PV). For a causal prefill the
  full seq_len × kv_len rectangle is counted (what dense kernels compute; flash-attention with causal
  skipping does about half of the fresh-prompt part). Softmax FLOPs are left out.
- Attention KV bytes (per layer, ``kvt`` = 2·kv_heads·head_dim·kv_bytes per token):
  - ``kv_write_bytes`` = batch·seq_len·kvt: the new tokens' K and V appended to the cache.
  - ``kv_read_bytes``, decode = batch·kv_len·kvt: the whole cache, including the token just
    appended (paged / HF-style decode kernels read K and V back from the cache).
  - ``kv_read_bytes``, prefill = batch·(kv_len − seq_len)·kvt: only the context cached by earlier
    steps; the new tokens' K and V are used on-chip straight from the k/v projections (they arrive
    as the op's ``act_in``). A fresh prompt therefore reads 0 bytes of KV cache.
  - ``act_in`` = q, k, v of the new tokens; ``act_out`` = the attention output (tokens·heads·head_dim).
    The score matrix is not counted as traffic (fused kernels keep it on-chip; FlexGen's CPU
    attention materialises it — a strategy that models that should add it).
- MoE (Mixtral): a router matmul, then the experts' gate/up/down as one op each over all routed
  copies: FLOPs for ``experts_per_token`` experts per token, weight bytes for the expected number of
  distinct experts the step touches, E·(1 − (1 − k/E)^tokens) with uniform top-k routing.
- LM head: in prefill only the last token of each sequence goes through the final norm and the LM
  head (what generation needs; HF with ``logits_to_keep=1`` and vLLM do this; FlexGen and older HF
  compute logits for all positions — pass ``all_logits=True`` for that).
"""

from __future__ import annotations

import math
from functools import lru_cache

from hetsim.models.kernels import counted, eager_kernels
from hetsim.models.spec import FP16, DType, ModelSpec, Op, OpKind, Phase, op_with
from hetsim.models.weights import (
    head_dtype,
    kv_bytes_per_token_layer,
    kv_element_bytes,
    layer_weight_tensors,
    module_weight_bytes,
    router_dtype,
    table_dtype,
    vector_bytes,
)

# FLOPs per element of the elementwise ops (approximate; these ops are memory-bound).
LAYERNORM_FLOPS = 8.0  # mean, variance, normalise, scale, shift
RMSNORM_FLOPS = 4.0  # square-sum, rsqrt-scale, gain
RESIDUAL_FLOPS = 1.0
RELU_FLOPS = 1.0  # OPT's activation_function is "relu"
SWIGLU_FLOPS = 5.0  # SiLU (≈4) and the gate·up multiply
TOKEN_ID_BYTES = 8.0  # int64 token ids read by the embedding gather
# Rows of the activation one fused weight-only GEMM thread block covers: Marlin (Frantar et al. 2024,
# arXiv:2408.11743; IST-DASLab/marlin, Apache-2.0) runs at most 4 x 16 = 64 rows per block and splits a
# larger batch into 64-row sub-problems, each re-reading and re-dequantising the weights.
DEQUANT_TILE_ROWS = 64
# ALU instructions per cached K or V element an attention kernel spends dequantising an int8/int4 KV
# cache (TensorRT-LLM's and LMDeploy's kernels: one conversion and one scale multiply per pair of
# elements in half2, as for weights); 16/32-bit caches need none. Counted, grade assumed.
KV_DEQUANT_OPS = {"int8": 1.0, "int4": 1.5}


def _check(phase: str, batch: int, seq_len: int, kv_len: int) -> None:
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1, got batch={batch}, seq_len={seq_len}")
    if kv_len < seq_len:
        raise ValueError(f"kv_len ({kv_len}) must be >= seq_len ({seq_len})")


def _matmul_dtype(weight_dtype: DType, act_dtype: DType) -> str:
    """fp32 activations compute in fp32; weight-only formats in the activations' dtype."""
    if act_dtype.name == "fp32" or weight_dtype.weight_only:
        return act_dtype.name
    return weight_dtype.compute_dtype


def dequant_ops(weights: float, rows: float, wd: DType) -> float:
    """ALU instructions a fused weight-only matmul spends dequantising: every weight once per tile of
    ``DEQUANT_TILE_ROWS`` activation rows (a thread block dequantises the weight tile it loads for its
    own rows; more rows run as more tiles, each dequantising again)."""
    return weights * wd.dequant_ops * max(1, math.ceil(rows / DEQUANT_TILE_ROWS)) if wd.weight_only else 0.0


def _matmul(
    name: str,
    layer: int,
    tokens: float,
    in_f: int,
    out_f: int,
    wd: DType,
    ad: DType,
    *,
    bias: bool,
    weight_copies: float = 1.0,
    module: str | None = None,
) -> Op:
    w = in_f * out_f * wd.bytes_per_element + (out_f * vector_bytes(wd) if bias else 0.0)
    return Op(
        name=name,
        kind=OpKind.MATMUL,
        layer=layer,
        flops=2.0 * tokens * in_f * out_f,
        weight_bytes=weight_copies * w,
        act_in_bytes=tokens * in_f * ad.bytes_per_element,
        act_out_bytes=tokens * out_f * ad.bytes_per_element,
        module=module or name,
        compute_dtype=_matmul_dtype(wd, ad),
        rows=tokens / weight_copies,
        weight_row_bytes=out_f * wd.bytes_per_element,
        dequant_ops=weight_copies * dequant_ops(in_f * out_f, tokens / weight_copies, wd),
    )


def _elementwise(
    name: str, layer: int, elems: float, flops_per: float, ad: DType, *, n_in: int = 1, weight: float = 0.0
) -> Op:
    """``n_in`` input tensors of ``elems`` elements each, one output of ``elems`` elements."""
    b = ad.bytes_per_element
    return Op(
        name=name,
        kind=OpKind.ELEMENTWISE,
        layer=layer,
        flops=flops_per * elems,
        weight_bytes=weight,
        act_in_bytes=n_in * elems * b,
        act_out_bytes=elems * b,
        compute_dtype=ad.name,
    )


def _norm(
    spec: ModelSpec,
    name: str,
    layer: int,
    tokens: float,
    ad: DType,
    wd: DType,
    width: int | None = None,
    weight_elems: int | None = None,
) -> Op:
    """A norm over ``width`` elements per token (hidden by default) with ``weight_elems`` gains, stored
    beside matrices in ``wd`` (``vector_bytes``)."""
    ln = spec.norm == "layernorm"
    per = LAYERNORM_FLOPS if ln else RMSNORM_FLOPS
    n = width or spec.hidden
    weight = (weight_elems or n) * vector_bytes(wd) * (2 if ln else 1)
    return _elementwise(name, layer, tokens * n, per, ad, weight=weight)


# Public names for the two op builders: calibration describes measured kernels (fused QKV, fused
# gate+up) with the same FLOP and byte counts as the layer ops above.
matmul_op = _matmul
elementwise_op = _elementwise


def expected_distinct_experts(num_experts: int, top_k: int, tokens: float) -> float:
    """Expected number of distinct experts hit by ``tokens`` tokens routed top-k of E, uniformly
    (``distinct_experts`` with every pick probability k/E)."""
    if num_experts <= 1:
        return 1.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def distinct_experts(pick_probs: tuple[float, ...], tokens: float) -> float:
    """Expected number of distinct experts hit by ``tokens`` tokens when one token picks expert e with
    probability ``pick_probs[e]`` (they sum to k): sum over e of 1 - (1 - p_e)^tokens, tokens taken as
    independent (a routing profile's per-expert frequencies; the uniform case above)."""
    return sum(1.0 - (1.0 - min(1.0, p)) ** tokens for p in pick_probs)


def _attention_op(
    spec: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    qk_dim: int,
    v_dim: int,
    act_in_elems: float,
    kvd: DType,
    ad: DType,
    sliding: bool | None = None,
) -> Op:
    tokens = float(batch * seq_len)
    kvt = kv_bytes_per_token_layer(spec, kvd)
    cached = kv_len if phase == "decode" else kv_len - seq_len  # see the module docstring
    # A sliding-window layer attends to and reads at most the window (ModelSpec.kv_tokens).
    attended, cached = spec.kv_tokens(kv_len, sliding), spec.kv_tokens(cached, sliding)
    return Op(
        name="attention",
        kind=OpKind.ATTENTION,
        layer=0,
        # QK^T and PV, 2 FLOPs per MAC; causal prefill counts the full seq_len x kv_len rectangle.
        flops=2.0 * batch * spec.heads * seq_len * attended * (qk_dim + v_dim),
        weight_bytes=0.0,
        act_in_bytes=act_in_elems * ad.bytes_per_element,
        act_out_bytes=tokens * spec.heads * v_dim * ad.bytes_per_element,
        kv_read_bytes=float(batch * cached) * kvt,
        kv_write_bytes=tokens * kvt,
        compute_dtype="fp32" if ad.name == "fp32" else ad.name,
        # prefill: query rows per sequence (Efficiency.attention_half_rows); decode kernels are
        # bound by the KV bytes they read, and 0 leaves their compute rate alone
        rows=float(seq_len) if phase == "prefill" else 0.0,
        dequant_ops=float(batch * cached) * kvt / kv_element_bytes(kvd) * KV_DEQUANT_OPS.get(kvd.name, 0.0),
    )


def attention_op(
    spec: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    kvd: DType,
    ad: DType,
    sliding: bool | None = None,
) -> Op:
    """One layer's multi-head / grouped-query attention for the batch (see the module docstring)."""
    hd = spec.head_dim
    act_in = float(batch * seq_len) * (spec.heads * hd + 2 * spec.kv_heads * hd)
    return _attention_op(spec, phase, batch, seq_len, kv_len, hd, hd, act_in, kvd, ad, sliding)


def _mla_ops(
    spec: ModelSpec, phase: Phase, batch: int, seq_len: int, kv_len: int, wd: DType, kvd: DType, ad: DType
) -> list[Op]:
    """Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434 §2.1) from q to out_proj.

    Prefill decompresses the latent of the whole context through kv_b_proj and runs ordinary attention
    with q/k heads of ``head_dim`` and v heads of ``v_head_dim``. Decode absorbs kv_b_proj into the
    query and the output (the paper's §2.1.2 "absorbed" form, as vLLM, SGLang and KTransformers run
    it): attention runs over the cached latent, each head with a kv_lora_rank-wide key and value.
    """
    h, hd, nh = spec.hidden, spec.head_dim, spec.heads
    nope, rank, rope, vd = hd - spec.rope_head_dim, spec.kv_lora_rank, spec.rope_head_dim, spec.v_head_dim
    tokens = float(batch * seq_len)
    ops: list[Op] = []
    if spec.q_lora_rank:
        ops.append(_matmul("q_a_proj", 0, tokens, h, spec.q_lora_rank, wd, ad, bias=spec.qkv_bias))
        ops.append(_norm(spec, "q_a_norm", 0, tokens, ad, wd, spec.q_lora_rank))
        ops.append(_matmul("q_b_proj", 0, tokens, spec.q_lora_rank, nh * hd, wd, ad, bias=False))
    else:
        ops.append(_matmul("q_proj", 0, tokens, h, nh * hd, wd, ad, bias=False))
    ops.append(_matmul("kv_a_proj", 0, tokens, h, rank + rope, wd, ad, bias=spec.qkv_bias))
    ops.append(_norm(spec, "kv_a_norm", 0, tokens, ad, wd, rank))
    if phase == "prefill":
        ctx = float(batch * kv_len)  # the latent of every context token is decompressed
        ops.append(_matmul("kv_b_proj", 0, ctx, rank, nh * (nope + vd), wd, ad, bias=False))
        act_in = tokens * nh * hd + ctx * nh * (hd + vd)
        ops.append(_attention_op(spec, phase, batch, seq_len, kv_len, hd, vd, act_in, kvd, ad))
    else:
        # W_UK absorbed into q (per head: nope -> rank), W_UV applied to the output (per head: rank -> v).
        q_abs = _matmul("q_absorb", 0, tokens, nh * nope, rank, wd, ad, bias=False, module="kv_b_proj")
        ops.append(op_with(q_abs, act_out_bytes=tokens * nh * rank * ad.bytes_per_element))
        act_in = tokens * nh * (rank + rope)
        ops.append(_attention_op(spec, phase, batch, seq_len, kv_len, rank + rope, rank, act_in, kvd, ad))
        o_abs = _matmul("out_absorb", 0, tokens, nh * rank, vd, wd, ad, bias=False, module="kv_b_proj")
        ops.append(op_with(o_abs, act_out_bytes=tokens * nh * vd * ad.bytes_per_element))
    ops.append(_matmul("out_proj", 0, tokens, nh * vd, h, wd, ad, bias=spec.linear_bias))
    return ops


def _gated_mlp_ops(
    prefix: str, tokens: float, h: int, inter: int, wd: DType, ad: DType, bias: bool
) -> list[Op]:
    return [
        _matmul(f"{prefix}gate_proj", 0, tokens, h, inter, wd, ad, bias=bias),
        _matmul(f"{prefix}up_proj", 0, tokens, h, inter, wd, ad, bias=bias),
        _elementwise(f"{prefix}act", 0, tokens * inter, SWIGLU_FLOPS, ad, n_in=2),
        _matmul(f"{prefix}down_proj", 0, tokens, inter, h, wd, ad, bias=bias),
    ]


@lru_cache(maxsize=4096)
def _layer0_ops(
    spec: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    wd: DType,
    kvd: DType,
    ad: DType,
    moe: bool | None = None,
    sliding: bool | None = None,
) -> tuple[Op, ...]:
    _check(phase, batch, seq_len, kv_len)
    moe = spec.is_moe if moe is None else (moe and spec.is_moe)
    h, hd = spec.hidden, spec.head_dim
    q_out, kv_out = spec.heads * hd, spec.kv_heads * hd
    tokens = float(batch * seq_len)
    ab = ad.bytes_per_element
    ops: list[Op] = [_norm(spec, "norm1", 0, tokens, ad, wd)]
    if spec.is_mla:
        ops += _mla_ops(spec, phase, batch, seq_len, kv_len, wd, kvd, ad)
    else:
        ops.append(_matmul("q_proj", 0, tokens, h, q_out, wd, ad, bias=spec.qkv_bias))
        ops.append(_matmul("k_proj", 0, tokens, h, kv_out, wd, ad, bias=spec.qkv_bias))
        ops.append(_matmul("v_proj", 0, tokens, h, kv_out, wd, ad, bias=spec.qkv_bias))
        if spec.qk_norm:
            ops.append(_norm(spec, "qk_norm", 0, tokens, ad, wd, q_out + kv_out, weight_elems=2 * hd))
        act_in = tokens * (q_out + 2 * kv_out)
        ops.append(_attention_op(spec, phase, batch, seq_len, kv_len, hd, hd, act_in, kvd, ad, sliding))
        ops.append(_matmul("out_proj", 0, tokens, q_out, h, wd, ad, bias=spec.linear_bias))
    if spec.layer_norms == 4:
        ops.append(_norm(spec, "post_attn_norm", 0, tokens, ad, wd))
    ops.append(_elementwise("residual1", 0, tokens * h, RESIDUAL_FLOPS, ad, n_in=2))
    if spec.layer_norms >= 2:
        ops.append(_norm(spec, "norm2", 0, tokens, ad, wd))

    inter, bias = spec.intermediate, spec.linear_bias
    if moe:
        k, e = spec.experts_per_token, spec.num_experts
        routed = tokens * k  # token-expert pairs
        distinct = expected_distinct_experts(e, k, tokens)
        ops.append(_matmul("router", 0, tokens, h, e, router_dtype(spec, wd), ad, bias=False))
        for name, i_f, o_f in (("gate_proj", h, inter), ("up_proj", h, inter)):
            ops.append(_matmul(name, 0, routed, i_f, o_f, wd, ad, bias=bias, weight_copies=distinct))
        ops.append(_elementwise("act", 0, routed * inter, SWIGLU_FLOPS, ad, n_in=2))
        ops.append(_matmul("down_proj", 0, routed, inter, h, wd, ad, bias=bias, weight_copies=distinct))
        # Weighted sum of the k expert outputs of each token.
        combine = _elementwise("expert_combine", 0, tokens * h, 2.0 * k, ad)
        ops.append(op_with(combine, act_in_bytes=routed * h * ab))
        if spec.shared_intermediate:  # always-on shared expert(s), one gated MLP
            ops += _gated_mlp_ops("shared_", tokens, h, spec.shared_intermediate, wd, ad, False)
        if spec.shared_expert_gate:
            ops.append(_matmul("shared_expert_gate", 0, tokens, h, 1, wd, ad, bias=False))
    elif spec.is_moe:  # a dense layer of an MoE model (DeepSeek's first layers)
        ops += _gated_mlp_ops("", tokens, h, spec.dense_intermediate or inter, wd, ad, bias)
    elif spec.gated_mlp:
        ops += _gated_mlp_ops("", tokens, h, inter, wd, ad, bias)
    else:
        ops.append(_matmul("fc1", 0, tokens, h, inter, wd, ad, bias=bias))
        ops.append(_elementwise("act", 0, tokens * inter, RELU_FLOPS, ad))
        ops.append(_matmul("fc2", 0, tokens, inter, h, wd, ad, bias=bias))
    if spec.layer_norms == 4:
        ops.append(_norm(spec, "post_mlp_norm", 0, tokens, ad, wd))
    ops.append(_elementwise("residual2", 0, tokens * h, RESIDUAL_FLOPS, ad, n_in=2))
    return counted(spec, tuple(ops))


def relabel(ops: tuple[Op, ...], layer: int) -> tuple[Op, ...]:
    """The same ops with another ``layer`` index (layers are identical apart from the index)."""
    return tuple(op_with(o, layer=layer) for o in ops)


@lru_cache(maxsize=16384)
def decoder_layer_ops(
    spec: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    weight_dtype: DType = FP16,
    kv_dtype: DType = FP16,
    act_dtype: DType = FP16,
    layer: int | None = None,
) -> tuple[Op, ...]:
    """The ops of one decoder layer for the whole batch, in execution order.

    norm1, q_proj, k_proj, v_proj, attention, out_proj, residual1, norm2, then the MLP (OPT: fc1, act,
    fc2; gated: gate_proj, up_proj, act, down_proj; MoE: router, gate_proj, up_proj, act, down_proj,
    expert_combine, then shared experts if any), residual2. MLA replaces q..out_proj (``_mla_ops``).

    ``layer=None`` gives the typical layer (an expert layer of an MoE model), labelled 0; hot loops
    call it once and reuse the result. An index gives that layer (DeepSeek's first layers are dense).
    """
    moe = None if layer is None else spec.layer_is_moe(layer)
    sliding = None if layer is None or not spec.sliding_window else spec.layer_is_sliding(layer)
    ops = _layer0_ops(spec, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype, act_dtype, moe, sliding)
    return ops if not layer else relabel(ops, layer)


@lru_cache(maxsize=4096)
def embedding_op(
    spec: ModelSpec,
    batch: int,
    seq_len: int,
    weight_dtype: DType = FP16,
    act_dtype: DType = FP16,
) -> Op:
    """The input embedding gather (layer -1): reads only the rows of the step's tokens.

    OPT also gathers one learned-position row per token and adds it (1 FLOP per element).
    """
    tokens = float(batch * seq_len)
    tables = 2 if spec.learned_positions else 1
    weight_dtype = table_dtype(spec, weight_dtype)  # a GPTQ/AWQ checkpoint's table is not quantised
    return Op(
        kernels=eager_kernels(spec, "embedding"),
        name="embedding",
        kind=OpKind.EMBEDDING,
        layer=-1,
        flops=(tables - 1) * tokens * spec.hidden,
        weight_bytes=tokens * (spec.token_dim + (tables - 1) * spec.hidden) * weight_dtype.bytes_per_element,
        act_in_bytes=tables * tokens * TOKEN_ID_BYTES,
        act_out_bytes=tokens * spec.hidden * act_dtype.bytes_per_element,
        module="embedding",
        compute_dtype=act_dtype.name,
    )


@lru_cache(maxsize=4096)
def lm_head_ops(
    spec: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    weight_dtype: DType = FP16,
    act_dtype: DType = FP16,
    all_logits: bool = False,
) -> tuple[Op, ...]:
    """Final norm and LM head (layer = ``spec.layers``).

    In prefill only the last token of each sequence is normed and projected to the vocabulary unless
    ``all_logits`` (see the module docstring); in decode that is the one new token anyway.
    """
    rows = float(batch * seq_len if all_logits else batch)
    layer = spec.layers
    norm = _norm(spec, "final_norm", layer, rows, act_dtype, table_dtype(spec, weight_dtype))
    if not spec.final_norm:  # post-norm OPT: the last layer's own norm already ran; nothing to read
        norm = op_with(norm, weight_bytes=0.0, flops=0.0)
    # OPT-350m's project_out (hidden -> embed_dim, 0.1 % of its weights) is left out of the ops.
    wd = head_dtype(spec, weight_dtype)  # a GPTQ/AWQ checkpoint keeps its head at its own precision
    head = _matmul("lm_head", layer, rows, spec.token_dim, spec.vocab, wd, act_dtype, bias=False)
    return counted(spec, (norm, head))


@lru_cache(maxsize=256)  # a step of a 96-layer model is ~1200 ops
def step_ops(
    spec: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    weight_dtype: DType = FP16,
    kv_dtype: DType = FP16,
    act_dtype: DType = FP16,
    all_logits: bool = False,
) -> tuple[Op, ...]:
    """All ops of one forward step: embedding, every decoder layer (labelled 0..L-1), final norm + head."""
    ops: list[Op] = [embedding_op(spec, batch, seq_len, weight_dtype, act_dtype)]
    kinds = {
        moe: _layer0_ops(spec, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype, act_dtype, moe)
        for moe in {spec.layer_is_moe(i) for i in range(spec.layers)}
    }
    ops.extend(kinds[spec.layer_is_moe(0)])
    for i in range(1, spec.layers):
        ops.extend(relabel(kinds[spec.layer_is_moe(i)], i))
    ops.extend(lm_head_ops(spec, phase, batch, seq_len, weight_dtype, act_dtype, all_logits))
    return tuple(ops)


def total(ops: tuple[Op, ...] | list[Op], field: str = "flops") -> float:
    """Sum one numeric field (``flops``, ``weight_bytes``, ``mem_bytes``, ...) over ops."""
    return float(sum(getattr(o, field) for o in ops))


__all__ = [
    "decoder_layer_ops",
    "distinct_experts",
    "embedding_op",
    "expected_distinct_experts",
    "layer_weight_tensors",
    "lm_head_ops",
    "module_weight_bytes",
    "relabel",
    "step_ops",
    "total",
]
