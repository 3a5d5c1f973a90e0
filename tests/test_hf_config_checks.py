"""config.json fields that change what hetsim costs: each is read, or refused with one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hetsim.errors import InputError
from hetsim.models.hf_config import spec_from_hf_dict

DATA = Path(__file__).parent / "data" / "hf-configs"


def _config(folder: str, **changes: object) -> dict:
    cfg = json.loads((DATA / folder / "config.json").read_text())
    cfg.update(changes)
    return cfg


def test_deepseek_with_zero_routed_experts_is_refused():
    # transformers builds a DeepseekV3MoE whenever n_routed_experts is not None: with 0 experts its gate
    # has no rows, which is no model; null is the dense one.
    with pytest.raises(InputError) as ei:
        spec_from_hf_dict(_config("DeepSeek-V2-Lite", n_routed_experts=0))
    assert ei.value.field == "n_routed_experts" and ">= 1" in ei.value.message
    dense = spec_from_hf_dict(_config("DeepSeek-V2-Lite", n_routed_experts=None))
    assert dense.num_experts == 1 and dense.dense_layers == 0


@pytest.mark.parametrize(
    ("folder", "key"),
    [
        ("Llama-2-7B", "num_key_value_heads"),
        ("Gemma-2-9B", "num_key_value_heads"),
        ("Falcon-7B", "num_kv_heads"),
    ],
)
def test_kv_heads_that_do_not_divide_the_heads_are_refused_by_their_key(folder, key):
    changes: dict[str, object] = {key: 3}
    if folder == "Falcon-7B":
        changes["new_decoder_architecture"] = True
    with pytest.raises(InputError) as ei:
        spec_from_hf_dict(_config(folder, **changes))
    assert ei.value.field == key and "does not divide num_attention_heads" in ei.value.message
