"""FlexGen's copies and kernels as the released code makes them (FMInference/FlexGen 0.1.8:
flex_opt.py, pytorch_backend.py, compression.py), one effect per test, with numbers."""

from __future__ import annotations

import json

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import _Runner
from hetsim.strategies.flexgen_ops import GROUP_SCALE, INDEX_BYTES, _quant, substep_ops
from hetsim.strategies.flexgen_policy import FlexGenPlan, kv_token_bytes
from hetsim.workload import Step, Workload

FOURBIT = FlexGenPlan(64, 8, 0, 100, 0, 100, 0, 100, cpu_attention=False, compress_cache=True, gpu="n0.gpu0")
CPU_ATT = FlexGenPlan(48, 3, 20, 80, 0, 100, 0, 100, cpu_attention=True, gpu="n0.gpu0")


class Recorder:
    """Stands in for the engine: records what a runner piece books."""

    def __init__(self):
        self.copies: list[tuple[str, float, bool]] = []
        self.ops: list[tuple[str, tuple]] = []

    def transfer(self, src, dst, nbytes, *, pinned=True, label="copy", after=None):
        self.copies.append((label, nbytes, pinned))
        return 0.0

    def compute(self, device, ops, *, label=None):
        self.ops.append((label, ops if isinstance(ops, tuple) else (ops,)))
        return 0.0


def drain(gen) -> None:
    for _ in gen or ():
        pass


@pytest.fixture(scope="module")
def opt30b():
    return load_rig("flexgen-t4"), get_model("opt-30b")


def test_compressed_cache_load_copies_every_slot_up_to_the_new_token(opt30b):
    """load_cache path 0 copies prompt_len + i token slots at decode step i (the new token's slot
    included); OPT-30B, gbs 64, step 5 after a 512-token prompt: 64 x 517 x 8064 B = 266.8 MB, K's
    half then V's, each its data then its scales (general_copy_compressed, compression.py:214-215:
    8/9 and 1/9 of the bytes), each pinned by the issuing thread first. CPU attention's gather (path
    1) copies the 516 cached tokens."""
    rig, model = opt30b
    step = Step("decode", 5, 1, 517)
    rec = Recorder()
    r = _Runner(FOURBIT, rig, model, Workload(512, 512, 32))
    _, relay = r.load_cache(rec, step, 1, 64)
    drain(relay)
    tok = kv_token_bytes(model, True)
    assert tok == pytest.approx(2 * 7168 * (0.5 + 4 / 64))  # 8064 B: nibbles plus a (scale, min) pair per 64
    half = 64 * 517 * tok / 2  # K, then V (flex_opt.py:359-368), each pinned then DMA'd
    parts = [pytest.approx(half * 8 / 9), pytest.approx(half / 9)]  # its data, then its scales
    assert rec.copies == [("load_cache", b, True) for b in parts * 2]
    assert [op[1][0].act_in_bytes for op in rec.ops] == parts * 2  # pin_memory's host copies
    rec = Recorder()
    r = _Runner(CPU_ATT, rig, model, Workload(144, 512, 32))
    drain(r.load_cache(rec, step, 1, 48)[1])
    (_, (gather,)) = rec.ops[0]
    assert gather.flops == pytest.approx(48 * 516 * 2 * 7168)


def test_decompression_runs_over_all_loaded_slots(opt30b):
    """mha_gen decompresses the whole loaded buffer (kv_len slots): 13 B + 2 scale reads of 1/32 B per
    element over 64 x 517 x 14336 elements."""
    _, model = opt30b
    o = substep_ops(model, "attention", "decode", 64, 1, 517, False, 1.0, False, True)
    deq = [x for x in o.gpu_pre if x.name.startswith("dequant_kv")]
    assert len(deq) == 12
    elems = 64 * 517 * 2 * 7168
    assert sum(x.mem_bytes for x in deq) == pytest.approx(elems * (13.0 + 2 * GROUP_SCALE))


def test_a_compressed_cache_on_the_gpu_is_decompressed_whole_every_step(opt30b):
    """With the compressed cache on the GPU, load_cache's smart_copy returns the home tensor itself
    (same device), and mha_gen decompresses all of it before slicing ``[:src_s]``
    (pytorch_backend.py: mha_gen): prompt_len + gen_len - 1 = 543 slots at every decode step, not
    kv_len (517 at step 5). Off the GPU, only the kv_len slots copied are decompressed."""
    rig, model = opt30b
    elems = 64 * 2 * 7168 * (13.0 + 2 * GROUP_SCALE)
    step = Step("decode", 5, 1, 517)

    def deq_bytes(plan):
        o = _Runner(plan, rig, model, Workload(512, 512, 32)).ops(step, 1, 64)
        return sum(x.mem_bytes for x in o.gpu_pre if x.name.startswith("dequant_kv"))

    on_gpu = FlexGenPlan(
        64, 8, 0, 100, 100, 0, 0, 100, cpu_attention=False, compress_cache=True, gpu="n0.gpu0"
    )
    assert deq_bytes(on_gpu) == pytest.approx(543 * elems)
    assert deq_bytes(FOURBIT) == pytest.approx(517 * elems)


def test_compression_launches_the_thirteen_ops_of_compression_py():
    """compress(): min and max (values and int64 indices), mx - mn, B / (mx - mn) as reciprocal and
    multiply, data - mn, mul_, clamp_, round_, to(uint8), shift, or, cat: 13 kernels per tensor."""
    ops = _quant("compress_kv", 1e6, 2)
    assert len(ops) == 26
    per = 5e5
    mins = [o for o in ops if o.name.endswith("group_min")]
    assert mins[0].act_out_bytes == pytest.approx(per * (GROUP_SCALE + INDEX_BYTES))
    assert pytest.approx(8 / 64) == INDEX_BYTES


def test_decode_cache_store_is_a_direct_copy_and_prefill_s_goes_through_the_copy_threads(opt30b):
    """general_copy sends a GPU->CPU copy into unpinned memory to the copy threads only when it spans
    more than one token (src.shape[0] > 1): the prefill's slab at the rig's pageable (relay) rate, a
    decode token's K and V (516,096 B at gbs 64, 4-bit) as a direct copy at the link's rate."""
    rig, model = opt30b
    r = _Runner(FOURBIT, rig, model, Workload(512, 512, 32))
    rec = Recorder()
    r.store_cache(rec, Step("decode", 3, 1, 515), 1, 64)
    r.store_cache(rec, Step("prefill", 0, 512, 512), 1, 64)
    assert rec.copies == [
        ("store_cache", pytest.approx(516_096), True),
        ("store_cache", pytest.approx(512 * 516_096), False),
    ]


def test_cpu_attention_copies_move_fp32_q_and_output(opt30b):
    """mha_gen on the CPU: q.float().cpu() (4 B a value), k_new and v_new as fp16, and the output back
    as fp32 (.cuda().half()); gbs 48: 48 x (7168 x 4 + 2 x 7168 x 2) and 48 x 7168 x 4 bytes, the
    device-to-host part as a direct copy (not the copy threads' relay)."""
    rig, model = opt30b
    o = substep_ops(model, "attention", "decode", 48, 1, 520, True, 1.0, False, False)
    assert o.to_cpu_bytes == 48 * (7168 * 4 + 2 * 7168 * 2)
    assert o.to_gpu_bytes == 48 * 7168 * 4
    rec = Recorder()
    r = _Runner(CPU_ATT, rig, model, Workload(144, 512, 32))
    drain(r.compute(rec, Step("decode", 8, 1, 520), 1, 48))
    assert rec.copies[0] == ("qkv_to_cpu", o.to_cpu_bytes, True)
    assert rec.copies[1] == ("attn_to_gpu", o.to_gpu_bytes, False)


def _spans(tmp_path, plan, model, wl):
    rig = load_rig("flexgen-t4")
    trace = tmp_path / "t.json"
    r = simulate(get_strategy("flexgen"), plan, rig, get_model(model), wl, trace_path=str(trace))
    assert r.feasible, r.reason
    ev = json.loads(trace.read_text())
    ev = ev["traceEvents"] if isinstance(ev, dict) else ev
    return r, [e for e in ev if e.get("ph") == "X"]


def test_cache_store_overlaps_the_gpu_kernels_launched_before_it(tmp_path):
    """store_cache(k - 1) is issued right after compute_layer(k) launched its kernels: with attention
    on the GPU the store runs under them, not after them."""
    plan = FlexGenPlan(8, 2, 100, 0, 0, 100, 0, 100, cpu_attention=False, gpu="n0.gpu0")
    _, spans = _spans(tmp_path, plan, "opt-6.7b", Workload(16, 256, 3))
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] in ("attention", "mlp")]
    stores = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] == "store_cache"]
    assert stores
    under = [s for s in stores if any(a < s[1] and s[0] < b - 1e-6 for a, b in gpu)]
    assert len(under) == len(stores)


def test_hidden_copies_hold_the_default_stream_before_the_kernels(tmp_path):
    """store_hidden(k - 1) and load_hidden(k + 1) are copy_ calls on the default stream, issued before
    compute_layer(k): its kernels start only once both copies' own bytes have moved (OPT-6.7B, gbs 8,
    prompt 256: 16.8 MB each way per prefill position, 3.2 + 1.2 ms at 4.82 / 12.89 GiB/s)."""
    rig = load_rig("flexgen-t4")
    plan = FlexGenPlan(8, 2, 0, 100, 100, 0, 0, 100, cpu_attention=False, gpu="n0.gpu0")
    model = get_model("opt-6.7b")
    r = _Runner(plan, rig, model, Workload(16, 256, 3))
    pre = Step("prefill", 0, 256, 256)
    nbytes = 8 * 256 * 4096 * 2
    assert r._hidden_copy_s(pre, 3, 8, store=True) == pytest.approx(10e-6 + nbytes / (4.82 * 2**30))
    assert r._hidden_copy_s(pre, 3, 8, store=False) == pytest.approx(10e-6 + nbytes / (12.89 * 2**30))
    _, spans = _spans(tmp_path, plan, "opt-6.7b", Workload(16, 256, 3))
    hid = sorted((e["ts"], e["dur"]) for e in spans if e["name"] in ("store_hidden", "load_hidden"))
    kernels = sorted(e["ts"] for e in spans if e["name"] in ("attention", "mlp"))
    # every GPU kernel of a prefill position starts at least one hidden copy's own time after the
    # copies were issued: no kernel overlaps the first position's pair of copies
    first_copy_end = hid[0][0] + hid[0][1]
    assert all(k >= first_copy_end - 1e-6 for k in kernels if k >= hid[0][0])


def test_compressed_embedding_tables_are_decompressed_padded_then_cut(opt30b):
    """--compress-weight groups rows in 64s: OPT's 50272-token and 2050-position tables are stored
    padded to 50304 and 2112 rows, decompressed whole for every GPU batch, then cut back by one more
    copy (2 + 2 B an element); the decoder's matrices (7168 and 28672 rows) need neither."""
    _, model = opt30b
    h = 7168
    o = substep_ops(model, "embed", "decode", 64, 1, 520, False, 1.0, True, False)
    deq = [x for x in o.gpu_pre if x.name.startswith("dequant")]
    unpad = [x for x in deq if x.name.endswith("unpad")]
    assert len(deq) == 2 * 6 + 2
    assert [u.mem_bytes for u in unpad] == [4.0 * 50272 * h, 4.0 * 2050 * h]
    padded = (50304 + 2112) * h
    assert sum(x.mem_bytes for x in deq) == pytest.approx(
        padded * (13 + 2 * GROUP_SCALE) + 4.0 * (50272 + 2050) * h
    )
    att = substep_ops(model, "attention", "decode", 64, 1, 520, False, 1.0, True, False)
    assert not [x for x in att.gpu_pre if x.name.endswith("unpad")]


def test_cpu_attention_reads_its_disk_kv_on_the_copy_threads(tmp_path):
    """CPU attention with half the KV on disk (OPT-30B, 32 x 2, flexgen-t4): load_cache puts the disk
    segment on the copy threads' queue (flex_opt.py:374-398, pytorch_backend.py:831-833 and
    :878-906) and the loop waits for it only at ``sync()``. So the reads overlap the issuing thread's
    CPU attention, and the thread converts only the CPU segment to fp32. Before, the engine read the
    disk share on the thread before the gather, converted both shares there, and nothing overlapped:
    the decode step was 16.92 s, now 14.35 s (disk read 11.3 s, CPU 3.70 -> 3.04 s a step)."""
    import json

    from hetsim.hardware.loader import load_rig
    from hetsim.models import get_model
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan
    from hetsim.workload import Workload

    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    plan = FlexGenPlan(32, 2, 0, 100, 0, 50, 100, 0, cpu_attention=True, gpu="n0.gpu0")
    path = tmp_path / "t.json"
    simulate(get_strategy("flexgen"), plan, rig, model, Workload(64, 512, 2), trace_path=str(path))
    raw = json.loads(path.read_text())
    ev = [e for e in (raw["traceEvents"] if isinstance(raw, dict) else raw) if e.get("ph") == "X"]

    def spans(name):
        return [(e["ts"], e["ts"] + e["dur"]) for e in ev if e["name"] == name]

    reads, attention = spans("load_cache_disk"), spans("cpu_attention")
    assert reads and attention
    overlap = sum(max(0.0, min(b, d) - max(a, c)) for a, b in reads for c, d in attention)
    assert overlap > 0.2 * sum(d - c for c, d in attention)
    # the thread converts the CPU segment only: K's and V's halves, each a quarter of the KV
    cpu = rig.devices["n0.cpu0"]
    from hetsim.costs.op_cost import block_cost
    from hetsim.strategies.flexgen_ops import kv_gather_op

    quarter = block_cost(cpu, (kv_gather_op(model, 32, 512, 0.25),)).time_s
    gathers = [(b - a) / 1e6 for a, b in spans("kv_gather")]  # trace times in microseconds
    assert gathers and min(gathers) < 1.5 * quarter


def test_a_disk_kv_read_books_its_conversion_on_host_dram():
    """A copy thread's read of fp16 KV from disk into the fp32 workspace (pytorch_backend.py:904:
    ``dst_data.copy_(src_data)`` on a memmap) moves, beside the read's page-cache write, 2 B read back
    and 4 B written per element: ``KV_CONVERT`` = 3 bytes of host DRAM per byte read, booked with the
    read at its pace. CPU work issued after it gets what the socket has left, the delay the LP
    charges (``overlap_delay`` at the read's rate times 1 + KV_CONVERT; hexgen-homogeneous: 16 GB/s
    of disk, 64 GB/s of DRAM, beside a 113 GB/s socket). Before, the read booked 16 GB/s only."""
    from hetsim.costs.op_cost import block_cost
    from hetsim.sim.bandwidth import host_dram_bw, overlap_delay
    from hetsim.sim.engine import Engine
    from hetsim.strategies.flexgen_ops import KV_CONVERT, kv_gather_op

    rig, model = load_rig("hexgen-homogeneous"), get_model("llama2-70b")
    cpu, disk = "n0.cpu0", "n0.disk0"
    rate = min(rig.route(disk, cpu).bw, rig.disks[disk].read_bw)
    assert KV_CONVERT == 3.0
    engine = Engine(rig)
    nbytes = 4e9  # a 0.25 s read
    read_end = engine.book_transfer(disk, cpu, nbytes, host_extra=KV_CONVERT)
    op = kv_gather_op(model, 128, 512, 1.0)  # ~0.4 GB of host DRAM: ends within the read
    cost = block_cost(rig.devices[cpu], (op,))
    end = engine.book_compute(cpu, op, after=0.01) - 0.01  # well inside the read
    cap = min(cost.achieved_mem_bw, cost.memory_bytes / cost.compute_s if cost.compute_s else float("inf"))
    dram = host_dram_bw(rig, cpu)
    left = dram - rate * (1 + KV_CONVERT)
    assert 0 < left < cap  # the conversion leaves the gather less than its own rate
    assert end < read_end
    assert end == pytest.approx(cost.overhead_s + cost.memory_bytes / left, rel=1e-6)
    # the LP's per-second delay, at the conversion's bytes, is the engine's
    alone = cost.memory_bytes / cap
    slowed = end - cost.overhead_s
    assert slowed - alone == pytest.approx(
        overlap_delay(dram, rate * (1 + KV_CONVERT), cap) * slowed, rel=1e-6
    )


def test_cpu_attention_kv_on_disk_is_no_faster_than_in_host_memory():
    """llama2-70b, 128 x 16 + 512 + 3 on hexgen-homogeneous, CPU attention, all weights on the CPU:
    53 % of the KV on disk (near the search's 1/47/52 % before this change) against 6 %. The KV on disk is
    read and converted to fp32 by the copy threads beside the issuing thread, but on the same
    socket's DRAM (KV_CONVERT), so it no longer buys time over converting it on the thread (decode
    phase: 40.71 s on disk vs 45.34 s in host memory before; now 48.92 vs 46.06 s)."""
    rig, model = load_rig("hexgen-homogeneous"), get_model("llama2-70b")
    wl = Workload(128 * 16, 512, 3)
    decode = {}
    for cc in (47, 94):
        plan = FlexGenPlan(128, 16, 0, 100, 0, cc, 100, 0, cpu_attention=True, gpu="n0.gpu0")
        res = simulate(get_strategy("flexgen"), plan, rig, model, wl)
        decode[cc] = res.e2e_s - res.ttft_s
    assert decode[47] >= decode[94]
