"""Built-in model shapes, by name, and ``get_model`` for a name or a ``config.json`` path.

Shapes are copied from the official Hugging Face ``config.json`` of each model (facebook/opt-*,
meta-llama/Llama-2-*-hf, meta-llama/Meta-Llama-3-*, Qwen/Qwen-72B, mistralai/Mixtral-8x7B-v0.1) and
cross-checked with FlexGen's ``opt_config.py`` and xFasterTransformer's ``config.ini``
(FlexGen, arXiv 2303.06865 and xFT, arXiv 2407.00029). Parameter counts are tested against the
published ones in ``tests/test_models.py``.
"""

from __future__ import annotations

from pathlib import Path

from hetsim.errors import InputError
from hetsim.models.hf_config import load_hf_config
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
    listing the known ones.
    """
    key = _normalise(name_or_path)
    if key in _MODELS:
        return _MODELS[key]
    p = Path(name_or_path)
    if name_or_path.endswith(".json") or p.exists():
        return load_hf_config(p)
    raise InputError(
        f"unknown model {name_or_path!r}; known: {', '.join(_MODELS)} (or a path to a config.json)",
        field="model",
    )
