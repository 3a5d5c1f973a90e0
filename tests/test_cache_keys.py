"""The speed caches shared across rigs (``op_cost.cost_key``, HeteGen's ``_split_setting``) never
hand one rig's answer to a rig that differs in something the cached run reads: each rig below
differs from mixed-lab in one such field, and its cached answer must equal a fresh computation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hetsim import api
from hetsim.costs.op_cost import block_cost, op_cost
from hetsim.models.sharding import layer_blocks
from hetsim.models.spec import OpKind
from hetsim.sim.engine import Engine
from hetsim.strategies import hetegen

GPU, CPU = "n0.gpu0", "n0.cpu0"


def _base():
    return api.problem("llama2-13b", "mixed-lab")


def _link(rig, **changes):
    name = rig.route(CPU, GPU).hops[0].link
    return replace(rig, links={**rig.links, name: replace(rig.links[name], **changes)})


def _device(rig, dev, **changes):
    return replace(rig, devices={**rig.devices, dev: replace(rig.devices[dev], **changes)})


def _eff(rig, dev, **changes):
    d = rig.devices[dev]
    return _device(rig, dev, efficiency=replace(d.efficiency, **changes))


def _node(rig, **changes):
    return replace(rig, nodes={**rig.nodes, "n0": replace(rig.nodes["n0"], **changes)})


MUTATIONS = {
    "gpu->cpu rate only (fwd_bw)": lambda r: _link(r, fwd_bw=r.links["n0.pcie.gpu0"].bw / 4),
    "link rate": lambda r: _link(r, bw=r.links["n0.pcie.gpu0"].bw / 3),
    "link latency": lambda r: _link(r, latency_s=1e-3),
    "cpu DRAM efficiency": lambda r: _eff(r, CPU, memory=r.devices[CPU].efficiency.memory / 3),
    "cpu DRAM peak": lambda r: _device(r, CPU, mem_bw=r.devices[CPU].mem_bw / 3),
    "gpu peak flops": lambda r: _device(
        r, GPU, peak_flops={k: v / 7 for k, v in r.devices[GPU].peak_flops.items()}
    ),
    "cpu cores": lambda r: _device(r, CPU, cores=max(1, r.devices[CPU].cores // 4)),
    "cpu overhead": lambda r: _eff(r, CPU, overhead_s=1e-3),
    "socket DRAM shared": lambda r: _node(r, cpu_sharing="dram", shared_dram_bw=r.devices[CPU].mem_bw / 5),
    "shared DRAM rate": lambda r: _node(
        _node(r, cpu_sharing="dram", shared_dram_bw=r.devices[CPU].mem_bw / 5), shared_dram_bw=1e9
    ),
    "other socket's DRAM when shared": lambda r: _node(
        _device(r, "n0.cpu1", mem_bw=1e9), cpu_sharing="dram", shared_dram_bw=0.0
    ),
}


def _split_op(model):
    return next(o for o in layer_blocks(model, "decode", 4, 1, 64, 1).whole if o.kind == OpKind.MATMUL)


@pytest.mark.parametrize("what", sorted(MUTATIONS))
@pytest.mark.parametrize("cpu", [CPU, "n0.cpu1"])
def test_a_remembered_split_is_the_fresh_measurement(monkeypatch, what, cpu):
    p = _base()
    base = p.rig
    other = MUTATIONS[what](base)
    args = (GPU, cpu, _split_op(p.model), 0.37, 2e-5)
    monkeypatch.setattr(hetegen, "_SPLITS", {})
    hetegen.measure_split(base, *args)  # remembered for the base rig first
    remembered = hetegen.measure_split(other, *args)
    monkeypatch.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)
    assert remembered == hetegen.measure_split(other, *args)


@pytest.mark.parametrize("what", sorted(MUTATIONS))
def test_a_shared_op_cost_is_the_fresh_cost(what):
    p = _base()
    other = MUTATIONS[what](p.rig)
    blocks = layer_blocks(p.model, "decode", 4, 1, 64, 1).whole
    for dev in (GPU, CPU):
        warm = Engine(p.rig)
        for op in blocks:
            warm.cost_of(dev, op)
        warm.cost_of(dev, tuple(blocks))
        fresh = Engine(other)
        for op in blocks:
            assert fresh.cost_of(dev, op) == op_cost(other.devices[dev], op)
        assert fresh.cost_of(dev, tuple(blocks)) == block_cost(other.devices[dev], tuple(blocks))


@pytest.mark.parametrize("what", sorted(MUTATIONS))
def test_the_lps_op_cost_on_another_rig_is_that_rigs(what):
    """``rig_cost`` (the FlexGen LP's ``_cost``, no engine) keeps the engine's per-rig memo: the same
    ops object asked of a rig that differs from a warm one is costed on the new rig's devices."""
    from hetsim.planner import flexgen_lp
    from hetsim.sim.engine import rig_cost

    p = _base()
    other = MUTATIONS[what](p.rig)
    block = tuple(layer_blocks(p.model, "decode", 4, 1, 64, 1).whole)
    for dev in (GPU, CPU):
        assert rig_cost(p.rig, dev, block) == block_cost(p.rig.devices[dev], block)  # warm, by identity
        assert rig_cost(other, dev, block) == block_cost(other.devices[dev], block)
        assert flexgen_lp._cost(other, dev, block) == block_cost(other.devices[dev], block)
        assert rig_cost(p.rig, dev, block) == block_cost(p.rig.devices[dev], block)
