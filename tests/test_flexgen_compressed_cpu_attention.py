"""FlexGen 0.1.8 with --cpu-cache-compute and --compress-cache: attention stays on the CPU (flex_opt.py:
273-274, 345-347). mha_gen decompresses the 4-bit cache into the compressed device's fp32 workspace on
the host (compression.py:61-82, 175-180; pytorch_backend.py:403-423) and attends there; the new K and V
are compressed on the GPU and stored as GPU attention's are. And GPU attention's KV copies: made only
where the cache is not at home on the attention's device, live only beside decode attention (two) and
the layer before it (one)."""

from __future__ import annotations

import pytest
from flexgen_placed import datasheet_gpus, placed_lp

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import Flags, candidate_flags
from hetsim.sim.run import fits, simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_ops import HOST_DECOMPRESS_KERNELS, substep_ops
from hetsim.strategies.flexgen_policy import (
    FlexGenPlan,
    Shape,
    fractions,
    kv_token_bytes,
    layer_peaks,
    memory_plan,
    shape_of,
)
from hetsim.workload import Workload

OPT30 = get_model("opt-30b")


def _plan(cpu_attention: bool, **kw) -> FlexGenPlan:
    return FlexGenPlan(64, 8, 5, 95, 0, 100, 100, 0, cpu_attention=cpu_attention, compress_cache=True, **kw)


def test_the_plan_keeps_cpu_attention_with_a_compressed_cache():
    assert _plan(True).uses_cpu_attention
    assert shape_of(_plan(True), Workload(512, 512, 32)).cpu_attention


def test_the_host_decompresses_the_whole_cache_into_fp32_then_attends():
    """OPT-30B 64 x 1 step at 512 + 32 (543 slots allocated, 520 keys now): the CPU ops are K's and V's
    decompression over every allocated slot, writing fp32 (2 + 2 + 4 + 4 bytes per element), then the
    fp32 attention over the keys so far; the new K and V are compressed on the GPU after the output."""
    o = substep_ops(OPT30, "attention", "decode", 64, 1, 520, True, 1.0, False, True, 543)
    deq = [op for op in o.cpu if op.name.startswith("dequant_kv")]
    assert len(deq) == 2 * len(HOST_DECOMPRESS_KERNELS)
    elems = 64 * 543 * 2 * OPT30.kv_heads * OPT30.head_dim
    assert sum(op.flops for op in deq) == pytest.approx(elems * len(HOST_DECOMPRESS_KERNELS))
    assert sum(op.act_out_bytes for op in deq) == pytest.approx(elems * (0.5 + 2 + 0.5 + 2 + 4 + 4))
    assert o.cpu[-1].name == "cpu_attention" and o.cpu[-1].compute_dtype == "fp32"
    assert any(op.name.startswith("compress_kv") for op in o.gpu_post)
    assert not any(op.name.startswith("dequant") for op in o.gpu_pre)
    # a cache copied to the host first (on the GPU or the disk): the kv_len slots it got
    copied = substep_ops(OPT30, "attention", "decode", 64, 1, 520, True, 0.0, False, True, 0)
    assert sum(op.act_out_bytes for op in copied.cpu if op.name.startswith("dequant_kv")) == pytest.approx(
        elems * 13 * 520 / 543
    )


def test_the_engine_runs_it_on_the_host_and_the_lp_follows():
    """flexgen-t4, OPT-30B 64 x 8 at 512 + 32, the cache 4-bit on the CPU: with --cpu-cache-compute the
    engine runs 4.63 tok/s (the whole cache decompressed on the host each step), not GPU attention's
    10.77 (what hetsim ran for this plan before, having turned CPU attention off). The LP at the plan's
    placement within 0.2 % of the engine (-0.04 %; +1.5 % when the engine's fast-forward head sample
    allocated, so decompressed, a cache of its own 6 tokens, not the run's 32: 4.71 tok/s)."""
    rig = load_rig("flexgen-t4")
    ends = endpoints(rig)
    wl = Workload(512, 512, 32)
    strategy = get_strategy("flexgen")
    cpu = simulate(strategy, _plan(True, gpu=ends[0]), rig, OPT30, wl)
    gpu = simulate(strategy, _plan(False, gpu=ends[0]), rig, OPT30, wl)
    assert cpu.throughput_tok_s == pytest.approx(4.6347, rel=1e-3)
    assert gpu.throughput_tok_s == pytest.approx(10.7733, rel=1e-4)
    lp = placed_lp(_plan(True, gpu=ends[0]), rig, OPT30, wl, Flags(True, True, "c"))
    assert abs(lp / cpu.e2e_s - 1) < 0.002


def test_the_search_tries_it_only_when_compression_is_allowed():
    assert Flags(True, True, "c") in candidate_flags(True, allow_lossy=True)
    assert all(not f.compress_cache for f in candidate_flags(True, allow_lossy=False))


def test_the_host_holds_the_padded_fp32_workspace_and_the_unpacking_temporary():
    """OPT-30B 64 x 8 at 512 + 32: K and V of 543 slots x 64 x 56 heads x 128 in fp32 (2.0 GB), and the
    uint8 unpacking temporary (an eighth of one buffer) or, later, q and two score rows; nothing of
    the cache copied to the GPU (the attention reads it on the host)."""
    wl = Workload(512, 512, 32)
    plan = _plan(True)
    mem = memory_plan(OPT30, shape_of(plan, wl), fractions(OPT30, plan))
    rows = 64 * 543 * OPT30.kv_heads
    assert mem["cpu"]["attention_workspace"] == 2 * rows * 128 * 4.0
    assert mem["cpu"]["attention_temporaries"] == rows * 128 / 2
    assert "kv_copies" not in mem["cpu"]
    # the GPU's part: the decode attention's ~7 hidden vectors (``layer_peaks``), no copies; the
    # prefill's peak is the working set's either way
    gpu = memory_plan(OPT30, shape_of(_plan(False), wl), fractions(OPT30, _plan(False)))["gpu"]
    assert mem["gpu"]["working"] == gpu["working"]


def test_gpu_attention_copies_no_kv_that_lives_on_the_gpu():
    """OPT-6.7B fp16, GPU attention, 16 x 4 at 1024 + 32: the cache wholly on the GPU is read in place
    (smart_copy returns it); a split one is copied whole, two batches beside the decode attention."""
    m = get_model("opt-6.7b")
    wl = Workload(64, 1024, 32)
    home = FlexGenPlan(16, 4, 100, 0, 100, 0, 100, 0, cpu_attention=False)
    split = FlexGenPlan(16, 4, 100, 0, 99, 1, 100, 0, cpu_attention=False)
    work = {p.cg: memory_plan(m, shape_of(p, wl), fractions(m, p))["gpu"]["working"] for p in (home, split)}
    s, n, b = 1024, 32, 16
    prefill = layer_peaks(m, b, s, s, False)
    pending = b * s * kv_token_bytes(m, False)
    decode = layer_peaks(m, b, 1, s + n - 1, False)
    copy = b * (s + n - 1) * kv_token_bytes(m, False)
    hid = 2 * b * s * m.hidden * 2.0
    live = [prefill["attention"] + pending, prefill["mlp"] + pending, prefill["input_embed"]]
    live += [prefill["output_embed"], *decode.values()]
    assert work[100] == max(live) + hid
    live += [decode["attention"] + 2 * copy, decode["mlp"] + copy]
    assert work[99] == max(live) + hid
    # the prefill's peak (its two score matrices) is the largest: the copies add nothing on top of it
    assert work[99] == work[100] < max(live) + hid + 2 * copy


def test_the_lp_rows_are_the_ledger_of_its_cache_tier():
    """The LP's memory rows are memory_plan's at the tier its flags fix: a compressed cache's tier is
    known (exact), an uncompressed one's fractions are solved for (copies counted, as for a split)."""
    shape = Shape(16, 4, 1024, 1024 + 32 - 1, False, False, False, True)
    m = get_model("opt-6.7b")
    p = FlexGenPlan(16, 4, 100, 0, 100, 0, 100, 0, cpu_attention=False)
    at_home = memory_plan(m, shape_of(p, Workload(64, 1024, 32)), fractions(m, p))["gpu"]["working"]
    assert memory_plan(m, shape, fractions(m, p))["gpu"]["working"] >= at_home


def test_a_compressed_cache_on_the_gpu_read_by_cpu_attention_is_copied_to_pinned_host_memory():
    """flexgen-t4, OPT-6.7B 16 x 2 at 256 + 16, the 4-bit cache on the GPU, CPU attention: each step's
    kv_len slots are copied to the host (pinned, data and scales apart), two batches live. At the T4's
    datasheet 16 GB (all of OPT-6.7B's weights on the GPU no longer fit its usable 15.30 GB)."""
    rig = datasheet_gpus(load_rig("flexgen-t4"))
    ends = endpoints(rig)
    m = get_model("opt-6.7b")
    plan = FlexGenPlan(16, 2, 100, 0, 100, 0, 100, 0, cpu_attention=True, compress_cache=True, gpu=ends[0])
    wl = Workload(32, 256, 16)
    mem = memory_plan(m, shape_of(plan, wl), fractions(m, plan))
    assert mem["cpu"]["kv_copies"] >= 2 * 16 * 271 * kv_token_bytes(m, True)
    assert fits(get_strategy("flexgen"), plan, rig, m, wl)
    r = simulate(get_strategy("flexgen"), plan, rig, m, wl)
    home = FlexGenPlan(**{**plan.__dict__, "cg": 0.0, "cc": 100.0})
    assert r.throughput_tok_s < simulate(get_strategy("flexgen"), home, rig, m, wl).throughput_tok_s * 1.05


@pytest.mark.parametrize(
    ("flags", "tier"),
    [(Flags(False, True, "g"), "g"), (Flags(True, True, "c"), "c"), (Flags(False, True, "c"), "c")],
)
def test_the_lp_rows_of_a_compressed_cache_are_the_ledger_at_its_tier(flags, tier):
    """A compressed cache lies wholly on the tier its flags fix, so the LP's rows are memory_plan's of
    that plan exactly: no copies counted for a cache the attention reads where it lives (GPU attention
    over a 4-bit cache on the GPU; CPU attention over one on the CPU), GPU attention's copies of a
    cache on the CPU counted (review of s15-16c: the LP counted the copies of every compressed cache)."""
    from hetsim.planner.flexgen_lp import VARS, cost_model

    rig = load_rig("flexgen-t4")
    ends = endpoints(rig)
    m = get_model("opt-6.7b")
    wl = Workload(64, 128, 2048)  # the decode attention's peak (and its copies) binds the GPU
    cm = cost_model(rig, m, wl, 16, 4, flags, ends)
    x = dict.fromkeys(VARS, 0.0) | {"wc": 1.0, "c" + tier: 1.0, "hg": 1.0}
    kv = {t: 100.0 * (t == tier) for t in "gcd"}
    plan = FlexGenPlan(
        16,
        4,
        0,
        100,
        kv["g"],
        kv["c"],
        100,
        0,
        cpu_attention=flags.cpu_attention,
        compress_cache=True,
        gpu=ends[0],
    )
    mem = memory_plan(m, shape_of(plan, wl), fractions(m, plan))
    caps = (rig.devices[ends[0]].mem_bytes, rig.devices[ends[1]].mem_bytes)
    for (coefs, rhs), tier_name, cap in zip(cm.memory, ("gpu", "cpu"), caps, strict=False):
        used = cap - 1e9 * (rhs - sum(c * x[v] for v, c in coefs.items()))
        assert used == pytest.approx(sum(mem[tier_name].values()), rel=1e-9)


def test_one_gpu_batch_holds_one_copy_beside_its_decode_attention():
    """OPT-6.7B fp16, GPU attention, the KV on the CPU, 128 + 2048 (the decode attention with its
    copies is the largest peak): one GPU batch holds only its own copy there (the loop's next load is
    the MLP's, flex_opt.py:1022-1024), two or more hold the next batch's too (review of s15-16c)."""
    m = get_model("opt-6.7b")
    s, n, b = 128, 2048, 16
    copy = b * (s + n - 1) * kv_token_bytes(m, False)
    decode = layer_peaks(m, b, 1, s + n - 1, False)
    hid = 2 * b * s * m.hidden * 2.0
    for nb, held in ((1, 1), (2, 2)):
        plan = FlexGenPlan(b, nb, 100, 0, 0, 100, 100, 0, cpu_attention=False)
        mem = memory_plan(m, shape_of(plan, Workload(b * nb, s, n)), fractions(m, plan))
        assert mem["gpu"]["working"] == pytest.approx(decode["attention"] + held * copy + hid)
