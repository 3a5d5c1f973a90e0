"""Build a ``ModelSpec`` from a Hugging Face ``config.json``.

Supported ``model_type``: llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe, phi3, gemma2,
gemma3_text, falcon, gpt_neox, deepseek_v2, deepseek_v3, opt (with project_in/out), and the original
Qwen ("qwen", ``trust_remote_code`` configs such as Qwen-72B, whose ``intermediate_size`` counts gate
and up together, so the per-matrix size is half of it). Each family reads the fields its
``transformers`` implementation reads; parameter counts are tested equal to ``transformers`` on the
meta device. Anything wrong in the file raises ``InputError`` naming the file and the key, and so
does a field that changes the architecture where the family does not have it (a ``mistral`` config
with ``num_experts: 8`` is an MoE model that hetsim would otherwise read as dense), and a
``quantization_config`` whose weights hetsim does not model (GPTQ/AWQ 4- and 8-bit ones it does).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from hetsim.errors import InputError
from hetsim.models.spec import ModelSpec
from hetsim.models.weights import param_count
from hetsim.textfiles import parse_json, read_text

SUPPORTED = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "phi3",
    "gemma2",
    "gemma3_text",
    "falcon",
    "gpt_neox",
    "deepseek_v2",
    "deepseek_v3",
    "qwen",
    "opt",
)

# Fields that change the shape of the model, with what they mean. A config that sets one (to a value
# other than its neutral one) where its family does not read it is refused, never read as something
# smaller.
ARCH_FIELDS: dict[str, str] = {
    "num_experts": "MoE experts",
    "num_local_experts": "MoE experts",
    "n_routed_experts": "MoE experts",
    "num_experts_per_tok": "MoE routing",
    "num_experts_per_token": "MoE routing",
    "moe_intermediate_size": "MoE expert size",
    "shared_expert_intermediate_size": "shared experts",
    "n_shared_experts": "shared experts",
    "first_k_dense_replace": "dense first layers of an MoE model",
    "mlp_only_layers": "dense layers of an MoE model",
    "decoder_sparse_step": "MoE layer spacing",
    "moe_layer_freq": "MoE layer spacing",
    "kv_lora_rank": "multi-head latent attention",
    "q_lora_rank": "multi-head latent attention",
    "word_embed_proj_dim": "embedding projections",
    "parallel_attn": "parallel attention block",
    "new_decoder_architecture": "Falcon's new decoder layout",
    "num_kv_heads": "grouped KV heads (Falcon)",
    "multi_query": "multi-query attention",
    "qk_layernorm": "q/k norms",
    "num_nextn_predict_layers": "multi-token prediction layers",
}
_NEUTRAL: dict[str, object] = {"decoder_sparse_step": 1, "moe_layer_freq": 1}

_LLAMA_LIKE = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3"}
_UNDERSTOOD: dict[str, frozenset[str]] = {
    "mixtral": frozenset({"num_local_experts", "num_experts_per_tok"}),
    "qwen2_moe": frozenset(
        {
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "mlp_only_layers",
            "decoder_sparse_step",
        }
    ),
    "qwen3_moe": frozenset(
        {
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "mlp_only_layers",
            "decoder_sparse_step",
        }
    ),
    "falcon": frozenset({"parallel_attn", "new_decoder_architecture", "num_kv_heads", "multi_query"}),
    "deepseek_v2": frozenset(
        {
            "n_routed_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "n_shared_experts",
            "first_k_dense_replace",
            "moe_layer_freq",
            "kv_lora_rank",
            "q_lora_rank",
            "num_nextn_predict_layers",
        }
    ),
    "opt": frozenset({"word_embed_proj_dim"}),
}
_UNDERSTOOD["deepseek_v3"] = _UNDERSTOOD["deepseek_v2"]


# Upper bounds on shapes, far past any real model (the largest today have ~120 layers, hidden ~20k,
# vocab ~250k, 256 routed experts), so an absurd config is an input error rather than a MemoryError
# or an hour of simulated layers.
_MAX = {"num_hidden_layers": 10_000, "num_local_experts": 4096, "num_experts_per_tok": 4096}
_MAX_DEFAULT = 10**8
# ... and on their product: 100 trillion parameters, ~50 times the largest published model's (~2e12).
# Each shape under its own bound still multiplied to 7e20 parameters, its rows quoting 1e9 TB.
MAX_PARAMS = 10**14


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
    if mt == "gemma3" and isinstance(cfg.get("text_config"), dict):
        raise r.err(
            "model_type",
            "'gemma3' is the vision-language model; its decoder is supported: save its text_config as a "
            "config.json with model_type gemma3_text",
        )
    if not isinstance(mt, str) or mt.lower() not in SUPPORTED:
        raise r.err("model_type", f"unsupported model family {mt!r}; supported: {', '.join(SUPPORTED)}")
    mt = mt.lower()
    if name is None:
        raw = cfg.get("_name_or_path")
        name = raw.rstrip("/").split("/")[-1].lower() if isinstance(raw, str) and raw else None
    name = name or Path(source).parent.name or Path(source).stem

    _refuse_unknown_arch_fields(r, mt)
    spec = _family_spec(r, name, mt)
    if (n := param_count(spec)) > MAX_PARAMS:
        raise InputError(
            f"its shapes (hidden_size, intermediate_size, num_hidden_layers, vocab_size, experts) make "
            f"{n:.2g} parameters, far past any real model (at most {MAX_PARAMS:.0e})",
            source=source,
        )
    quantized = _checkpoint_quantization(r)
    head, router = _kept_apart(r, spec) if quantized else (False, False)
    return dataclasses.replace(
        spec, dtype=_checkpoint_dtype(r), quantized=quantized, quantized_head=head, router_16bit=router
    )


def _family_spec(r: _Reader, name: str, mt: str) -> ModelSpec:
    if mt == "opt":
        return _opt(r, name)
    if mt == "qwen":
        return _qwen1(r, name)
    if mt == "falcon":
        return _falcon(r, name)
    if mt == "gpt_neox":
        return _gpt_neox(r, name)
    if mt in ("deepseek_v2", "deepseek_v3"):
        return _deepseek(r, name, mt)
    if mt in ("gemma2", "gemma3_text"):
        return _gemma(r, name, mt)
    return _llama_like(r, name, mt)


# config.json ``torch_dtype`` (``dtype`` since transformers 4.56) -> hetsim's name; absent or "auto" = fp16
_CHECKPOINT_DTYPES = {
    "float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "auto": "fp16",
}  # fmt: skip


def _checkpoint_dtype(r: _Reader) -> str:
    key = "torch_dtype" if "torch_dtype" in r.cfg else "dtype"
    v = r.cfg.get(key)
    if v is None:
        return "fp16"
    if not isinstance(v, str) or v.removeprefix("torch.") not in _CHECKPOINT_DTYPES:
        known = ", ".join(sorted(k for k in _CHECKPOINT_DTYPES if k != "auto"))
        raise r.err(key, f"unknown precision {v!r} (expected one of {known})")
    return _CHECKPOINT_DTYPES[v.removeprefix("torch.")]


# ``quantization_config`` methods whose weights hetsim models: GPTQ (Frantar et al., arXiv:2210.17323) and
# AWQ (Lin et al., arXiv:2306.00978) store ``bits``-wide weights in groups of ``group_size`` along the
# input, each group with an fp16 scale and a packed zero (transformers 4.46.3,
# src/transformers/utils/quantization_config.py:548 ``GPTQConfig``: bits, group_size 128 by default, -1
# per column; :765 ``AwqConfig``: bits 4 and group_size 128 by default). At 4 or 8 bits and group 128
# that is hetsim's ``int4``/``int8`` (``models.spec``); AWQ without zero points stores half a byte less
# per group of 128 weights (under 1 %), ignored. AWQ is 4-bit only: every AutoAWQ kernel refuses another
# width (autoawq 0.2.7 awq/modules/linear/gemm.py:120, gemv.py:31, marlin.py:45, exllamav2.py:18), so an
# 8-bit AWQ config is no checkpoint that runs. Other widths and group sizes, and other methods
# (bitsandbytes' nf4/int8, fp8, compressed-tensors, hqq...), are refused: hetsim has no model of their
# bytes or kernels.
_QUANT_METHODS = ("gptq", "awq")
_QUANT_BITS = {4: "int4", 8: "int8"}
_AWQ_BITS = {4: "int4"}
_QUANT_GROUP = 128
_QUANT_INSTEAD = (
    "remove quantization_config from the file and pass --dtype (int4, int8, fp16, bf16) to cost it at a "
    "precision hetsim models"
)


def _checkpoint_quantization(r: _Reader) -> Literal["", "int4", "int8"]:
    """The weight dtype of a quantised checkpoint (``quantization_config``), "" for none."""
    q = r.cfg.get("quantization_config")
    if q is None:
        return ""
    if not isinstance(q, dict):
        raise r.err("quantization_config", f"expected an object, got {q!r:.40}")
    method = q.get("quant_method")
    known = "gptq at 4 or 8 bits or awq at 4, in groups of 128"
    if method not in _QUANT_METHODS:
        msg = f"{method!r:.40} weights are not a format hetsim models ({known}); {_QUANT_INSTEAD}"
        raise r.err("quantization_config.quant_method", msg)
    bits = q.get("bits", 4 if method == "awq" else None)
    widths = _AWQ_BITS if method == "awq" else _QUANT_BITS
    if not isinstance(bits, int | float) or isinstance(bits, bool) or bits not in widths:  # [4]: a list
        msg = f"{method} at {bits!r:.40} bits is not a precision hetsim models ({known}); {_QUANT_INSTEAD}"
        raise r.err("quantization_config.bits", msg)
    group = q.get("group_size", _QUANT_GROUP)
    if isinstance(group, bool) or group != _QUANT_GROUP:
        msg = f"{method} in groups of {group!r:.40} is not a format hetsim models ({known}); {_QUANT_INSTEAD}"
        raise r.err("quantization_config.group_size", msg)
    return widths[int(bits)]  # type: ignore[return-value]


# Modules a quantised checkpoint leaves out beside the tables, as its quantization_config says. GPTQModel
# writes ``lm_head``: true when it quantised the LM head as well (its QuantizeConfig's ``lm_head``), costed
# so. AWQ's ``modules_to_not_convert`` (transformers' AwqConfig) names modules kept at 16 bits, matched
# by their own name or a path part: the LM head and token table are already (``weights.table_dtype``);
# ``gate`` is the MoE router (Mixtral's, Qwen-MoE's, DeepSeek's ``mlp.gate``; a dense model has no module
# of that name: gate_proj is another), kept unconverted (``ModelSpec.router_16bit``). Any other name (a
# vision tower, one projection of every layer) hetsim cannot keep apart: refused, naming it.
_KEPT_ANYWAY = frozenset({"lm_head", "embed_tokens", "gate"})


def _kept_apart(r: _Reader, spec: ModelSpec) -> tuple[bool, bool]:
    """Whether the checkpoint's LM head is quantised too, and whether its MoE router stays 16-bit;
    refuses what hetsim cannot cost."""
    q = r.cfg["quantization_config"]
    keep = q.get("modules_to_not_convert")
    if keep is not None:
        field = "quantization_config.modules_to_not_convert"
        if not isinstance(keep, list) or not all(isinstance(m, str) for m in keep):
            raise r.err(field, f"expected a list of module names or null, got {keep!r:.40}")
        other = [m for m in keep if m not in _KEPT_ANYWAY]
        if other:
            msg = (
                f"keeping {other[0]!r} at 16 bits is not modelled: hetsim costs every linear of the decoder "
                f"layers at the checkpoint's bits (only {', '.join(sorted(_KEPT_ANYWAY))} can stay 16-bit); "
                f"{_QUANT_INSTEAD}"
            )
            raise r.err(field, msg)
    head = q.get("lm_head", False)
    if not isinstance(head, bool):
        raise r.err("quantization_config.lm_head", f"expected true or false, got {head!r:.40}")
    if head and (spec.tied_embeddings or (keep and "lm_head" in keep)):
        why = (
            "the LM head is tied to the token table, which stays 16-bit"
            if spec.tied_embeddings
            else "modules_to_not_convert keeps lm_head at 16 bits"
        )
        raise r.err("quantization_config.lm_head", f"true, but {why}: hetsim cannot cost both")
    return head, spec.is_moe and "gate" in (keep or ())


def weight_dtype_for(spec: ModelSpec, asked: str | None, flag: str = "--dtype", ref: str = "") -> str | None:
    """The weight precision a run of ``spec`` (``ref``: the model as given) costs: ``asked`` (``--dtype``;
    None = each strategy's own) or, for a quantised checkpoint, its own, whose weights exist at no other
    precision (asking another is refused: a GPTQ 4-bit checkpoint costed as fp16 was silently wrong)."""
    if not spec.quantized or asked in (None, spec.quantized):
        return asked or spec.quantized or None
    raise InputError(
        f"{ref or spec.name}: its weights are {spec.quantized} (config.json quantization_config), not "
        f"{asked}: drop it, or remove quantization_config to cost the model at {asked}",
        field=flag,
    )


def _refuse_unknown_arch_fields(r: _Reader, mt: str) -> None:
    understood = _UNDERSTOOD.get(mt, frozenset())
    for key, meaning in ARCH_FIELDS.items():
        v = r.cfg.get(key)
        if key in understood or v is None or v is False or v == [] or v == 0 or v == _NEUTRAL.get(key):
            continue
        if key == "word_embed_proj_dim" and v == r.cfg.get("hidden_size"):
            continue
        raise r.err(
            key,
            f"{v!r} sets {meaning}, which model_type {mt!r} does not have; it would be read as a different "
            "(smaller) model. Fix model_type to the family that has this field, or remove it",
        )


def _experts(r: _Reader, experts_key: str) -> tuple[int, int]:
    num_experts = r.int(experts_key)
    top_k = r.int("num_experts_per_tok")
    if top_k > num_experts:
        raise r.err("num_experts_per_tok", f"{top_k} exceeds {experts_key} {num_experts}")
    return num_experts, top_k


def _every_layer_moe(r: _Reader) -> None:
    if r.cfg.get("mlp_only_layers"):
        raise r.err("mlp_only_layers", "dense layers between expert layers are not supported")
    step = r.int("decoder_sparse_step", 1)
    if step != 1:
        raise r.err("decoder_sparse_step", f"{step}: expert layers only every few layers are not supported")


def _sliding_window(r: _Reader, mt: str) -> int:
    """The attention window of a llama-like config, 0 for none. Mistral, Mixtral and Phi-3 slide in every
    layer when ``sliding_window`` is set; Qwen2/3 only with ``use_sliding_window``, and then only the
    layers from ``max_window_layers`` on, a layout hetsim does not model (refused unless no layer slides)."""
    window = r.cfg.get("sliding_window")
    if window is None:
        return 0
    if mt.startswith(("qwen2", "qwen3")):
        if not r.bool("use_sliding_window", False):
            return 0
        layers = r.int("num_hidden_layers")
        if r.int("max_window_layers", layers, minimum=0) < layers:
            msg = "sliding-window layers after max_window_layers are not supported"
            raise r.err("use_sliding_window", msg)
        return 0
    return r.int("sliding_window")


def _gemma_global_every(r: _Reader, mt: str) -> int:
    """Every how many layers Gemma has a global one: 2 for Gemma-2 (even layers slide), Gemma-3's
    ``sliding_window_pattern`` (6) or the period of its ``layer_types``."""
    if mt == "gemma2":
        return 2
    types = r.cfg.get("layer_types")
    if types:
        layers = r.int("num_hidden_layers")
        n = next((i + 1 for i, t in enumerate(types) if t == "full_attention"), 0)
        expected = ["full_attention" if n and i % n == n - 1 else "sliding_attention" for i in range(layers)]
        if list(types) != expected:
            raise r.err("layer_types", "only a regular pattern (every n-th layer global) is supported")
        return n
    return r.int("sliding_window_pattern", 6)


def _llama_like(r: _Reader, name: str, mt: str) -> ModelSpec:
    """llama, mistral, phi3 (fused qkv and gate_up: the same shapes), qwen2/3 and their MoE versions."""
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    kv_heads = _kv_heads(r, "num_key_value_heads", heads)
    head_dim = _head_dim(r, hidden, heads)
    num_experts, top_k = 1, 1
    intermediate = r.int("intermediate_size")
    shared = 0
    if mt == "mixtral":
        num_experts, top_k = _experts(r, "num_local_experts")
    elif mt in ("qwen2_moe", "qwen3_moe"):
        num_experts, top_k = _experts(r, "num_experts")
        _every_layer_moe(r)
        intermediate = r.int("moe_intermediate_size")
        if mt == "qwen2_moe":
            shared = r.int("shared_expert_intermediate_size")
    attention_bias = r.bool("attention_bias", False)
    # qwen2 (and Qwen1.5-MoE) always have q/k/v biases (and none on o_proj or the MLP). ModelSpec has
    # one flag for "out_proj and MLP" biases; a llama config with attention_bias but no mlp_bias loses
    # the o_proj bias (hidden parameters per layer, negligible).
    qkv_bias = True if mt in ("qwen2", "qwen2_moe") else attention_bias
    linear_bias = (
        False if mt in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3") else r.bool("mlp_bias", False)
    )
    return ModelSpec(
        name=name,
        family=mt,  # type: ignore[arg-type]
        hidden=hidden,
        layers=r.int("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
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
        qk_norm=mt in ("qwen3", "qwen3_moe"),
        shared_intermediate=shared,
        shared_expert_gate=mt == "qwen2_moe",
        sliding_window=_sliding_window(r, mt),
    )


def _gemma(r: _Reader, name: str, mt: str) -> ModelSpec:
    """Gemma-2 / Gemma-3 text: GeGLU MLP, four norms per layer (sandwich), tied embeddings.

    Sliding-window layers hold the same weights as global ones; they cache and attend to the window.
    """
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    kv_heads = _kv_heads(r, "num_key_value_heads", heads)
    bias = r.bool("attention_bias", False)
    if bias:
        raise r.err("attention_bias", "Gemma with attention biases is not supported")
    return ModelSpec(
        name=name,
        family=mt.removesuffix("_text"),  # type: ignore[arg-type]
        hidden=hidden,
        layers=r.int("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=_head_dim(r, hidden, heads),
        intermediate=r.int("intermediate_size"),
        vocab=r.int("vocab_size"),
        max_position=r.int("max_position_embeddings", 8192),
        gated_mlp=True,
        qkv_bias=False,
        linear_bias=False,
        learned_positions=0,
        tied_embeddings=r.bool("tie_word_embeddings", True),
        norm="rmsnorm",
        layer_norms=4,
        qk_norm=mt == "gemma3_text",
        sliding_window=r.int("sliding_window", 4096),
        global_every=_gemma_global_every(r, mt),
    )


def _falcon(r: _Reader, name: str) -> ModelSpec:
    """Falcon (transformers' FalconForCausalLM): fused qkv, GELU MLP of ``ffn_hidden_size``, LayerNorm."""
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    if hidden % heads:
        raise r.err("num_attention_heads", f"{heads} does not divide hidden_size {hidden}")
    new_arch = r.bool("new_decoder_architecture", False)
    if new_arch:
        kv_heads = _kv_heads(r, "num_kv_heads", heads)
    else:
        kv_heads = 1 if r.bool("multi_query", True) else heads
    parallel = r.bool("parallel_attn", True)
    ln_parallel = r.int("num_ln_in_parallel_attn", 2 if new_arch else 1)
    bias = r.bool("bias", False)
    return ModelSpec(
        name=name,
        family="falcon",
        hidden=hidden,
        layers=r.int("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate=r.int("ffn_hidden_size", 4 * hidden),
        vocab=r.int("vocab_size"),
        max_position=r.int("max_position_embeddings", 2048),
        gated_mlp=False,
        qkv_bias=bias,
        linear_bias=bias,
        learned_positions=0,
        tied_embeddings=r.bool("tie_word_embeddings", True),
        norm="layernorm",
        layer_norms=2 if (not parallel or ln_parallel == 2) else 1,
    )


def _gpt_neox(r: _Reader, name: str) -> ModelSpec:
    """GPT-NeoX / Pythia: biases everywhere, GELU MLP, LayerNorm; parallel residual and partial rotary
    change no weights."""
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    if hidden % heads:
        raise r.err("num_attention_heads", f"{heads} does not divide hidden_size {hidden}")
    if not r.bool("attention_bias", True):
        raise r.err("attention_bias", "GPT-NeoX without attention biases is not supported")
    return ModelSpec(
        name=name,
        family="gpt_neox",
        hidden=hidden,
        layers=r.int("num_hidden_layers"),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=r.int("intermediate_size"),
        vocab=r.int("vocab_size"),
        max_position=r.int("max_position_embeddings", 2048),
        gated_mlp=False,
        qkv_bias=True,
        linear_bias=True,
        learned_positions=0,
        tied_embeddings=r.bool("tie_word_embeddings", False),
        norm="layernorm",
    )


def _deepseek(r: _Reader, name: str, mt: str) -> ModelSpec:
    """DeepSeek-V2/V3: MLA, and MoE with shared experts after ``first_k_dense_replace`` dense layers.

    The multi-token-prediction module (``num_nextn_predict_layers``) is not part of the served model
    (transformers does not build it either) and is left out. V3's per-expert routing bias
    (``e_score_correction_bias``) is a buffer in transformers, not a parameter, and is left out too.
    """
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    if r.bool("attention_bias", False):
        raise r.err("attention_bias", "DeepSeek MLA with attention biases is not supported")
    nope = r.int("qk_nope_head_dim")
    rope = r.int("qk_rope_head_dim")
    dense_inter = r.int("intermediate_size")
    num_experts, top_k, inter, shared, dense_layers = 1, 1, dense_inter, 0, 0
    if r.cfg.get("n_routed_experts") is not None:  # 0 experts is no model (null: a dense one)
        num_experts, top_k = _experts(r, "n_routed_experts")
        inter = r.int("moe_intermediate_size")
        shared = r.int("n_shared_experts", 0, minimum=0) * inter
        dense_layers = r.int("first_k_dense_replace", 0, minimum=0)
        freq = r.int("moe_layer_freq", 1)
        if freq != 1:
            raise r.err("moe_layer_freq", f"{freq}: expert layers only every few layers are not supported")
    layers = r.int("num_hidden_layers")
    if dense_layers > layers:
        raise r.err("first_k_dense_replace", f"{dense_layers} exceeds num_hidden_layers {layers}")
    return ModelSpec(
        name=name,
        family=mt,  # type: ignore[arg-type]
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads,  # MLA: every head reads the one shared latent (kv_bytes_per_token_layer)
        head_dim=nope + rope,
        intermediate=inter,
        vocab=r.int("vocab_size"),
        max_position=r.int("max_position_embeddings", 4096),
        gated_mlp=True,
        qkv_bias=False,
        linear_bias=False,
        learned_positions=0,
        tied_embeddings=r.bool("tie_word_embeddings", False),
        num_experts=num_experts,
        experts_per_token=top_k,
        norm="rmsnorm",
        shared_intermediate=shared,
        dense_layers=dense_layers if num_experts > 1 else 0,
        dense_intermediate=dense_inter if num_experts > 1 else 0,
        q_lora_rank=r.int("q_lora_rank", 0, minimum=0),
        kv_lora_rank=r.int("kv_lora_rank"),
        rope_head_dim=rope,
        v_head_dim=r.int("v_head_dim"),
    )


def _kv_heads(r: _Reader, key: str, heads: int) -> int:
    """The KV heads ``key`` gives (``heads`` when absent): each serves a whole group of query heads."""
    kv_heads = r.int(key, heads)
    if heads % kv_heads:
        raise r.err(key, f"{kv_heads} does not divide num_attention_heads {heads}")
    return kv_heads


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
    # Post-norm OPT (opt-350m) has no final LayerNorm; transformers' OPTDecoder builds one only for
    # pre-norm configs that do not set _remove_final_layer_norm.
    final_norm = r.bool("do_layer_norm_before", True) and not r.bool("_remove_final_layer_norm", False)
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
        embed_dim=proj if proj != hidden else 0,
        final_norm=final_norm,
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
        if not (p / "config.json").exists():  # "/config.json: no such file" said what was looked for
            raise InputError("a folder with no config.json in it", source=str(p))
        p = p / "config.json"
    src = str(p)
    cfg = parse_json(read_text(p), src)
    return spec_from_hf_dict(cfg, source=src, name=name)
