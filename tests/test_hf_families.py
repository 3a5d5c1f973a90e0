"""Model families from real config.json files, counted against independent counts.

``tests/data/hf-configs/counts.json`` holds what Hugging Face ``transformers`` builds from each config on
the meta device (``tools/hf_counts.py``); when ``transformers`` is installed the parameter counts are
also recomputed live. Published totals and active counts come from the model cards and papers cited.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hetsim.errors import InputError
from hetsim.models import BF16, FP16, get_model, load_hf_config, param_count, weight_bytes
from hetsim.models.hf_config import spec_from_hf_dict
from hetsim.models.layer_ops import decoder_layer_ops, step_ops, total
from hetsim.models.weights import active_param_count, kv_bytes_per_token_layer, layer_weight_bytes

DATA = Path(__file__).parent / "data" / "hf-configs"
COUNTS = json.loads((DATA / "counts.json").read_text())["models"]
REFUSED = {"Disco-Mixtral-8x7B-as-mistral": "num_experts"}
ACCEPTED = sorted(set(COUNTS) - set(REFUSED))


@pytest.mark.parametrize("folder", ACCEPTED)
def test_params_weight_bytes_and_kv_match_transformers(folder):
    spec = load_hf_config(DATA / folder)
    ref = COUNTS[folder]
    assert param_count(spec) == ref["params"]
    # Every tensor in 16-bit: bytes are exactly 2 per parameter.
    assert weight_bytes(spec, BF16) == 2 * ref["params"]
    assert kv_bytes_per_token_layer(spec, FP16) == 2 * ref["kv_elems_per_token_layer"]


SYNTHETIC = json.loads((DATA / "synthetic.json").read_text())["configs"]


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_configs_match_transformers(name):
    """Gemma-3 text, Falcon's new layout and its sequential one, DeepSeek without q_lora and with dense
    first layers, tied heads, OPT-350m-like projections: code paths the real configs do not reach."""
    entry = SYNTHETIC[name]
    assert param_count(spec_from_hf_dict(dict(entry["config"]), name=name)) == entry["params"]


@pytest.mark.parametrize(("folder", "field"), sorted(REFUSED.items()))
def test_architecture_fields_the_family_lacks_are_refused(folder, field):
    with pytest.raises(InputError) as ei:
        load_hf_config(DATA / folder)
    assert ei.value.field == field
    assert "mistral" in ei.value.message and "MoE" in ei.value.message


def test_every_shipped_config_is_counted_or_refused():
    folders = {p.name for p in DATA.iterdir() if p.is_dir()}
    assert folders == set(COUNTS) and len(folders) == 21


# (folder, total, active, source). Active counts differ in whether they include the embedding table and
# the LM head, so the active check allows two vocab x hidden tables plus the card's rounding (2 %).
PUBLISHED = [
    ("DeepSeek-V3", 671e9, 37e9, "DeepSeek-V3 Technical Report, arXiv:2412.19437, abstract"),
    ("DeepSeek-V2-Lite", 15.7e9, 2.4e9, "DeepSeek-V2 paper, arXiv:2405.04434, Appendix B (V2-Lite)"),
    ("Qwen3-30B-A3B", 30.5e9, 3.3e9, "Qwen/Qwen3-30B-A3B model card"),
    ("Qwen1.5-MoE-A2.7B", 14.3e9, 2.7e9, "Qwen blog 'Qwen1.5-MoE' (2024-03-28), model card"),
    ("Mixtral-8x7B", 46.7e9, 12.9e9, "Mistral AI, 'Mixtral of experts' (2023-12-11)"),
    ("Qwen3-8B", 8.2e9, None, "Qwen/Qwen3-8B model card"),
    ("Gemma-2-9B", 9.241e9, None, "Gemma 2 report, arXiv:2408.00118, Table 2 (8,324M + 917M embedding)"),
    ("Phi-3-mini-4k", 3.8e9, None, "Phi-3 technical report, arXiv:2404.14219"),
    ("GPT-NeoX-20B", 20.55e9, None, "GPT-NeoX-20B paper, arXiv:2204.06745, §2"),
]


@pytest.mark.parametrize(("folder", "total_p", "active", "source"), PUBLISHED)
def test_published_totals_and_active_parameters(folder, total_p, active, source):
    spec = load_hf_config(DATA / folder)
    assert param_count(spec) == pytest.approx(total_p, rel=0.01), source
    if active is not None:
        embed = 2 * spec.vocab * spec.hidden
        assert abs(active_param_count(spec) - active) <= embed + 0.02 * active, source


@pytest.mark.parametrize("folder", ACCEPTED)
def test_a_decode_step_at_batch_1_reads_exactly_the_active_weights(folder):
    """weights.py and layer_ops.py agree: one token reads every active parameter once, except the
    embedding table (one row of it is gathered) and OPT-350m's project_in/out (left out of the ops)."""
    spec = load_hf_config(DATA / folder)
    ops = step_ops(spec, "decode", 1, 1, 10, BF16, BF16, BF16)
    table = spec.vocab * spec.token_dim + spec.learned_positions * spec.hidden
    row = spec.token_dim + (spec.hidden if spec.learned_positions else 0)
    # A tied head reads the token table as the LM head, so only the position table goes unread.
    unread = spec.learned_positions * spec.hidden if spec.tied_embeddings else table
    projections = 2 * spec.hidden * spec.embed_dim
    expected = active_param_count(spec) - unread + row - projections
    assert total(ops, "weight_bytes") == 2 * expected


def test_mla_caches_the_latent_and_dense_first_layers():
    v3 = get_model("deepseek-v3")
    # DeepSeek-V2 paper Table 1: MLA caches (d_c + d_h^R) = 512 + 64 elements per token per layer.
    assert kv_bytes_per_token_layer(v3, FP16) == 576 * 2
    assert v3.dense_layers == 3 and v3.num_experts == 256 and v3.experts_per_token == 8
    assert layer_weight_bytes(v3, BF16, moe=False) < layer_weight_bytes(v3, BF16, moe=True) / 10
    dense = decoder_layer_ops(v3, "decode", 1, 1, 100, layer=0)
    moe = decoder_layer_ops(v3, "decode", 1, 1, 100, layer=3)
    assert "router" not in {o.name for o in dense} and "router" in {o.name for o in moe}
    assert {"shared_gate_proj", "q_absorb", "out_absorb"} <= {o.name for o in moe}
    ops = step_ops(v3, "decode", 1, 1, 100)
    # A decode step of batch 1 reads the attention, dense and shared weights and 8 of 256 experts.
    active_bytes = 2.0 * active_param_count(v3)
    assert total(ops, "weight_bytes") == pytest.approx(active_bytes, rel=0.03)
    # FLOPs: 2 per active parameter plus attention over 100 latent tokens (MQA-like on the latent).
    assert total(ops, "flops") > 2 * (active_param_count(v3) - v3.vocab * v3.hidden)


def test_mla_prefill_decompresses_the_context():
    v3 = get_model("deepseek-v3")
    pre = {o.name: o for o in decoder_layer_ops(v3, "prefill", 1, 500, 500)}
    assert "kv_b_proj" in pre and "q_absorb" not in pre
    # QK over 192-dim heads plus PV over 128-dim heads, 128 heads, the full 500x500 rectangle.
    assert pre["attention"].flops == 2.0 * 128 * 500 * 500 * (192 + 128)


def test_builtin_names():
    for name, folder in (("deepseek-v3", "DeepSeek-V3"), ("qwen3-30b-a3b", "Qwen3-30B-A3B")):
        assert param_count(get_model(name)) == COUNTS[folder]["params"]
    q235 = get_model("qwen3-235b-a22b")
    # Qwen/Qwen3-235B-A22B model card: 235B total, 22B activated.
    assert param_count(q235) == pytest.approx(235e9, rel=0.01)
    assert active_param_count(q235) == pytest.approx(22e9, rel=0.03)


def test_live_transformers_count_matches():
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    for folder in ("Qwen1.5-MoE-A2.7B", "Gemma-2-9B", "OPT-350m", "Falcon-7B", "DeepSeek-V2-Lite"):
        cfg = json.loads((DATA / folder / "config.json").read_text())
        cfg.pop("auto_map", None)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
        assert param_count(load_hf_config(DATA / folder)) == sum(p.numel() for p in m.parameters()), folder
    for name, entry in SYNTHETIC.items():
        cfg = dict(entry["config"])
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
        got = param_count(spec_from_hf_dict(dict(entry["config"]), name=name))
        assert got == sum(p.numel() for p in m.parameters()), name


def test_gemma3_vision_language_config_points_at_its_text_config(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "gemma3", "text_config": SYNTHETIC["gemma3_text"]["config"]}))
    with pytest.raises(InputError) as ei:
        load_hf_config(p)
    assert ei.value.field == "model_type" and "gemma3_text" in ei.value.message
