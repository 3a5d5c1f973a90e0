"""Build a ``ModelSpec`` from a Hugging Face ``config.json``.

Supported ``model_type``: llama, mistral, mixtral, qwen2, opt, and the original Qwen ("qwen",
``trust_remote_code`` configs such as Qwen-72B, whose ``intermediate_size`` counts gate and up
together, so the per-matrix size is half of it). Anything wrong in the file raises ``InputError``
naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hetsim.errors import InputError
from hetsim.models.spec import ModelSpec
from hetsim.textfiles import read_text

SUPPORTED = ("llama", "mistral", "mixtral", "qwen2", "qwen", "opt")


# Upper bounds on shapes, far past any real model (the largest today have ~120 layers, hidden ~20k,
# vocab ~250k, 256 routed experts), so an absurd config is an input error rather than a MemoryError
# or an hour of simulated layers.
_MAX = {"num_hidden_layers": 10_000, "num_local_experts": 4096, "num_experts_per_tok": 4096}
_MAX_DEFAULT = 10**8


class _Reader:
    def __init__(self, cfg: dict[str, Any], source: str):
        self.cfg = cfg
        self.source = source

    def err(self, field: str, msg: str) -> InputError:
        return InputError(msg, source=self.source, field=field)

    def int(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        if key not in self.cfg or self.cfg[key] is None:
            if default is None:
                raise self.err(key, "missing required field")
            return default
        v = self.cfg[key]
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise self.err(key, f"expected an integer, got {v!r}")
        if v < minimum:
            raise self.err(key, f"must be >= {minimum}, got {v}")
        top = _MAX.get(key, _MAX_DEFAULT)
        if v > top:
            raise self.err(key, f"must be <= {top} (far past any real model), got {v}")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.err(key, f"expected true or false, got {v!r}")
        return v


def spec_from_hf_dict(
    cfg: dict[str, Any], *, source: str = "config.json", name: str | None = None
) -> ModelSpec:
    """Turn a parsed ``config.json`` dict into a ``ModelSpec``; ``source`` names it in errors."""
    if not isinstance(cfg, dict):
        raise InputError("expected a JSON object at the top level", source=source)
    r = _Reader(cfg, source)
    mt = cfg.get("model_type")
    if mt is None:
        raise r.err("model_type", f"missing; supported: {', '.join(SUPPORTED)}")
    if not isinstance(mt, str) or mt.lower() not in SUPPORTED:
        raise r.err("model_type", f"unsupported model family {mt!r}; supported: {', '.join(SUPPORTED)}")
    mt = mt.lower()
    if name is None:
        raw = cfg.get("_name_or_path")
        name = raw.rstrip("/").split("/")[-1].lower() if isinstance(raw, str) and raw else None
    name = name or Path(source).parent.name or Path(source).stem

    if mt == "opt":
        return _opt(r, name)
    if mt == "qwen":
        return _qwen1(r, name)

    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    kv_heads = r.int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise r.err("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    head_dim = _head_dim(r, hidden, heads)
    num_experts, top_k = 1, 1
    if mt == "mixtral":
        num_experts = r.int("num_local_experts")
        top_k = r.int("num_experts_per_tok")
        if top_k > num_experts:
            raise r.err("num_experts_per_tok", f"{top_k} exceeds num_local_experts {num_experts}")
    attention_bias = r.bool("attention_bias", False)
    # qwen2 always has q/k/v biases (and none on o_proj or the MLP). ModelSpec has one flag for
    # "out_proj and MLP" biases; a llama config with attention_bias but no mlp_bias loses the o_proj
    # bias (hidden parameters per layer, negligible).
    qkv_bias = True if mt == "qwen2" else attention_bias
    linear_bias = False if mt == "qwen2" else r.bool("mlp_bias", False)
    return ModelSpec(
        name=name,
        family="llama" if mt == "llama" else mt,  # type: ignore[arg-type]
        hidden=hidden,
        layers=r.int("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=r.int("intermediate_size"),
        vocab=r.int("vocab_size"),
        max_position=r.int("max_position_embeddings", 2048),
        gated_mlp=True,
        qkv_bias=qkv_bias,
        linear_bias=linear_bias,
        learned_positions=0,
        tied_embeddings=r.bool("tie_word_embeddings", False),
        num_experts=num_experts,
        experts_per_token=top_k,
        norm="rmsnorm",
    )


def _head_dim(r: _Reader, hidden: int, heads: int) -> int:
    if r.cfg.get("head_dim") is not None:
        return r.int("head_dim")
    if hidden % heads:
        raise r.err("num_attention_heads", f"{heads} does not divide hidden_size {hidden}; set head_dim")
    return hidden // heads


def _opt(r: _Reader, name: str) -> ModelSpec:
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    if hidden % heads:
        raise r.err("num_attention_heads", f"{heads} does not divide hidden_size {hidden}")
    proj = r.int("word_embed_proj_dim", hidden)
    if proj != hidden:
        raise r.err(
            "word_embed_proj_dim", f"{proj} != hidden_size {hidden} (project_in/out) is not supported"
        )
    if not r.bool("do_layer_norm_before", True):
        raise r.err("do_layer_norm_before", "post-norm OPT (opt-350m) is not supported")
    max_pos = r.int("max_position_embeddings")
    return ModelSpec(
        name=name,
        family="opt",
        hidden=hidden,
        layers=r.int("num_hidden_layers"),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=r.int("ffn_dim"),
        vocab=r.int("vocab_size"),
        max_position=max_pos,
        gated_mlp=False,
        qkv_bias=r.bool("enable_bias", True),
        linear_bias=r.bool("enable_bias", True),
        learned_positions=max_pos + 2,  # OPTLearnedPositionalEmbedding keeps an offset of 2 rows
        tied_embeddings=r.bool("tie_word_embeddings", True),
        norm="layernorm",
    )


def _qwen1(r: _Reader, name: str) -> ModelSpec:
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    head_dim = r.int("kv_channels", hidden // heads if hidden % heads == 0 else None)
    both = r.int("intermediate_size")
    if both % 2:
        raise r.err("intermediate_size", f"{both} is not even (Qwen counts gate and up together)")
    return ModelSpec(
        name=name,
        family="qwen2",
        hidden=hidden,
        layers=r.int("num_hidden_layers"),
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        intermediate=both // 2,
        vocab=r.int("vocab_size"),
        max_position=r.int("max_position_embeddings", r.int("seq_length", 2048)),
        gated_mlp=True,
        qkv_bias=True,  # c_attn has a bias; c_proj and the MLP do not (no_bias: true)
        linear_bias=not r.bool("no_bias", True),
        learned_positions=0,
        tied_embeddings=r.bool("tie_word_embeddings", False),
        norm="rmsnorm",
    )


def load_hf_config(path: str | Path, *, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face ``config.json`` (or a directory holding one) into a ``ModelSpec``."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    src = str(p)
    text = read_text(p)
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}", source=src) from None
    return spec_from_hf_dict(cfg, source=src, name=name)
