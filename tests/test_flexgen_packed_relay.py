"""A 4-bit tensor's packed data (uint8) read from disk for the GPU goes through the copy threads'
fp16 relay (pytorch_backend.py:882, :899-902): converted to fp16 as the read lands, then, by the
blocking cross-dtype copy into the uint8 GPU tensor, back to uint8 on the CPU into a fresh pageable
temporary (PyTorch's copy_kernel_cuda), which the hop copies from. The second conversion is timed
before the hop (``packed_unrelay_cost``: 2.60 cycles per element over the host's cores, measured by
validate.packed_hop on one thread), the first's host DRAM beside the read (``PACKED_RELAY``), and the
temporaries are in the host ledger (``packed_temporaries``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from flexgen_placed import placed_lp

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.models.spec import FLEXGEN_INT4 as INT4
from hetsim.sim.run import simulate
from hetsim.strategies import flexgen_ops
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan, kv_token_bytes
from hetsim.workload import Workload

RIG = load_rig("flexgen-t4")
GPU, CPU, DISK = endpoints(RIG)


def test_the_conversion_is_compute_bound_at_cycles_per_element_over_the_cores():
    """flexgen-t4's Xeon (16 cores at 2.0 GHz): 2.60 cycles per element, 0.081 ns per packed byte, above
    its bytes at the fitted 61.5 GB/s (3 B per byte: 0.049 ns); one op's overhead on top."""
    dev = RIG.devices[CPU]
    n = 100e6
    cost = flexgen_ops.packed_unrelay_cost(dev, n)
    assert cost.compute_s == pytest.approx(n * 2.60 / (16 * 2.0e9))
    assert cost.memory_s == pytest.approx(3 * n / (dev.mem_bw * dev.efficiency.memory))
    assert cost.time_s == pytest.approx(cost.overhead_s + cost.compute_s)


def test_each_packed_hop_follows_its_conversion(tmp_path):
    """OPT-6.7B 4-bit weights all on disk, 8 x 1, 64 + 2: each packed data hop over PCIe (its bytes the
    conversion's third) starts once a conversion of its bytes has ended; each conversion, on the copy
    threads' own lane, lasts its cost."""
    plan = FlexGenPlan(8, 1, 0, 0, 100, 0, 100, 0, cpu_attention=False, compress_weight=True, gpu=GPU)
    trace = tmp_path / "t.json"
    r = simulate(
        get_strategy("flexgen"), plan, RIG, get_model("opt-6.7b"), Workload(8, 64, 2), trace_path=str(trace)
    )
    assert r.feasible, r.reason
    events = json.loads(trace.read_text())["traceEvents"]
    lanes = {e["args"]["name"]: e["tid"] for e in events if e.get("ph") == "M"}
    spans = [e for e in events if e.get("ph") == "X"]
    convs = [e for e in spans if e["name"] == "relay_to_uint8"]
    assert convs and {e["tid"] for e in convs} == {lanes[f"{CPU}:beside"]}
    dev, ends = RIG.devices[CPU], {}
    for e in convs:
        n = e["args"]["bytes"] / 3
        assert e["dur"] == pytest.approx(flexgen_ops.packed_unrelay_cost(dev, n).time_s * 1e6)
        ends.setdefault(round(n), []).append(e["ts"] + e["dur"])
    pcie = lanes[RIG.route(CPU, GPU).hops[0].lane]
    hops = [e for e in spans if e["tid"] == pcie and e["name"] == "load_weight_disk"]
    packed = [e for e in hops if round(e["args"]["bytes"]) in ends]
    assert len(packed) == len(convs)
    for e in packed:
        assert any(e["ts"] >= t - 1e-3 for t in ends[round(e["args"]["bytes"])])


def test_the_host_ledger_holds_the_packed_temporaries():
    """OPT-30B, 4-bit weights all on disk and a 4-bit KV cache all on disk read by GPU attention, 16 x 2
    at 512 + 32: the largest layer's packed parts (fc1's and fc2's data, 7168 x 28672 / 2 B each) and
    one batch's K and V data at the allocated slots."""
    m = get_model("opt-30b")
    plan = FlexGenPlan(
        16, 2, 0, 0, 0, 0, 100, 0, cpu_attention=False, compress_weight=True, compress_cache=True, gpu=GPU
    )
    wl = Workload(32, 512, 32)
    cpu = get_strategy("flexgen").footprint(plan, RIG, m, wl)[CPU]
    data = INT4.bits / 8.0 / INT4.bytes_per_element  # the packed data's share of a 4-bit tensor
    weights = 2 * 7168 * 28672 * INT4.bytes_per_element * data
    kv = 16 * wl.kv_slots * kv_token_bytes(m, True) * data
    assert cpu["packed_temporaries"] == pytest.approx(weights + kv)


def _few_cores(rig, cpu: str, cores: int):
    return replace(rig, devices={**rig.devices, cpu: replace(rig.devices[cpu], cores=cores)})


def test_the_relays_conversion_is_charged_where_the_read_does_not_hide_it():
    """uint8 -> fp16 into the relay (``RELAY_CYCLES``, 1.61 cycles per element over the cores) runs as
    the disk read lands: on hexgen-homogeneous (24 cores at 3.0 GHz, 0.022 ns per packed byte) its
    16 GB/s disk (0.0625 ns) hides it; on the same host with 4 cores (0.134 ns) what the read leaves
    runs when it lands, before the conversion into the temporary."""
    rig = load_rig("hexgen-homogeneous")
    _, cpu, disk = endpoints(rig)
    read = min(rig.route(disk, cpu).bw, rig.disks[disk].read_bw)
    n = 100e6
    dev = rig.devices[cpu]
    assert flexgen_ops.packed_unrelay_cost(dev, n, read) == flexgen_ops.packed_unrelay_cost(dev, n)
    few = _few_cores(rig, cpu, 4).devices[cpu]
    left = n * 1.61 / (4 * 3.0e9) - n / 16e9
    bare = flexgen_ops.packed_unrelay_cost(few, n)
    assert flexgen_ops.packed_unrelay_cost(few, n, read).time_s == pytest.approx(bare.time_s + left)


def test_the_engine_and_the_lp_take_the_relays_conversion_on_a_host_with_few_cores():
    """hexgen-homogeneous with 4 cores (hypothetical), Llama-2-7B 16 x 2, 4-bit weights 20/30/50, the KV
    on the GPU, 256 + 8: each packed part's relay conversion outlasts its read, 42.6360 -> 36.0458
    tok/s; the LP takes the same (``Links.unpack``): -0.03 % of the engine (the 24-core rig's run and
    the 13 compare cases the same bytes)."""
    from hetsim.planner.flexgen_lp import Flags

    rig = load_rig("hexgen-homogeneous")
    ends = endpoints(rig)
    rig = _few_cores(rig, ends[1], 4)
    m = get_model("llama2-7b")
    plan = FlexGenPlan(16, 2, 20, 30, 100, 0, 100, 0, cpu_attention=False, compress_weight=True, gpu=ends[0])
    wl = Workload(32, 256, 8)
    r = simulate(get_strategy("flexgen"), plan, rig, m, wl)
    assert r.throughput_tok_s == pytest.approx(36.0458, rel=1e-5)
    err = placed_lp(plan, rig, m, wl, Flags(False, False, "", True)) / r.e2e_s - 1
    assert abs(err) < 0.003, err
