"""Sliding-window attention (Mistral-7B v0.1, Phi-3, Gemma-2/3): windowed layers cache and attend to the
last ``sliding_window`` tokens only; the KV cache and attention cost count that, per layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.errors import InputError
from hetsim.models.hf_config import load_hf_config, spec_from_hf_dict
from hetsim.models.layer_ops import decoder_layer_ops
from hetsim.models.memory import kv_cache_bytes
from hetsim.models.spec import FP16
from hetsim.models.weights import kv_bytes_per_token_layer

CONFIGS = Path(__file__).parent / "data" / "hf-configs"
# (window, layers that slide) as the configs and transformers' layer_types define them.
EXPECTED = {
    "Gemma-2-9B": (4096, "even"),  # Gemma2Config: sliding if (i + 1) % 2, i.e. layers 0, 2, 4, ...
    "Mistral-7B": (4096, "all"),  # v0.1: one window in every layer
    "Phi-3-mini-4k": (2047, "all"),
    "Qwen2.5-7B": (0, "none"),  # sliding_window set but use_sliding_window false
    "Qwen1.5-MoE-A2.7B": (0, "none"),
    "Llama-3.1-8B": (0, "none"),
}


def _load(name: str):
    return load_hf_config(CONFIGS / name / "config.json")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_windows_and_layers_as_the_configs_say(name):
    m = _load(name)
    window, which = EXPECTED[name]
    assert m.sliding_window == window
    sliding = [i for i in range(m.layers) if m.layer_is_sliding(i)]
    want = {"even": list(range(0, m.layers, 2)), "all": list(range(m.layers)), "none": []}[which]
    assert sliding == want


def test_every_other_config_has_no_window():
    for folder in sorted(p for p in CONFIGS.iterdir() if (p / "config.json").exists()):
        if folder.name not in EXPECTED and "as-mistral" not in folder.name:  # that one is refused
            assert _load(folder.name).sliding_window == 0, folder.name


def test_kv_cache_holds_the_window_in_sliding_layers():
    g = _load("Gemma-2-9B")
    per = kv_bytes_per_token_layer(g, FP16)
    # Within the window every layer holds every token (the exact per-token count is unchanged).
    assert kv_cache_bytes(g, 1, 4096, g.layers) == pytest.approx(4096 * g.layers * per)
    # At 8192 tokens the 21 sliding layers hold 4096, the 21 global ones 8192.
    assert kv_cache_bytes(g, 2, 8192, g.layers) == pytest.approx(2 * (21 * 4096 + 21 * 8192) * per)
    mistral = _load("Mistral-7B")
    assert kv_cache_bytes(mistral, 1, 32768, mistral.layers) == pytest.approx(
        kv_cache_bytes(mistral, 1, 4096, mistral.layers)
    )


@settings(max_examples=30, deadline=None)
@given(kv=st.integers(1, 20000), name=st.sampled_from(["Gemma-2-9B", "Mistral-7B", "Phi-3-mini-4k"]))
def test_decode_attention_reads_the_window_and_the_typical_layer_is_the_mean(kv, name):
    m = _load(name)

    def attn(layer):
        return next(o for o in decoder_layer_ops(m, "decode", 1, 1, kv, layer=layer) if o.name == "attention")

    per = kv_bytes_per_token_layer(m, FP16)
    layers = [attn(i) for i in range(m.layers)]
    for i, op in enumerate(layers):
        tokens = min(kv, m.sliding_window) if m.layer_is_sliding(i) else kv
        assert op.kv_read_bytes == pytest.approx(tokens * per)
    typical = attn(None)
    assert m.layers * typical.kv_read_bytes == pytest.approx(sum(o.kv_read_bytes for o in layers))
    assert m.layers * typical.flops == pytest.approx(sum(o.flops for o in layers))


def test_qwen_sliding_layers_after_max_window_layers_are_refused():
    cfg = json.loads((CONFIGS / "Qwen2.5-7B" / "config.json").read_text())
    cfg.update(use_sliding_window=True, max_window_layers=20)
    with pytest.raises(InputError) as info:
        spec_from_hf_dict(cfg, source="q.json")
    assert info.value.field == "use_sliding_window" and "\n" not in info.value.line()
    cfg.update(max_window_layers=cfg["num_hidden_layers"])  # no layer slides: fine
    assert spec_from_hf_dict(cfg, source="q.json").sliding_window == 0


def test_gemma3_layer_types_give_the_pattern_or_are_refused():
    cfg = json.loads((CONFIGS / "synthetic.json").read_text())["configs"]["gemma3_text"]["config"]
    layers = cfg["num_hidden_layers"]
    types = ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(layers)]
    m = spec_from_hf_dict({**cfg, "sliding_window": 512, "layer_types": types}, source="g.json")
    assert (m.sliding_window, m.global_every) == (512, 3)
    assert spec_from_hf_dict(cfg, source="g.json").global_every == 6  # Gemma-3's default pattern
    types[0] = "full_attention"
    with pytest.raises(InputError) as info:
        spec_from_hf_dict({**cfg, "layer_types": types}, source="g.json")
    assert info.value.field == "layer_types"
