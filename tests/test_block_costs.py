"""The engine costs a block's ops through its cache by value: a block of a new shape costs only its
new ops, and every result is the same to the bit as with each block costed op by op afresh."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from hetsim import api
from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.models.sharding import layer_blocks
from hetsim.sim import engine as engine_mod
from hetsim.sim.engine import Engine


def test_a_blocks_ops_are_costed_once_each_by_value(monkeypatch):
    """A block of a new shape (the next decode step's KV length) costs only the op that changed: the
    others' costs are the engine's already, found by their value."""
    op_cost_mod = importlib.import_module("hetsim.costs.op_cost")  # the package's name is the function
    calls = []
    real = op_cost_mod.op_cost
    counted = lambda dev, op: calls.append(op.name) or real(dev, op)  # noqa: E731
    monkeypatch.setattr(engine_mod, "op_cost", counted)
    monkeypatch.setattr(op_cost_mod, "op_cost", counted)
    real_block = op_cost_mod.block_cost
    rig = load_rig("mixed-lab")
    engine = Engine(rig)
    gpu = next(d.name for d in rig.gpus())
    whole = layer_blocks(get_model("llama2-7b"), "decode", 3, 1, 71).whole
    engine.cost_of(gpu, whole)
    calls.clear()
    longer = tuple(
        dataclasses.replace(o, kv_read_bytes=o.kv_read_bytes * 2 + 1.0)
        if o.name == "attention"
        else dataclasses.replace(o)
        for o in whole
    )
    cost = engine.cost_of(gpu, longer)
    assert calls == ["attention"]
    assert repr(cost) == repr(real_block(rig.devices[gpu], longer))


@pytest.mark.parametrize(
    ("model", "rig", "strategies"),
    [
        ("llama2-70b", "mixed-lab", ["hexgen", "gpu-only", "cpu-tp", "layer-offload"]),
        ("opt-30b", "hetegen-a10", ["hetegen", "deepspeed", "accelerate"]),
    ],
)
def test_blocks_costed_op_by_op_afresh_change_no_result(monkeypatch, model, rig, strategies):
    p = api.problem(model, rig, 2, 128, 8)
    kept = [repr(r) for r in api.compare(p, strategies)]
    real = engine_mod.block_cost
    monkeypatch.setattr(engine_mod, "_RIG_COSTS", {})
    monkeypatch.setattr(engine_mod, "_DEVICE_COSTS", {})
    monkeypatch.setattr(engine_mod, "block_cost", lambda dev, ops, cost=None: real(dev, ops))
    assert [repr(r) for r in api.compare(p, strategies)] == kept
    assert "feasible=True" in "".join(kept)


def test_a_twin_device_takes_the_costs_its_twin_worked_out(monkeypatch):
    """A rig's identical sockets share op costs: the second asks op_cost nothing."""
    op_cost_mod = importlib.import_module("hetsim.costs.op_cost")
    calls = []
    real = op_cost_mod.op_cost
    counted = lambda dev, op: calls.append(dev.name) or real(dev, op)  # noqa: E731
    monkeypatch.setattr(engine_mod, "op_cost", counted)
    monkeypatch.setattr(op_cost_mod, "op_cost", counted)
    monkeypatch.setattr(engine_mod, "_RIG_COSTS", {})
    monkeypatch.setattr(engine_mod, "_DEVICE_COSTS", {})
    rig = load_rig("mixed-lab")
    engine = Engine(rig)
    whole = layer_blocks(get_model("llama2-7b"), "decode", 3, 1, 33).whole
    first = engine.cost_of("n0.cpu0", whole)
    assert calls and set(calls) == {"n0.cpu0"}
    calls.clear()
    assert engine.cost_of("n1.cpu1", whole) == first
    assert engine.cost_of("n1.cpu1", whole[0]) == engine.cost_of("n0.cpu0", whole[0])
    assert calls == []  # the lone op too: n0.cpu0 costed it within the block
    assert engine.cost_of("n1.gpu0", whole) != engine.cost_of("n0.gpu0", whole)  # A6000, A100: no twins


@pytest.mark.parametrize("strategies", [["cpu-tp", "hexgen", "gpu-only"], ["deepspeed", "hetegen"]])
def test_costs_without_twins_change_no_result(monkeypatch, strategies):
    p = api.problem("llama2-70b", "mixed-lab", 2, 128, 8)
    kept = [repr(r) for r in api.compare(p, strategies)]
    monkeypatch.setattr(engine_mod, "_RIG_COSTS", {})
    monkeypatch.setattr(engine_mod, "_DEVICE_COSTS", {})
    monkeypatch.setattr(engine_mod, "twin_key", lambda dev: None)
    assert [repr(r) for r in api.compare(p, strategies)] == kept
    assert "feasible=True" in "".join(kept)
