"""The kernels serving engines run (hetsim.models.fusion) and the costs of fused blocks."""

from __future__ import annotations

import dataclasses

import pytest

from hetsim.costs.op_cost import block_cost, combine, op_cost
from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.models.fusion import fuse
from hetsim.models.layer_ops import total
from hetsim.models.sharding import layer_blocks

L7 = get_model("llama2-7b")


def _blocks(model=L7, phase="decode", batch=1, seq=1, kv=512, tp=1):
    b = layer_blocks(model, phase, batch, seq, kv, tp)
    return b.attention, b.mlp


@pytest.mark.parametrize("model_name", ["llama2-7b", "llama2-70b", "opt-13b", "mixtral-8x7b"])
@pytest.mark.parametrize("tp", [1, 4])
def test_fusion_keeps_flops_and_weights_and_saves_launches(model_name, tp):
    model = get_model(model_name)
    for block in _blocks(model, "prefill", 2, 64, 64, tp):
        fused = fuse(block)
        assert total(fused, "flops") == pytest.approx(total(block, "flops"))
        assert total(fused, "weight_bytes") == pytest.approx(total(block, "weight_bytes"))
        assert total(fused, "kv_read_bytes") == total(block, "kv_read_bytes")
        assert total(fused, "mem_bytes") <= total(block, "mem_bytes")
        assert len(fused) < len(block)


def test_fused_llama_layer_is_the_engines_kernels():
    attn, mlp = _blocks()
    assert [o.name for o in fuse(attn)] == ["add_norm", "qkv_proj", "attention", "out_proj"]
    assert [o.name for o in fuse(mlp)] == ["add_norm", "gate_up_proj", "act", "down_proj"]
    qkv = fuse(attn)[1]
    q, k, v = attn[1:4]
    assert qkv.act_in_bytes == q.act_in_bytes  # the shared input is read once
    assert qkv.weight_row_bytes == q.weight_row_bytes + k.weight_row_bytes + v.weight_row_bytes


def test_catalogue_gpus_cost_every_op_separately():
    rig = load_rig("hexgen-homogeneous")
    dev = next(d for d in rig.devices.values() if d.kind == "gpu")
    assert not dev.efficiency.fused_kernels and not dev.efficiency.memory_by_kind
    for block in _blocks():
        assert block_cost(dev, block) == combine([op_cost(dev, o) for o in block])
    fused = dataclasses.replace(dev, efficiency=dataclasses.replace(dev.efficiency, fused_kernels=True))
    for block in _blocks():  # fewer launches, same bytes of weights: faster
        assert block_cost(fused, block).time_s < block_cost(dev, block).time_s
