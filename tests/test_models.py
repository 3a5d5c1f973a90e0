"""Tests for hetsim.models: registry shapes, parameter counts, bytes, config.json parsing, ops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hetsim.errors import InputError
from hetsim.models import (
    FP16,
    FP32,
    INT4,
    INT8,
    OpKind,
    active_param_count,
    embedding_bytes,
    get_model,
    kv_bytes_per_token,
    layer_weight_bytes,
    layer_weight_tensors,
    list_models,
    lm_head_bytes,
    load_hf_config,
    module_weight_bytes,
    param_count,
    weight_bytes,
)
from hetsim.models.layer_ops import (
    decoder_layer_ops,
    embedding_op,
    expected_distinct_experts,
    lm_head_ops,
    step_ops,
    total,
)
from hetsim.models.spec import FLEXGEN_INT4
from hetsim.models.weights import embedding_param_count

GiB = 2**30

# Published parameter counts. Sources:
# - OPT: Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models" (Table 1, 6.7B ... 175B)
#   and the parameter counts of the facebook/opt-* checkpoints on the Hugging Face Hub
#   (opt-6.7b 6.66B, opt-13b 12.85B, opt-30b 29.97B, opt-66b 65.7B); OPT-175B ≈ 174.6B (FlexGen's
#   opt_config.py shapes, 96 × 12h² + embeddings).
# - Llama 2: Touvron et al. 2023 and the meta-llama/Llama-2-*-hf model cards / safetensors metadata
#   (6.74B, 13.02B, 68.98B; xFT, arXiv 2407.00029 also lists 68.98B).
# - Llama 3: meta-llama/Meta-Llama-3-8B and -70B model cards / safetensors metadata (8.03B, 70.55B).
# - Qwen-72B: xFasterTransformer config.ini shapes as summarised in xFT, arXiv 2407.00029: 72.28B.
# - Mixtral 8x7B: Mistral AI, "Mixtral of experts" (blog, Dec 2023) and Jiang et al. 2024:
#   46.7B total, 12.9B active per token.
PUBLISHED = {
    "opt-6.7b": 6.66e9,
    "opt-13b": 12.85e9,
    "opt-30b": 29.97e9,
    "opt-66b": 65.7e9,
    "opt-175b": 174.6e9,
    "llama2-7b": 6.74e9,
    "llama2-13b": 13.02e9,
    "llama2-70b": 68.98e9,
    "llama3-8b": 8.03e9,
    "llama3-70b": 70.55e9,
    "qwen-72b": 72.28e9,
    "mixtral-8x7b": 46.7e9,
    "deepseek-v3": 671e9,  # DeepSeek-V3 Technical Report, arXiv:2412.19437 (without the 14B MTP module)
    "qwen3-30b-a3b": 30.5e9,  # Qwen/Qwen3-30B-A3B model card
    "qwen3-235b-a22b": 235e9,  # Qwen/Qwen3-235B-A22B model card
}

DENSE = [n for n in PUBLISHED if not get_model(n).is_moe]


def test_registry_lists_all_models():
    assert set(list_models()) == set(PUBLISHED)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_param_count_matches_published(name):
    got = param_count(get_model(name))
    assert got == pytest.approx(PUBLISHED[name], rel=0.005), f"{name}: {got / 1e9:.3f}B"


def test_exact_hf_param_counts():
    # Exact counts of the HF checkpoints (safetensors metadata).
    assert param_count(get_model("llama2-7b")) == 6_738_415_616
    assert param_count(get_model("llama2-70b")) == 68_976_648_192
    assert param_count(get_model("llama3-8b")) == 8_030_261_248
    assert param_count(get_model("opt-6.7b")) == 6_658_473_984


def test_mixtral_active_params():
    m = get_model("mixtral-8x7b")
    assert active_param_count(m) == pytest.approx(12.9e9, rel=0.005)
    assert active_param_count(get_model("llama2-7b")) == param_count(get_model("llama2-7b"))


def test_qwen72b_breakdown_matches_cputp():
    m = get_model("qwen-72b")
    layers = m.layers * layer_weight_bytes(m, FP16) / 2
    assert layers == pytest.approx(69.79e9, rel=0.001)
    assert embedding_param_count(m) == pytest.approx(1.25e9, rel=0.01)
    # Weights read per decode step (layers + LM head) ≈ 142.1 GB at 2 B/weight.
    assert (m.layers * layer_weight_bytes(m, FP16) + lm_head_bytes(m, FP16)) == pytest.approx(
        142.1e9, rel=0.002
    )


def test_opt30b_layer_bytes_match_flexgen():
    m = get_model("opt-30b")
    h = m.hidden
    biases = (3 * h + h + 4 * h + h + 4 * h) * 2  # q,k,v,out biases, fc1, fc2 biases, 2 LayerNorms (w+b)
    # FlexGen: 8h² + 4h·h2 bytes per layer with h2 = 4h (already fp16 bytes) = 24h² = 1.148 GiB.
    assert layer_weight_bytes(m, FP16) == 24 * h * h + biases
    assert (24 * h * h) / GiB == pytest.approx(1.148, abs=0.001)
    assert layer_weight_bytes(m, FP16) / GiB == pytest.approx(1.148, abs=0.002)
    # FlexGen's total 55.8 GiB (layers only); plus embeddings.
    assert m.layers * 24 * h * h / GiB == pytest.approx(55.1, abs=0.1)


def test_flexgen_tensor_order_opt():
    names = [t.name for t in layer_weight_tensors(get_model("opt-30b"))]
    assert names == [
        "q_proj.weight",
        "q_proj.bias",
        "k_proj.weight",
        "k_proj.bias",
        "v_proj.weight",
        "v_proj.bias",
        "out_proj.weight",
        "out_proj.bias",
        "norm1.weight",
        "norm1.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    blocks = [t.block for t in layer_weight_tensors(get_model("opt-30b"))]
    assert blocks == ["attention"] * 10 + ["mlp"] * 6


def test_module_weight_bytes_sum_to_layer():
    for name in ("opt-30b", "llama2-70b", "mixtral-8x7b"):
        m = get_model(name)
        mods = module_weight_bytes(m, FP16)
        norms = (4 if m.norm == "layernorm" else 2) * m.hidden * 2
        assert sum(mods.values()) + norms == layer_weight_bytes(m, FP16)
    assert list(module_weight_bytes(get_model("opt-30b"), FP16)) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
    ]


def test_kv_bytes_per_token():
    assert kv_bytes_per_token(get_model("llama2-70b"), FP16) == 2 * 80 * 8 * 128 * 2 == 327680
    assert kv_bytes_per_token(get_model("qwen-72b"), FP16) == pytest.approx(2.62e6, rel=0.001)
    # FlexGen: 4·h1 bytes per token per layer for OPT in fp16.
    m = get_model("opt-30b")
    assert kv_bytes_per_token(m, FP16) == 4 * m.hidden * m.layers
    assert kv_bytes_per_token(m, INT8) == kv_bytes_per_token(m, FP16) / 2


def test_gqa_reduces_kv():
    l2, l3 = get_model("llama2-7b"), get_model("llama3-8b")  # same h, L; MHA vs GQA 8
    assert kv_bytes_per_token(l3, FP16) == kv_bytes_per_token(l2, FP16) / 4
    assert kv_bytes_per_token(get_model("llama2-70b"), FP16) * 8 == kv_bytes_per_token(
        get_model("qwen-72b"), FP16
    )


def test_dtype_bytes():
    # group-128 weight-only formats (GPTQ/AWQ): fp16 scale + a zero at the weight's width per group
    assert INT4.bytes_per_element == 0.5 + 2.5 / 128
    assert INT8.bytes_per_element == 1 + 3 / 128
    assert FLEXGEN_INT4.bytes_per_element == 0.5625  # FlexGen: group 64, fp16 scale and min
    m = get_model("llama2-70b")
    # Matrices scale with dtype, vectors stay 16-bit.
    vec = 2 * m.hidden * 2
    assert layer_weight_bytes(m, INT4) == pytest.approx(
        (layer_weight_bytes(m, FP16) - vec) * INT4.bytes_per_element / 2 + vec
    )
    assert weight_bytes(m, FP32) == pytest.approx(2 * weight_bytes(m, FP16), rel=1e-4)
    # Tied head counted once.
    o = get_model("opt-6.7b")
    assert weight_bytes(o, FP16) == pytest.approx(2 * param_count(o))
    assert weight_bytes(m, FP16) == pytest.approx(2 * param_count(m))
    assert embedding_bytes(o, FP16) == (o.vocab + 2050) * o.hidden * 2


# ---------- config.json ----------

LLAMA2_7B_CONFIG = {
    "_name_or_path": "meta-llama/Llama-2-7b-hf",
    "architectures": ["LlamaForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vocab_size": 32000,
}


def _write(tmp_path: Path, cfg, name="config.json") -> Path:
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return p


def test_config_round_trip_llama(tmp_path):
    p = _write(tmp_path, LLAMA2_7B_CONFIG)
    spec = load_hf_config(p)
    ref = get_model("llama2-7b")
    assert spec == ref.__class__(**{**ref.__dict__, "name": spec.name})
    assert spec.name == "llama-2-7b-hf"
    assert param_count(spec) == param_count(ref)
    # get_model accepts the path (file or directory) too.
    assert get_model(str(p)) == spec
    assert get_model(str(tmp_path)) == spec


def test_config_opt_mixtral_qwen2(tmp_path):
    opt = {
        "model_type": "opt",
        "hidden_size": 7168,
        "num_hidden_layers": 48,
        "num_attention_heads": 56,
        "ffn_dim": 28672,
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
        "word_embed_proj_dim": 7168,
        "enable_bias": True,
        "do_layer_norm_before": True,
    }
    s = load_hf_config(_write(tmp_path, opt))
    assert param_count(s) == param_count(get_model("opt-30b"))
    mix = {
        "model_type": "mixtral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
    }
    s = load_hf_config(_write(tmp_path, mix, "mix.json"))
    assert param_count(s) == param_count(get_model("mixtral-8x7b"))
    assert active_param_count(s) == active_param_count(get_model("mixtral-8x7b"))
    qwen2 = {
        "model_type": "qwen2",
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
    }
    s = load_hf_config(_write(tmp_path, qwen2, "q2.json"))
    assert s.qkv_bias and not s.linear_bias and s.family == "qwen2"
    assert param_count(s) == pytest.approx(72.7e9, rel=0.005)  # Qwen2-72B: 72.7B


def test_config_original_qwen(tmp_path):
    # Qwen-72B's own config (model_type "qwen"): intermediate_size counts gate + up together.
    cfg = {
        "model_type": "qwen",
        "hidden_size": 8192,
        "intermediate_size": 49152,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "kv_channels": 128,
        "vocab_size": 152064,
        "seq_length": 32768,
        "max_position_embeddings": 32768,
        "no_bias": True,
        "tie_word_embeddings": False,
    }
    s = load_hf_config(_write(tmp_path, cfg))
    ref = get_model("qwen-72b")
    assert s.intermediate == 24576
    assert param_count(s) == param_count(ref)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c.pop("hidden_size"), "hidden_size"),
        (lambda c: c.update(num_hidden_layers=-2), "num_hidden_layers"),
        (lambda c: c.update(vocab_size="big"), "vocab_size"),
        (lambda c: c.update(model_type="bloom"), "model_type"),
        (lambda c: c.pop("model_type"), "model_type"),
        (lambda c: c.update(num_key_value_heads=5), "num_key_value_heads"),
        (lambda c: c.update(tie_word_embeddings="yes"), "tie_word_embeddings"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, mutate, field):
    cfg = dict(LLAMA2_7B_CONFIG)
    mutate(cfg)
    p = _write(tmp_path, cfg)
    with pytest.raises(InputError) as ei:
        load_hf_config(p)
    assert ei.value.source == str(p)
    assert ei.value.field == field
    assert str(p) in str(ei.value) and field in str(ei.value)


def test_malformed_json_and_missing_file(tmp_path):
    p = _write(tmp_path, '{"model_type": "llama",')
    with pytest.raises(InputError) as ei:
        load_hf_config(p)
    assert ei.value.source == str(p) and "JSON" in ei.value.message
    with pytest.raises(InputError) as ei:
        load_hf_config(tmp_path / "nope.json")
    assert "nope.json" in str(ei.value)
    with pytest.raises(InputError):
        load_hf_config(_write(tmp_path, "[1, 2]", "list.json"))


def test_unknown_model_name_lists_known():
    with pytest.raises(InputError) as ei:
        get_model("gpt-5")
    msg = str(ei.value)
    assert "gpt-5" in msg and "llama2-70b" in msg and "opt-30b" in msg


def test_model_name_aliases():
    assert get_model("meta-llama/Llama-2-70b-hf") is get_model("llama2-70b")
    assert get_model("OPT-30B") is get_model("opt-30b")


# ---------- ops ----------


@pytest.mark.parametrize("name", DENSE)
def test_decode_flops_about_2_params_batch(name):
    m = get_model(name)
    batch = 8
    flops = total(step_ops(m, "decode", batch, 1, 16))
    # Every non-embedding parameter does one multiply-add per token (the embedding is a gather).
    gathered = param_count(m) - embedding_param_count(m) + (m.vocab * m.hidden if m.tied_embeddings else 0)
    assert flops == pytest.approx(2 * gathered * batch, rel=0.02)


@pytest.mark.parametrize("name", ["llama2-70b", "opt-30b", "opt-175b", "llama3-70b"])
def test_decode_flops_2_params_batch_large_dense(name):
    m = get_model(name)
    flops = total(step_ops(m, "decode", 4, 1, 64))
    assert flops == pytest.approx(2 * param_count(m) * 4, rel=0.02)


def test_layer_op_order_and_fields():
    m = get_model("opt-30b")
    ops = decoder_layer_ops(m, "decode", 4, 1, 513)
    assert [o.name for o in ops] == [
        "norm1",
        "q_proj",
        "k_proj",
        "v_proj",
        "attention",
        "out_proj",
        "residual1",
        "norm2",
        "fc1",
        "act",
        "fc2",
        "residual2",
    ]
    q = ops[1]
    h = m.hidden
    assert q.kind == OpKind.MATMUL and q.module == "q_proj"
    assert q.flops == 2 * 4 * h * h
    assert q.weight_bytes == h * h * 2 + h * 2
    assert q.act_in_bytes == 4 * h * 2 and q.act_out_bytes == 4 * h * 2
    att = ops[4]
    assert att.kind == OpKind.ATTENTION
    assert att.flops == 4 * 4 * m.heads * 1 * 513 * m.head_dim
    assert att.kv_read_bytes == 4 * 513 * 2 * m.kv_heads * m.head_dim * 2
    assert att.kv_write_bytes == 4 * 1 * 2 * m.kv_heads * m.head_dim * 2
    # Matmul weight bytes of a layer = module bytes.
    mods = module_weight_bytes(m, FP16)
    assert {o.module: o.weight_bytes for o in ops if o.kind == OpKind.MATMUL} == mods


def test_prefill_kv_semantics():
    m = get_model("llama2-70b")
    kvt = 2 * m.kv_heads * m.head_dim * 2
    fresh = next(o for o in decoder_layer_ops(m, "prefill", 2, 512, 512) if o.name == "attention")
    assert fresh.kv_read_bytes == 0
    assert fresh.kv_write_bytes == 2 * 512 * kvt
    assert fresh.flops == 4 * 2 * m.heads * 512 * 512 * m.head_dim  # full rectangle
    chunk = next(o for o in decoder_layer_ops(m, "prefill", 2, 256, 768) if o.name == "attention")
    assert chunk.kv_read_bytes == 2 * 512 * kvt


def test_gated_and_moe_layers():
    m = get_model("llama2-7b")
    names = [o.name for o in decoder_layer_ops(m, "decode", 1, 1, 10)]
    assert names[-5:] == ["gate_proj", "up_proj", "act", "down_proj", "residual2"]
    mx = get_model("mixtral-8x7b")
    ops = {o.name: o for o in decoder_layer_ops(mx, "decode", 1, 1, 10)}
    assert "router" in ops
    per_expert = mx.hidden * mx.intermediate * 2
    # One token, top-2: two experts' FLOPs and exactly two experts' weights.
    assert ops["gate_proj"].flops == 2 * 2 * mx.hidden * mx.intermediate
    assert ops["gate_proj"].weight_bytes == pytest.approx(2 * per_expert)
    big = {o.name: o for o in decoder_layer_ops(mx, "prefill", 8, 512, 512)}
    assert big["down_proj"].weight_bytes == pytest.approx(8 * per_expert)
    assert expected_distinct_experts(8, 2, 4) == pytest.approx(8 * (1 - 0.75**4))
    # Decode FLOPs per token ≈ 2 · active params (minus the embedding gather).
    flops = total(step_ops(mx, "decode", 1, 1, 8))
    assert flops == pytest.approx(2 * (active_param_count(mx) - embedding_param_count(mx)), rel=0.01)


def test_embedding_and_head():
    o = get_model("opt-6.7b")
    e = embedding_op(o, 2, 10)
    assert e.kind == OpKind.EMBEDDING and e.layer == -1
    assert e.weight_bytes == 2 * 20 * o.hidden * 2  # token row + position row per token
    l2 = get_model("llama2-7b")
    assert embedding_op(l2, 2, 10).weight_bytes == 20 * l2.hidden * 2
    norm, head = lm_head_ops(l2, "prefill", 2, 10)
    assert norm.name == "final_norm"
    assert head.layer == l2.layers and head.flops == 2 * 2 * l2.hidden * l2.vocab  # last token only
    _, head_all = lm_head_ops(l2, "prefill", 2, 10, all_logits=True)
    assert head_all.flops == 10 * head.flops


def test_step_ops_layers_and_dtypes():
    m = get_model("llama2-13b")
    ops = step_ops(m, "decode", 2, 1, 100, INT4, INT8, FP16)
    assert ops[0].layer == -1 and ops[-1].layer == m.layers
    assert sorted({o.layer for o in ops}) == list(range(-1, m.layers + 1))
    q = next(o for o in ops if o.name == "q_proj")
    assert q.compute_dtype == "fp16"
    assert q.weight_bytes == m.hidden * m.hidden * INT4.bytes_per_element
    # weight-only int4: 1.5 instructions per weight dequantised, once for up to 64 rows
    assert q.dequant_ops == m.hidden * m.hidden * 1.5
    att = next(o for o in ops if o.name == "attention")
    assert att.kv_read_bytes == 2 * 100 * 2 * m.kv_heads * m.head_dim * 1  # int8 KV: 1 B, per-tensor scale
    assert att.dequant_ops == 2 * 100 * 2 * m.kv_heads * m.head_dim  # one instruction per cached element
    q_prefill = decoder_layer_ops(m, "prefill", 2, 100, 100, INT4, FP16, FP16)[1]
    assert q_prefill.dequant_ops == m.hidden * m.hidden * 1.5 * 4  # 200 rows: four 64-row tiles
    q32 = decoder_layer_ops(m, "decode", 2, 1, 100, FP16, FP16, FP32)[1]
    assert q32.compute_dtype == "fp32"
    # Weight bytes of a decode step (fp16) = layers + LM head + gathered embedding rows.
    wb = total(ops := step_ops(m, "decode", 1, 1, 10), "weight_bytes")
    expect = m.layers * layer_weight_bytes(m, FP16) + lm_head_bytes(m, FP16) + m.hidden * 2
    assert wb == pytest.approx(expect)
    assert decoder_layer_ops(m, "decode", 1, 1, 10, layer=7)[0].layer == 7
    assert decoder_layer_ops(m, "decode", 1, 1, 10) is decoder_layer_ops(m, "decode", 1, 1, 10)


def test_bad_op_args():
    m = get_model("llama2-7b")
    with pytest.raises(ValueError):
        decoder_layer_ops(m, "train", 1, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decoder_layer_ops(m, "decode", 1, 4, 2)
