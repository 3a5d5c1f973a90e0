"""The engine costs a block's ops through its cache by value: a block of a new shape costs only its
new ops, and every result is the same to the bit as with each block costed op by op afresh."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from hetsim import api
from hetsim.costs.op_cost import block_cost, op_cost
from hetsim.hardware import load_rig
from hetsim.hardware.types import MatmulCurve
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


def _changed(dev, what):
    """``dev`` with one field op_cost reads changed (a per-instance override, a measured profile)."""
    eff = dev.efficiency
    return {
        "fused": lambda: dataclasses.replace(dev, efficiency=dataclasses.replace(eff, fused_kernels=True)),
        "bandwidth": lambda: dataclasses.replace(dev, mem_bw=dev.mem_bw * 0.9),
        "peak": lambda: dataclasses.replace(dev, peak_flops={k: v * 0.9 for k, v in dev.peak_flops.items()}),
        "overhead by dtype": lambda: dataclasses.replace(
            dev, efficiency=dataclasses.replace(eff, overhead_by_dtype={"fp16": 5e-5})
        ),
        "measured rows": lambda: dataclasses.replace(
            dev,
            efficiency=dataclasses.replace(
                eff, matmul_by_dtype={"fp16": MatmulCurve(0.8, 10.0, 0.7, 100.0, ((2.0, 0.1), (64.0, 0.6)))}
            ),
        ),
        "issue": lambda: dataclasses.replace(dev, efficiency=dataclasses.replace(eff, kernel_issue_s=7e-6)),
    }[what]()


_CHANGES = ["fused", "bandwidth", "peak", "overhead by dtype", "measured rows", "issue"]


@pytest.mark.parametrize("what", _CHANGES)
@pytest.mark.parametrize("device", ["n1.cpu1", "n1.gpu1"])
def test_a_device_unlike_its_twins_in_any_costed_field_keeps_its_own_costs(monkeypatch, device, what):
    """One of a rig's identical sockets or cards with a field op_cost reads overridden is no twin:
    every device's block and op costs are its own, whichever device asks first."""
    monkeypatch.setattr(engine_mod, "_RIG_COSTS", {})
    monkeypatch.setattr(engine_mod, "_DEVICE_COSTS", {})
    rig = load_rig("mixed-lab")
    rig = dataclasses.replace(rig, devices={**rig.devices, device: _changed(rig.devices[device], what)})
    engine = Engine(rig)
    model = get_model("llama2-7b")
    blocks = (layer_blocks(model, "decode", 3, 1, 71), layer_blocks(model, "prefill", 2, 64, 64))
    for whole in (b.whole for b in blocks):
        for name in sorted(rig.devices):  # n0.* first: the overridden device asks after its old twins
            dev = rig.devices[name]
            assert repr(engine.cost_of(name, whole)) == repr(block_cost(dev, whole))
            assert [repr(engine.cost_of(name, o)) for o in whole] == [repr(op_cost(dev, o)) for o in whole]
