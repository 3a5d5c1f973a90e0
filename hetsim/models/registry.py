"""Built-in model shapes, by name, and ``get_model`` for a name or a ``config.json`` path.

Shapes are copied from the official Hugging Face ``config.json`` of each model (facebook/opt-*,
meta-llama/Llama-2-*-hf, meta-llama/Meta-Llama-3-*, Qwen/Qwen-72B, mistralai/Mixtral-8x7B-v0.1) and
cross-checked with FlexGen's ``opt_config.py`` and xFasterTransformer's ``config.ini``
(FlexGen, arXiv 2303.06865 and xFT, arXiv 2407.00029). DeepSeek-V3 (deepseek-ai/DeepSeek-V3),
Qwen3-30B-A3B and Qwen3-235B-A22B (Qwen/*) are built from the fields of their official config.json
through ``hf_config``. Parameter counts are tested against the published ones in
``tests/test_models.py``.
"""

from __future__ import annotations

from pathlib import Path

from hetsim.errors import InputError
from hetsim.models.hf_config import load_hf_config, spec_from_hf_dict
from hetsim.models.spec import ModelSpec

# Re-exported so ``from hetsim.models.registry import param_count`` works.
from hetsim.models.weights import (  # noqa: F401
    active_param_count,
    embedding_bytes,
    kv_bytes_per_token,
    layer_weight_bytes,
    lm_head_bytes,
    param_count,
    weight_bytes,
)


def _opt(name: str, hidden: int, layers: int, heads: int) -> ModelSpec:
    # OPT: ffn = 4h, learned positions (2048 + 2 offset rows), biases everywhere, tied embeddings,
    # pre-LayerNorm, vocab 50272, head_dim 128 for all sizes listed here.
    return ModelSpec(
        name=name,
        family="opt",
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=4 * hidden,
        vocab=50272,
        max_position=2048,
        gated_mlp=False,
        qkv_bias=True,
        linear_bias=True,
        learned_positions=2048 + 2,
        tied_embeddings=True,
        norm="layernorm",
    )


def _llama(
    name: str,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    inter: int,
    vocab: int,
    max_pos: int,
    *,
    family: str = "llama",
    qkv_bias: bool = False,
    experts: int = 1,
    top_k: int = 1,
) -> ModelSpec:
    return ModelSpec(
        name=name,
        family=family,  # type: ignore[arg-type]
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate=inter,
        vocab=vocab,
        max_position=max_pos,
        gated_mlp=True,
        qkv_bias=qkv_bias,
        linear_bias=False,
        learned_positions=0,
        tied_embeddings=False,
        num_experts=experts,
        experts_per_token=top_k,
        norm="rmsnorm",
    )


def _moe(name: str, **cfg: object) -> ModelSpec:
    """A model from the fields of its official config.json (only those hetsim reads)."""
    return spec_from_hf_dict(dict(cfg), source=f"built-in {name}", name=name)


_DEEPSEEK_V3 = _moe(
    # deepseek-ai/DeepSeek-V3 config.json (also V3-0324 and R1, same shape); the MTP module
    # (num_nextn_predict_layers 1) is not part of the served model and is left out.
    "deepseek-v3",
    model_type="deepseek_v3",
    hidden_size=7168,
    intermediate_size=18432,
    moe_intermediate_size=2048,
    num_hidden_layers=61,
    num_attention_heads=128,
    num_key_value_heads=128,
    n_routed_experts=256,
    n_shared_experts=1,
    num_experts_per_tok=8,
    first_k_dense_replace=3,
    moe_layer_freq=1,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    vocab_size=129280,
    max_position_embeddings=163840,
    tie_word_embeddings=False,
)
_QWEN3_MOE = {
    "model_type": "qwen3_moe",
    "head_dim": 128,
    "num_experts_per_tok": 8,
    "num_experts": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
}
_QWEN3_30B = _moe(  # Qwen/Qwen3-30B-A3B config.json
    "qwen3-30b-a3b",
    **_QWEN3_MOE,
    hidden_size=2048,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
)
_QWEN3_235B = _moe(  # Qwen/Qwen3-235B-A22B config.json
    "qwen3-235b-a22b",
    **_QWEN3_MOE,
    hidden_size=4096,
    intermediate_size=12288,
    moe_intermediate_size=1536,
    num_hidden_layers=94,
    num_attention_heads=64,
    num_key_value_heads=4,
)

_MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _opt("opt-6.7b", 4096, 32, 32),
        _opt("opt-13b", 5120, 40, 40),
        _opt("opt-30b", 7168, 48, 56),
        _opt("opt-66b", 9216, 64, 72),
        _opt("opt-175b", 12288, 96, 96),
        _llama("llama2-7b", 4096, 32, 32, 32, 11008, 32000, 4096),
        _llama("llama2-13b", 5120, 40, 40, 40, 13824, 32000, 4096),
        _llama("llama2-70b", 8192, 80, 64, 8, 28672, 32000, 4096),
        _llama("llama3-8b", 4096, 32, 32, 8, 14336, 128256, 8192),
        _llama("llama3-70b", 8192, 80, 64, 8, 28672, 128256, 8192),
        # Qwen-72B (original, model_type "qwen"): its config's intermediate_size 49152 counts gate and
        # up together; per matrix it is 24576. MHA, bias on the fused qkv only, untied head.
        _llama("qwen-72b", 8192, 80, 64, 64, 24576, 152064, 32768, family="qwen2", qkv_bias=True),
        _llama("mixtral-8x7b", 4096, 32, 32, 8, 14336, 32000, 32768, family="mixtral", experts=8, top_k=2),
        _DEEPSEEK_V3,
        _QWEN3_30B,
        _QWEN3_235B,
    )
}

# Spellings people type, mapped to registry names.
_ALIASES = {
    "llama-2-7b": "llama2-7b",
    "llama-2-13b": "llama2-13b",
    "llama-2-70b": "llama2-70b",
    "llama-3-8b": "llama3-8b",
    "llama-3-70b": "llama3-70b",
    "meta-llama-3-8b": "llama3-8b",
    "meta-llama-3-70b": "llama3-70b",
    "llama-2-7b-hf": "llama2-7b",
    "llama-2-13b-hf": "llama2-13b",
    "llama-2-70b-hf": "llama2-70b",
    "qwen1-72b": "qwen-72b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "deepseek-r1": "deepseek-v3",
    "deepseek-v3-0324": "deepseek-v3",
    "qwen3-30b": "qwen3-30b-a3b",
    "qwen3-235b": "qwen3-235b-a22b",
}


def list_models() -> list[str]:
    """Names of the built-in models, in registry order."""
    return list(_MODELS)


def _normalise(name: str) -> str:
    n = name.strip().lower()
    if "/" in n and not n.endswith(".json"):
        n = n.rsplit("/", 1)[-1]  # "meta-llama/Llama-2-70b-hf" -> "llama-2-70b-hf"
    return _ALIASES.get(n, n)


def get_model(name_or_path: str) -> ModelSpec:
    """A registry model by name, or a ``ModelSpec`` read from a Hugging Face ``config.json`` path.

    A path is anything that exists on disk or ends in ``.json``. Unknown names raise ``InputError``
    listing the known ones. A path on disk (one with a slash) is read even where its last part names a
    built-in model: ``./Llama-2-7B``, a download whose config.json may differ from the catalogue's.
    """
    p = Path(name_or_path)
    if "/" in name_or_path and p.exists():
        return load_hf_config(p)
    key = _normalise(name_or_path)
    if key in _MODELS:
        return _MODELS[key]
    if name_or_path.endswith(".json") or (name_or_path and p.exists()):  # '' is no path ('.')
        return load_hf_config(p)
    # a name with a slash is a Hub id ("meta-llama/Llama-2-70b-hf") or a path: say it is neither
    missing = "; no file or folder by that path either" if "/" in name_or_path else ""
    raise InputError(
        f"unknown model {name_or_path!r}{missing}; known: {', '.join(_MODELS)} (or a path to a config.json)",
        field="model",
    )
