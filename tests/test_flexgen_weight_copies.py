"""FlexGen's weights on disk as the release moves them: load_weight copies a layer tensor by tensor
(flex_opt.py: ``w.smart_copy`` per weight) and each disk tensor is a copy of its own on the copy
threads' queue (general_copy's ``submit_copy``, pytorch_backend.py:831-833), read into a pinned relay
and hopped over the link when it lands (copy_worker_func, :896-902); a 4-bit matrix is two copies,
its data then its scales (compression.py:214-215). Before, the engine moved a layer's disk share as
one copy: its hop waited for the whole read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan, copy_parts, layer_disk_copies, layer_weight_split
from hetsim.workload import Workload


def _weight_spans(tmp_path, plan: FlexGenPlan):
    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    trace = tmp_path / "t.json"
    r = simulate(get_strategy("flexgen"), plan, rig, model, Workload(8, 256, 2), trace_path=str(trace))
    assert r.feasible, r.reason
    spans = sorted(
        (e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"),
        key=lambda e: e["ts"],
    )
    _, cpu, disk = endpoints(rig)
    ours = [e for e in spans if e["name"] == "load_weight_disk"]
    reads = {(e["ts"], e["dur"]): e for e in ours if e["args"]["src"] == disk}  # once, not per lane
    return model, sorted(reads.values(), key=lambda e: e["ts"]), [e for e in ours if e["args"]["src"] == cpu]


@pytest.mark.parametrize("compress", [False, True])
def test_a_layers_disk_share_is_read_and_hopped_tensor_by_tensor(tmp_path, compress):
    """OPT-6.7B 8 x 1, weights 0/50/50 on flexgen-t4: the prologue's embedding, then the first
    attention's load (W_q, b_q, W_k, b_k on disk by the midpoint rule), are reads of each copy's
    bytes in order, and the first copy's hop starts before the last read ends."""
    plan = FlexGenPlan(8, 1, 0, 50, 100, 0, 100, 0, compress_weight=compress, gpu="n0.gpu0")
    model, reads, hops = _weight_spans(tmp_path, plan)
    copies = layer_disk_copies(model, plan)
    n0, n1 = len(copies[0]), len(copies[1])
    assert n1 >= 4 and [e["args"]["bytes"] for e in reads[n0 : n0 + n1]] == pytest.approx(copies[1])
    if compress:  # a matrix's data, then its scales
        data, scales = copy_parts(True)
        assert copies[1][1] / copies[1][0] == pytest.approx(scales / data)
    first_hop = next(e for e in hops if e["ts"] >= reads[n0]["ts"])
    last_read = reads[n0 + n1 - 1]
    assert first_hop["ts"] < last_read["ts"] + last_read["dur"]


@pytest.mark.parametrize(("wg", "wc"), [(70, 30), (10, 90), (40, 60)])
def test_weights_all_off_disk_in_continuous_placement_read_no_disk(tmp_path, wg, wc):
    """Percents that sum to 100 leave a float residue (1 - 0.7 - 0.3 = 5.6e-17): the continuous
    placement read it as a disk share, every tensor a copy of ~1e-8 bytes paying its read's and
    hop's latencies (OPT-6.7B 8 x 2 70/30 on flexgen-t4, 256 + 8: 5.3104 s -> 5.3466 s with a copy
    per tensor, 5.3150 s with one a layer)."""
    plan = FlexGenPlan(8, 1, wg, wc, 100, 0, 100, 0, gpu="n0.gpu0", placement="continuous")
    model = get_model("opt-6.7b")
    assert all(d == 0.0 for _, _, d in layer_weight_split(model, plan))
    assert all(not c for c in layer_disk_copies(model, plan))
    _, reads, hops = _weight_spans(tmp_path, plan)
    assert reads == [] and hops == []


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(["opt-6.7b", "opt-30b", "llama2-7b"]),
    wg=st.integers(0, 100),
    wc_share=st.floats(0.0, 1.0),
    compress=st.booleans(),
    placement=st.sampled_from(["released", "continuous"]),
)
def test_a_layers_disk_copies_carry_its_disk_bytes(model, wg, wc_share, compress, placement):
    """The engine moves each layer's disk share as ``layer_disk_copies``: the copies' bytes sum to the
    layer's disk bytes (``layer_weight_split``), a 4-bit matrix's data and scales included."""
    wc = round((100 - wg) * wc_share)
    plan = FlexGenPlan(8, 1, wg, wc, 100, 0, 100, 0, compress_weight=compress, placement=placement)
    m = get_model(model)
    for (_, _, d), copies in zip(layer_weight_split(m, plan), layer_disk_copies(m, plan), strict=True):
        assert sum(copies) == pytest.approx(d, rel=1e-12, abs=0.0)
        assert all(b > 0 for b in copies)


def test_a_4bit_matrixs_packed_data_hops_from_a_pageable_temporary(tmp_path):
    """The copy threads' relay is an fp16 view (pytorch_backend.py:882, :899-902): a 4-bit matrix's uint8
    data is converted to fp16 into it and back, on the CPU, into a pageable temporary by the blocking
    cross-dtype copy to the GPU (PyTorch's copy_kernel_cuda), which then copies from pageable memory: the
    data's hop at the link's pageable rate (6 GB/s on flexgen-t4), its scales' (fp16) at the pinned one
    (13.8 GB/s): OPT-6.7B 8 x 1, 4-bit weights 0/50/50, the prologue's first matrix (data, then scales)."""
    plan = FlexGenPlan(8, 1, 0, 50, 100, 0, 100, 0, compress_weight=True, gpu="n0.gpu0")
    _, _, hops = _weight_spans(tmp_path, plan)
    route = load_rig("flexgen-t4").route("n0.cpu0", "n0.gpu0")
    data, scales = hops[0], hops[1]
    assert data["args"]["bytes"] == pytest.approx(8 * scales["args"]["bytes"])
    assert data["dur"] * 1e-6 == pytest.approx(data["args"]["bytes"] / route.pageable_bw, rel=0.01)
    assert scales["dur"] * 1e-6 == pytest.approx(scales["args"]["bytes"] / route.bw, rel=0.02)
