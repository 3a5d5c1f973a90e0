"""Multi-head latent attention under tensor parallelism: heads split, the latent KV cache is whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from hetsim.models import get_model
from hetsim.models.hf_config import load_hf_config
from hetsim.models.sharding import kv_share, layer_blocks

CONFIGS = Path(__file__).parent / "data" / "hf-configs"
SPLIT = {"q_proj", "q_b_proj", "kv_b_proj", "q_absorb", "out_absorb", "out_proj", "attention"}
WHOLE = {"q_a_proj", "q_a_norm", "kv_a_proj", "kv_a_norm", "norm1", "residual1"}


@pytest.mark.parametrize("model", ["deepseek-v3", "DeepSeek-V2-Lite"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_mla_splits_by_head_and_keeps_the_latent_whole(model, phase, tp):
    m = get_model(model) if model == "deepseek-v3" else load_hf_config(CONFIGS / model / "config.json")
    assert m.is_mla and m.kv_groups == 1 and kv_share(tp, m.kv_groups) == 1.0
    seq = 128 if phase == "prefill" else 1
    one = {o.name: o for o in layer_blocks(m, phase, 2, seq, 256, 1).attention}
    ranked = {o.name: o for o in layer_blocks(m, phase, 2, seq, 256, tp).attention}
    assert set(one) == set(ranked) and set(one) <= SPLIT | WHOLE
    for name, op in ranked.items():
        if name in WHOLE:
            assert op == one[name], name
        else:
            assert op.flops == pytest.approx(one[name].flops / tp), name
    # Every rank reads and writes the whole latent cache: it is shared by all heads.
    assert ranked["attention"].kv_read_bytes == one["attention"].kv_read_bytes
    assert ranked["attention"].kv_write_bytes == one["attention"].kv_write_bytes
    weights = sum(o.weight_bytes for o in ranked.values() if o.name in SPLIT)
    assert weights == pytest.approx(sum(o.weight_bytes for o in one.values() if o.name in SPLIT) / tp)


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_rank_weight_bytes_hold_the_replicated_down_projections_in_full(tp):
    # DeepSeek-V3's config.json (hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512, rope 64,
    # nope 128, v 128, 256 routed experts of 2048, one shared expert of 2048), counted by hand in bf16.
    from hetsim.models.sharding import rank_layer_bytes
    from hetsim.strategies.pipeline import Stage, stage_memory

    m = get_model("deepseek-v3")
    h, heads, experts, inter = 7168, 128, 256, 2048
    whole = 1536 * h + 576 * h + experts * h  # q_a, kv_a (latent + rotary key), router
    whole += 1536 + 512 + 2 * h  # q_a_norm, kv_a_norm, norm1, norm2
    split = heads * 192 * 1536 + heads * 256 * 512 + h * heads * 128  # q_b, kv_b, out
    split += (experts + 1) * 3 * h * inter  # routed experts and the shared expert
    assert rank_layer_bytes(m, "bf16", tp) == 2 * (whole + split / tp)
    # A pipeline stage of 4 layers on a TP group holds that per rank (before: layer bytes / tp).
    stage = Stage(tuple(f"g{i}" for i in range(tp)), 4)
    mem = stage_memory(m, stage, False, False, 1, 16, 1, "bf16")
    assert mem["weights"] == 4 * 2 * (whole + split / tp)
