"""Bytes a deployment holds: weights by part, the KV cache, activations in flight (by dtype name)."""

from __future__ import annotations

from hetsim.models.spec import DTYPES, ModelSpec
from hetsim.models.weights import (
    embedding_bytes,
    kv_bytes_per_token_layer,
    layer_leaf_modules,
    layer_weight_bytes,
    lm_head_bytes,
    tensor_bytes,
)


def layer_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    return layer_weight_bytes(model, DTYPES[weight_dtype])


def largest_leaf_bytes(model: ModelSpec, weight_dtype: str = "fp16") -> float:
    """The largest leaf module of a decoder layer (OPT's fc1 with its bias, a gated projection): what a
    per-module hook holds on the GPU at once when it copies each module in before it runs."""
    dtype = DTYPES[weight_dtype]
    return max(sum(tensor_bytes(t, dtype) for t in leaf) for leaf in layer_leaf_modules(model))


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


# Bytes per element that Hugging Face transformers' eager OPT forward holds at its peak moments (fp16),
# as of transformers 4.26.1 (Jan 2023, the HF that FlexGen's baselines ran; its legacy tuple KV cache).
# Measured: tools/hf_opt_peak.py counts every storage torch allocates in ``OPTForCausalLM.forward``
# (torch 2.13; CUDA's half-to-float softmax, which needs no fp32 copy of its input, is what is counted)
# at 17 small shapes x 1-2 layers; a least-squares fit on 13 shapes reproduces the 4 held-out ones to
# the byte (tests/data/hf-opt-peak-4.26.1.csv, tests/test_hf_workspace.py). Terms: n tokens in the
# step, h hidden, f MLP inner, H heads, V vocab, kv keys attended to. Grade: measured.
# prefill: the fp16 scores, their fp32 softmax and its fp16 copy (8 B per score) beside the 4-D causal
#   mask (2 B per n x kv); at the MLP, fc1's output and its ReLU (4 B per n x f); the prompt's logits in
#   the full vocabulary (2 B per n x V: that forward returns every position's).
# decode: each layer's ``torch.cat([past, new])`` makes a new cache while the caller (``generate``)
#   still holds the old one until the step returns: a whole second KV cache (``hf_decode_workspace``).
#   Later transformers' DynamicCache frees each old layer as it goes (5.24.0, the other CSV there).
_HF_PREFILL = {
    "attention": {"nh": 10.0, "mask": 2.0, "scores": 8.0},
    "mlp": {"nh": 8.0, "mask": 2.0, "nf": 2.0},
    "logits": {"nh": 2.0, "nV": 2.0},
}
_HF_DECODE = {
    "attention": {"nh": 10.0, "mask": 2.0, "scores": 8.0},
    "kv_update": {"nh": 12.0, "mask": 2.0},
    "mlp": {"nh": 8.0, "mask": 2.0, "nf": 2.0},
    "logits": {"nh": 2.0, "nV": 2.0},
}
# The Llama-style eager forward (transformers 4.35.2, Nov 2023, the last with the tuple cache: Llama
# and Mistral; later families copy it), read from its code, not fitted: the same 8 B per score and
# 2 B mask; ``repeat_kv`` materialises K and V for every query head when there are fewer KV heads
# (``rep``: 2 x 2 B per sequence x key x head x head_dim; none with as many KV heads as heads, nor
# with one, whose repeat is a view); with one KV head and more than one sequence ``torch.matmul``
# cannot fold that view's zero-stride head dim into its batch and copies it (``mqa``: 2 B per sequence
# x key x head x head_dim, K at QK^T then V at probs x V; the later moment holds more: q, the fp16
# probabilities and the output beside the copy, ``attention_pv``); the
# gated MLP holds act(gate), up and their product at once (3 live n x f tensors, ``nf`` counts them);
# ``logits.float()`` adds an fp32 copy of the logits (2 + 4 B per n x V); the residual, the normed
# input and q (6 B per n x h) beside attention and the MLP. Checked against torch's own allocations
# (tools/hf_gated_peak.py -> tests/data/hf-gated-peak-4.35.2.csv, tests/test_hf_workspace.py).
_HF_GATED_PREFILL = {
    "attention": {"nh": 6.0, "mask": 2.0, "scores": 8.0, "rep": 4.0},
    "attention_pv": {"nh": 8.0, "mask": 2.0, "scores": 2.0, "mqa": 2.0},
    "mlp": {"nh": 6.0, "mask": 2.0, "nf": 2.0},
    "logits": {"nh": 2.0, "nV": 6.0},
}
_HF_GATED_DECODE = {
    "attention": {"nh": 6.0, "mask": 2.0, "scores": 8.0, "rep": 4.0},
    "attention_pv": {"nh": 8.0, "mask": 2.0, "scores": 2.0, "mqa": 2.0},
    "mlp": {"nh": 6.0, "mask": 2.0, "nf": 2.0},
    "logits": {"nh": 2.0, "nV": 6.0},
}


def _hf_moments(model: ModelSpec, batch: int, tokens: int, kv: int, coeffs: dict) -> float:
    widest = max(model.intermediate, model.dense_intermediate, model.shared_intermediate)
    n = batch * tokens
    terms = {
        "nh": n * model.hidden,
        "mask": n * kv,
        "scores": n * model.heads * kv,
        "nf": n * widest * (3 if model.gated_mlp else 2),  # live n x f tensors at the MLP's peak
        "nV": n * model.vocab,
        # one KV head (MQA) repeats as a view: expand then a reshape that needs no copy ...
        "rep": batch * kv * model.heads * model.head_dim if 1 < model.kv_heads < model.heads else 0,
        # ... which matmul copies once the batch dim cannot merge with its zero-stride heads
        "mqa": batch * kv * model.heads * model.head_dim
        if model.kv_heads == 1 < model.heads and batch > 1
        else 0,
    }
    return max(sum(c * terms[t] for t, c in moment.items()) for moment in coeffs.values())


def _tables(model: ModelSpec) -> tuple[dict, dict]:
    """(prefill, decode) moments of the HF eager forward the model's family runs."""
    if model.family == "opt":
        return _HF_PREFILL, _HF_DECODE
    return _HF_GATED_PREFILL, _HF_GATED_DECODE


def hf_eager_workspace(model: ModelSpec, batch: int, prompt_len: int, context_len: int) -> float:
    """Peak bytes HF transformers' eager generate holds beyond its weights and its KV cache booked at
    ``context_len`` tokens (fp16).

    The largest of the prefill of ``prompt_len`` tokens, the first decode step and the last one
    (``context_len`` keys); a decode step also holds the logits of the forward before it (``held_logits``),
    the prompt's at the first. OPT's constants are measured on OPT; every other family runs the
    Llama-style forward (constants read from Llama's and Mistral's code and checked against torch's
    allocations); MoE routing and MLA are not modelled beyond it."""
    last = hf_decode_workspace(model, batch, context_len) + held_logits(model, batch, 1)
    moments = [hf_prefill_workspace(model, batch, prompt_len), last]
    if context_len > prompt_len + 1:  # a second token is generated: a decode step holds the prompt's
        # its cache is prompt_len + 1 tokens, not the booked context_len
        unbooked = kv_cache_bytes(model, batch, prompt_len + 1, model.layers) - kv_cache_bytes(
            model, batch, context_len, model.layers
        )
        first = hf_decode_workspace(model, batch, prompt_len + 1) + held_logits(model, batch, prompt_len)
        moments.append(first + unbooked)
    return max(moments)


def held_logits(model: ModelSpec, batch: int, tokens: int) -> float:
    """The logits of a forward over ``tokens`` positions that ``generate`` still holds through the next
    step's forward: its loop rebinds ``outputs = self(...)`` only once that call returns, and
    ``next_token_logits`` is a view of them (transformers 4.25.1 generation/utils.py ``greedy_search``
    and ``sample``; the same loop in 4.35.2). After the prefill they are every prompt position's. OPT
    returns the LM head's fp16 output (modeling_opt.py ``OPTForCausalLM.forward``), the Llama-style
    forward its ``logits.float()`` copy (4 B; modeling_llama.py 4.35.2), the fp16 one freed. Later
    transformers ``del outputs`` at the loop's end for this reason (4.46.0 ``_sample``: "a reference to
    outputs.logits is kept all along until after the next call to self.forward()")."""
    returned = 2 if _tables(model)[0] is _HF_PREFILL else 4  # the forward the family runs (one home)
    return batch * tokens * model.vocab * returned


def hf_prefill_workspace(model: ModelSpec, batch: int, prompt_len: int) -> float:
    return _hf_moments(model, batch, prompt_len, prompt_len, _tables(model)[0])


def hf_decode_workspace(model: ModelSpec, batch: int, kv_len: int) -> float:
    """A decode step attending to ``kv_len`` keys: its moments plus the previous step's whole cache."""
    previous_cache = kv_cache_bytes(model, batch, kv_len - 1, model.layers)
    return _hf_moments(model, batch, 1, kv_len, _tables(model)[1]) + previous_cache
