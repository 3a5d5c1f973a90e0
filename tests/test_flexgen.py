"""FlexGen and its offloading baselines against arXiv 2303.06865 Tab. 2 (OPT-30B on a T4, prompt 512,
gen 32; paper_figs/paper_points.csv), plus the paper's ablation orderings as mechanism checks."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import search_policy
from hetsim.sim.run import simulate
from hetsim.strategies.base import all_strategies, get_strategy
from hetsim.strategies.flexgen_policy import FlexGenPlan, fractions
from hetsim.workload import Workload

POINTS = Path(__file__).resolve().parents[1] / "paper_figs" / "paper_points.csv"
TOL = 0.15
PAPER = FlexGenPlan(48, 3, 20, 80, 0, 100, 0, 100, cpu_attention=True, gpu="n0.gpu0")
FOURBIT = FlexGenPlan(64, 8, 0, 100, 0, 100, 0, 100, cpu_attention=False, compress_cache=True, gpu="n0.gpu0")


def published(setting: str) -> float:
    fallback = {
        "flexgen": 7.32,
        "flexgen_4bit": 8.38,
        "deepspeed_zero_inference": 0.60,
        "hf_accelerate": 0.62,
    }
    if POINTS.exists():
        with POINTS.open() as fh:
            for row in csv.DictReader(fh):
                if row["paper"] == "FlexGen" and row["setting"] == setting:
                    return float(row["value"])
    return fallback[setting]


@pytest.fixture(scope="module")
def t4():
    return load_rig("flexgen-t4"), get_model("opt-30b")


def run(t4, strategy: str, plan, batch: int):
    rig, model = t4
    return simulate(get_strategy(strategy), plan, rig, model, Workload(batch, 512, 32))


@pytest.fixture(scope="module")
def paper_result(t4):
    return run(t4, "flexgen", PAPER, 144)


def test_released_placement_puts_8_percent_of_layer_weights_on_gpu(t4):
    """--percent 20 80: only W_out (+ small tensors) of each attention block lands on the GPU (§3)."""
    _, model = t4
    from hetsim.strategies.flexgen_policy import layer_weight_split

    split = layer_weight_split(model, PAPER)
    att, mlp = split[1], split[2]
    share = (att[0] + mlp[0]) / (sum(att) + sum(mlp))
    assert share == pytest.approx(1 / 12, rel=0.01)
    assert fractions(model, replace(PAPER, wg=30, wc=70)).w_gpu > 4 * fractions(model, PAPER).w_gpu


def test_golden_flexgen_paper_policy(paper_result):
    """7.68 tok/s vs 7.32 (+5%) with the T4's GEMM and attention rates, the VM's host memory bandwidth
    and its GPU->CPU copy rates (0.97 GiB/s through the copy threads into the unpinned KV cache,
    4.82 GiB/s into pinned memory) from FlexGen's part-level fit on that machine (rig flexgen-t4), and
    the loop's order of copies (the prefill's KV store under the next batch's kernels, the hidden
    copies ahead of them on the default stream); 6.97 (-5%) with the store after the kernels, 12.54
    (+71%) with catalogue defaults."""
    assert paper_result.feasible, paper_result.reason
    assert paper_result.throughput_tok_s == pytest.approx(published("flexgen"), rel=TOL)


@pytest.mark.xfail(
    strict=False,
    reason="hetsim gives 10.09 tok/s vs published 8.38 (+20%, outside this test's 15%): with the code's own "
    "copies and kernels, audited op by op (the pin_memory relay of the unpinned 4-bit KV over kv_len slots, "
    "the six decompress and 13 compress kernels the release runs, recorded op by op in "
    "test_flexgen_compression_ops, the direct store of the new token under the kernels, FlexGen's fitted T4 "
    "decode attention rate and GPU->CPU rates) a decode step is 23.3-24.2 s (mean 23.8: decompression 9.5, "
    "attention 4.7, GEMMs 1.9, pin_memory 4.0) after an 886 s prefill; the published total implies ~34.5 s "
    "per step. FlexGen's release fitted no compressed-KV constant; its decode GEMM rate (mm_flops_g 4.3 "
    "TFLOPS) is not entered (it absorbs terms hetsim models apart) and would give 9.35 (+12%)",
)
def test_golden_flexgen_4bit(t4):
    r = run(t4, "flexgen", FOURBIT, 512)
    assert r.feasible, r.reason
    assert r.throughput_tok_s == pytest.approx(published("flexgen_4bit"), rel=TOL)


@pytest.mark.xfail(
    strict=False,
    reason="hetsim gives 0.90 tok/s vs published 0.60 (+49%): copy-bound, per step 60.7 GB of host copies at "
    "the pinned 12.89 GiB/s (4.38 s); DeepSpeed 0.8.0's all-gathers (a GPU copy of every fetched byte at "
    "world size 1) run beside the next copies (prefetch fills the 1e9-element live cap). The published run "
    "implies ~6.7 s per step: ~2.2 s more, ~7.6 ms per fetched tensor (291 per forward), host time per hook "
    "that no released measurement gives. Pageable copies (DeepSpeed's default pin_memory false) give 0.40 "
    "(-34%)",
)
def test_golden_deepspeed(t4):
    rig, model = t4
    s = get_strategy("deepspeed")
    plan = replace(s.default_plan(rig, model, Workload(4, 512, 32)), batch_per_pass=4)
    r = run(t4, "deepspeed", plan, 4)
    assert r.feasible, r.reason
    assert r.throughput_tok_s == pytest.approx(published("deepspeed_zero_inference"), rel=TOL)


@pytest.mark.skipif(
    "accelerate" not in {s.name for s in all_strategies()}, reason="accelerate strategy not present"
)
@pytest.mark.xfail(
    strict=False,
    reason="hetsim gives 0.76 tok/s vs published 0.62 (+22%): every decoder layer copied in by the hooks, "
    "synchronously, at the pageable H2D rate, which is assumed (6 GB/s; no measured figure for that VM); "
    "the run is ~linear in it",
)
def test_golden_accelerate(t4):
    """The benchmark's device map (hf_opt.py --cpu-offload): embeddings and LM head on the GPU, every
    decoder layer offloaded; the default plan (device_map="auto" filling the GPU) keeps 6 resident."""
    rig, model = t4
    s = get_strategy("accelerate")
    plan = s.default_plan(rig, model, Workload(8, 512, 32))
    plan = replace(plan, gpu_layers=0, cpu_layers=model.layers - plan.disk_layers)
    r = run(t4, "accelerate", plan, 8)
    assert r.feasible, r.reason
    assert r.throughput_tok_s == pytest.approx(published("hf_accelerate"), rel=TOL)


def test_flexgen_beats_the_row_by_row_baselines(t4, paper_result):
    """The core claim: a large block with KV on the CPU beats streaming weights per small batch."""
    ds = run(t4, "deepspeed", get_strategy("deepspeed").default_plan(*t4, Workload(4, 512, 32)), 4)
    assert paper_result.throughput_tok_s > 5 * ds.throughput_tok_s


def test_ablation_no_cpu_attention_hurts(t4, paper_result):
    r = run(t4, "flexgen", replace(PAPER, cpu_attention=False), 144)
    assert r.feasible, r.reason
    assert r.throughput_tok_s < paper_result.throughput_tok_s


def test_ablation_no_overlap_hurts_and_ideal_overlap_helps(t4, paper_result):
    serial = run(t4, "flexgen", replace(PAPER, overlap=False), 144)
    ideal = run(t4, "flexgen", replace(PAPER, overlap_mode="paper-ideal"), 144)
    assert serial.throughput_tok_s < paper_result.throughput_tok_s <= ideal.throughput_tok_s * (1 + 1e-9)


def test_infeasible_policy_is_a_result_with_a_reason(t4):
    r = run(t4, "flexgen", replace(PAPER, wg=100, wc=0), 144)
    assert not r.feasible and "out of memory on n0.gpu0" in r.reason
    budget = run(t4, "flexgen", replace(PAPER, gpu_mem_budget=6e9), 144)
    assert not budget.feasible and "gpu_mem_budget" in budget.reason


def test_search_reaches_the_paper_policy(t4, paper_result):
    rig, model = t4
    out = search_policy(rig, model, Workload(144, 512, 32))
    assert out.plan is not None
    found = run(t4, "flexgen", out.plan, 144)
    assert found.throughput_tok_s >= paper_result.throughput_tok_s * (1 - 1e-9)


# FlexGen's released decode GEMM rate on this T4 (experimental/cost_model.py, mm_flops_g), over
# bls * (8 h1^2 + 4 h1 h2) FLOPs a layer: one rate, linear in the batch
FIT_DECODE_GEMM_FLOPS = 4.3e12


def decode_gemm_flops(t4, gbs: int) -> float:
    """FLOP/s of one decode fc1 GEMM of ``gbs`` rows on the rig's T4, as the engine times it."""
    from hetsim.costs.op_cost import op_cost
    from hetsim.strategies.flexgen_ops import substep_ops

    rig, model = t4
    mlp = substep_ops(model, "mlp", "decode", gbs, 1, 528, True, 1.0, False, False)
    fc1 = next(o for o in mlp.gpu_pre if o.name == "fc1")
    return fc1.flops / op_cost(rig.devices["n0.gpu0"], fc1).time_s


def test_t4_decode_gemm_is_flexgen_s_fitted_rate_where_it_streams_its_weights(t4):
    """FlexGen's fit gives the T4's decode GEMMs one rate, 4.3 TFLOPS, linear in the batch; hetsim's
    roofline (the fitted prefill rate, 21.24 TFLOPS, and GDDR6 at 0.8 of 320 GB/s) gives that rate
    where a GEMM is bound by streaming its weights (16 rows: 4.06 TFLOPS; the two meet at ~17 rows)
    and 2.8x / 4.9x it at the paper's 48 rows and the search's 96: a rate linear in the batch has no
    memory floor, so it cannot hold at both ends. The rig keeps the roofline (no T4 GEMM was measured
    at 48 or 96 rows; with a Hockney half-rows of 90, as measured A100/A40 GEMMs have, both plans lose
    ~2 % and the search stays ~12 % ahead: docs/offloading-baselines.md)."""
    # weight-bound at 16 rows: the rate is linear in the rows (as the fit's is), whatever the DRAM rate
    assert decode_gemm_flops(t4, 16) == pytest.approx(2 * decode_gemm_flops(t4, 8), rel=0.02)
    assert decode_gemm_flops(t4, 48) > 2.5 * FIT_DECODE_GEMM_FLOPS
    assert decode_gemm_flops(t4, 96) > 4.5 * FIT_DECODE_GEMM_FLOPS


def per_sequence(r, plan: FlexGenPlan) -> tuple[float, float]:
    """(prefill, one decode step) in seconds a sequence of the block."""
    assert r.feasible, r.reason
    return r.ttft_s / plan.block_size, r.tpot_s / plan.block_size


def test_search_beats_the_paper_policy_by_two_effects_of_the_released_loop(t4, paper_result):
    """The search's plan (96 x 1, weights 0/100, activations on the GPU) is faster than the paper's
    48 x 3 a sequence by how the released loop orders copies (flex_opt.py:1011-1054), not by a cheaper
    part: (1) with the activations on the CPU, store_hidden / load_hidden copy each batch's hidden
    states on the default stream ahead of its kernels: 1782 -> 1610 ms of prefill a sequence, decode
    unchanged; (2) with one GPU batch, the prefill's KV store of an attention block runs under the
    next MLP's kernels (with three, two of three run under one batch's attention kernels: 0.68 s of
    copy beside 0.52 s), and a decode step's next-layer weights load beside the whole position's CPU
    work (with three, the attention block's beside one batch's MLP kernels): 1610 -> 1505 ms and
    79.0 -> 73.8 ms a sequence (weights all on the CPU in both)."""
    paper = per_sequence(paper_result, PAPER)
    act_gpu = replace(PAPER, hg=100, hc=0)
    on_gpu = per_sequence(run(t4, "flexgen", act_gpu, 144), act_gpu)
    assert on_gpu[0] < 0.92 * paper[0]
    assert on_gpu[1] == pytest.approx(paper[1], rel=0.01)
    three = replace(act_gpu, wg=0, wc=100)
    one = replace(three, gpu_batch_size=96, num_gpu_batches=1)
    nb3, nb1 = (
        per_sequence(run(t4, "flexgen", three, 144), three),
        per_sequence(run(t4, "flexgen", one, 96), one),
    )
    assert nb1[0] < 0.95 * nb3[0]
    assert nb1[1] < 0.95 * nb3[1]


SEARCH_TOL = 0.25  # issue 16's bar for hetsim's own search against a published point


@pytest.fixture(scope="module")
def own_search():
    """What `hetsim compare --objective throughput` picks for FlexGen with no flags but model and rig."""
    from hetsim import api

    p = api.problem("opt-30b", "flexgen-t4", batch=None, prompt_len=512, gen_len=32)
    return api.best_result(get_strategy("flexgen"), p, "throughput")


def test_golden_flexgen_own_search(own_search):
    """hetsim's own policy search (free batch, lossless) on Tab. 2's OPT-30B cell: 8.55 tok/s at a
    block of 96 (96 x 1, weights 0/100, KV 3/96/1, CPU attention, activations on the GPU) vs 7.32
    published (+17 %; the paper's own policy runs at 7.68: the two loop effects of
    test_search_beats_the_paper_policy_by_two_effects_of_the_released_loop); the batch is
    FlexGen-class (the paper's block: 144)."""
    assert own_search.feasible, own_search.reason
    assert 64 <= own_search.batch <= 1024
    assert not own_search.lossy
    assert own_search.throughput_tok_s == pytest.approx(published("flexgen"), rel=SEARCH_TOL)


@pytest.mark.xfail(
    strict=False,
    reason="hetsim's own search with --allow-compression gives 10.77 tok/s (64 x 8, block 512) vs published "
    "8.38 (+29%, outside issue 16's 25%): the 4-bit KV decode step is ~1/3 shorter than the published total "
    "implies, and no measured part of FlexGen's compressed path on the T4 accounts for it",
)
def test_golden_flexgen_own_search_4bit():
    """With --allow-compression: 10.77 tok/s (64 x 8, weights 5/95, 4-bit KV, activations on the GPU) vs
    published 8.38 (+29 %): the paper policy's 4-bit KV decode gap (+20 %) plus its prefill without the
    hidden states' copies on the default stream ahead of each batch's kernels (886 -> 789 s; the paper's
    policy keeps the activations on the CPU): tools/flexgen_lanes.py."""
    from hetsim import api

    p = api.problem("opt-30b", "flexgen-t4", batch=None, prompt_len=512, gen_len=32)
    r = api.best_result(get_strategy("flexgen"), p, "throughput", allow_lossy=True)
    assert r.feasible and r.lossy
    assert r.throughput_tok_s == pytest.approx(published("flexgen_4bit"), rel=SEARCH_TOL)


def test_decompress_costs_what_flexgen_s_pytorch_ops_move():
    """compression.py's decompress: six kernels per tensor, 13 B of memory traffic per fp16 element
    (plus the group scales), not one fused 0.5625 B -> 2 B kernel."""
    from hetsim.strategies.flexgen_ops import GROUP_SCALE, _dequant

    ops = _dequant("dequant_kv", 1e9, 2)
    assert len(ops) == 12
    assert sum(o.mem_bytes for o in ops) == pytest.approx(1e9 * (13.0 + 2 * GROUP_SCALE))


def test_unpinned_kv_is_pinned_by_the_issuing_thread_before_its_dma(tmp_path):
    """general_copy's relay: pin_memory() (a host memcpy that blocks the loop, so no GPU kernel runs
    meanwhile) then the DMA at the pinned rate, one per load of the CPU-resident cache."""
    import json

    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    plan = FlexGenPlan(8, 2, 100, 0, 0, 100, 100, 0, cpu_attention=False, compress_cache=True, gpu="n0.gpu0")
    trace = tmp_path / "t.json"
    r = simulate(get_strategy("flexgen"), plan, rig, model, Workload(16, 64, 3), trace_path=str(trace))
    assert r.feasible, r.reason
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    spans = [e for e in events if e.get("ph") == "X"]
    pins = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] == "pin_memory"]
    dmas = sorted(e["ts"] for e in spans if e["name"] == "load_cache")
    kernels = ("attention", "mlp", "embed", "output")
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] in kernels]
    assert pins and len(pins) == len(dmas)
    for (_, end), start in zip(sorted(pins), dmas, strict=True):
        assert start >= end - 1e-6
    for a, b in pins:
        assert not any(s < b - 1e-6 and e > a + 1e-6 for s, e in gpu)


def test_unpinned_weights_run_the_released_loop():
    """``pin_weight=False`` (``--pin-weight 0``): the prologue's weight relay is issued on the engine
    and waited on as events (it raised TypeError: its DMA's event went to ``wait_until``); the
    pin_memory copies make it slower than the same plan pinned."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    pinned = FlexGenPlan(16, 2, 40, 30, 0, 50, 0, 100, cpu_attention=False, gpu="n0.gpu0")
    for plan in (pinned, replace(pinned, cpu_attention=True)):
        fast = simulate(get_strategy("flexgen"), plan, rig, model, Workload(32, 128, 4))
        slow = simulate(
            get_strategy("flexgen"), replace(plan, pin_weight=False), rig, model, Workload(32, 128, 4)
        )
        assert fast.feasible and slow.feasible, (fast.reason, slow.reason)
        assert slow.e2e_s > fast.e2e_s


def test_disk_loads_hop_to_the_gpu_after_their_reads_land(tmp_path):
    """Weights and KV on disk, GPU attention: each disk load's link hop, booked after the position's
    other copies (``_Booked.book_hops``), starts after a read of it has landed, and the link carries
    the bytes the disk read, label by label."""
    import json

    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    plan = FlexGenPlan(16, 2, 40, 30, 0, 50, 0, 100, cpu_attention=False, gpu="n0.gpu0")
    trace = tmp_path / "t.json"
    r = simulate(get_strategy("flexgen"), plan, rig, model, Workload(32, 128, 4), trace_path=str(trace))
    assert r.feasible, r.reason
    events = json.loads(trace.read_text())["traceEvents"]
    seen, spans = set(), []
    for e in events:  # a copy is one span on each lane it holds
        a = e.get("args") or {}
        key = (e.get("name"), e.get("ts"), e.get("dur"), a.get("src"), a.get("dst"), a.get("bytes"))
        if e.get("ph") == "X" and "src" in a and key not in seen:
            seen.add(key)
            spans.append(e)
    for label in ("load_cache_disk", "load_weight_disk"):
        reads = [e for e in spans if e["name"] == label and e["args"]["src"] == "n0.disk0"]
        hops = [e for e in spans if e["name"] == label and e["args"]["dst"] == "n0.gpu0"]
        assert reads and len(reads) == len(hops)
        assert sum(e["args"]["bytes"] for e in hops) == pytest.approx(sum(e["args"]["bytes"] for e in reads))
        landed = sorted(e["ts"] + e["dur"] for e in reads)
        for end, start in zip(landed, sorted(e["ts"] for e in hops), strict=True):
            assert start >= end - 1e-6


def _kv_load_spans(tmp_path, compress: bool):
    """OPT-6.7B 8 x 1 on flexgen-t4 (512 + 3), every weight on the GPU, the KV on the CPU (4-bit when
    ``compress``), GPU attention: the model and its trace's pin_memory and load_cache spans by start."""
    import json

    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    plan = FlexGenPlan(
        8, 1, 100, 0, 0, 100, 100, 0, cpu_attention=False, compress_cache=compress, gpu="n0.gpu0"
    )
    trace = tmp_path / "t.json"
    r = simulate(get_strategy("flexgen"), plan, rig, model, Workload(8, 512, 3), trace_path=str(trace))
    assert r.feasible, r.reason
    spans = sorted(
        (e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"),
        key=lambda e: e["ts"],
    )
    pins = [e for e in spans if e["name"] == "pin_memory"]
    dmas = [e for e in spans if e["name"] == "load_cache"]
    return model, pins, dmas


def test_gpu_attention_pins_v_while_ks_dma_runs(tmp_path):
    """OPT-6.7B 8 x 1 on flexgen-t4, every weight on the GPU, the KV on the CPU, GPU attention: the
    released load_cache copies K, then V (flex_opt.py:359-368), each pinned in the issuing thread then
    DMA'd (general_copy, pytorch_backend.py:843-849). So each decode load is two (pin, DMA) pairs of
    half the bytes, K's DMA starts when K's pin ends while V's pin runs, and the load ends K's pin
    plus both DMAs after it starts (here DMA-bound): at least half the pin time before one pin of
    both then one DMA would (fails when K and V are pinned as one copy)."""
    from hetsim.strategies.flexgen_policy import kv_token_bytes

    model, pins, dmas = _kv_load_spans(tmp_path, compress=False)
    tok = kv_token_bytes(model, False)  # one layer's K and V of a token
    assert len(pins) == len(dmas) == 2 * 2 * model.layers  # K and V, 2 decode steps, every layer
    for i in range(0, len(pins), 2):
        (pk, pv), (dk, dv) = pins[i : i + 2], dmas[i : i + 2]
        assert dk["args"]["bytes"] == dv["args"]["bytes"]  # half of the kv_len (513 or 514) slots each
        assert dk["args"]["bytes"] in (pytest.approx(8 * n * tok / 2) for n in (513, 514))
        assert dk["ts"] == pytest.approx(pk["ts"] + pk["dur"]) == pytest.approx(pv["ts"])
        end = dv["ts"] + dv["dur"]
        assert end == pytest.approx(pk["ts"] + pk["dur"] + dk["dur"] + dv["dur"])
        one_copy = 2 * pk["dur"] + dk["dur"] + dv["dur"]  # both pinned (unslowed), then one DMA
        assert end - pk["ts"] <= one_copy - 0.5 * 2 * pk["dur"] + 1e-6


@pytest.mark.parametrize(("compress", "cc"), [(True, 100), (False, 70)])
def test_gpu_attention_kv_halves_carry_the_whole_load(tmp_path, compress, cc):
    """OPT-6.7B 8 x 2 on flexgen-t4, GPU attention, the KV on the CPU (4-bit, data and scales, or
    fp16 with 30 % on disk): each decode load's K and V DMAs carry half of the CPU share each (a
    4-bit tensor as two copies, its data then its scales, 8/9 and 1/9 of its bytes), so a step's
    load_cache bytes are its kv_len slots of the compressed (or fp16) token bytes times the CPU
    fraction, the pins the same bytes, and the disk copies the rest."""
    import json

    from hetsim.strategies.flexgen_policy import copy_parts, kv_token_bytes

    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    plan = FlexGenPlan(
        8, 2, 100, 0, 0, cc, 100, 0, cpu_attention=False, compress_cache=compress, gpu="n0.gpu0"
    )
    trace = tmp_path / "t.json"
    r = simulate(get_strategy("flexgen"), plan, rig, model, Workload(16, 512, 3), trace_path=str(trace))
    assert r.feasible, r.reason
    spans = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    dmas = [e["args"]["bytes"] for e in spans if e["name"] == "load_cache"]
    tok = kv_token_bytes(model, compress)
    parts = copy_parts(compress)  # a 4-bit tensor: its data, then its scales
    n = len(parts)
    # 2 decode steps (kv_len 513, 514), 2 batches, every layer, K and V
    assert len(dmas) == 2 * 2 * model.layers * 2 * n
    whole = sum(8 * n * tok for n in (513, 514)) * 2 * model.layers
    assert sum(dmas) == pytest.approx(whole * cc / 100)
    for i in range(0, len(dmas), 2 * n):  # K's half, V's half, each in copy_parts' shares
        k, v = dmas[i : i + n], dmas[i + n : i + 2 * n]
        assert k == v
        assert [b / sum(k) for b in k] == pytest.approx(parts)
    disk = sum(e["args"]["bytes"] for e in spans if e["name"] == "load_cache_disk")
    assert cc == 100 or disk > 0


def test_a_4bit_kv_load_is_four_pin_dma_pairs(tmp_path):
    """OPT-6.7B 8 x 1 on flexgen-t4, every weight on the GPU, a 4-bit KV cache on the CPU: the
    released general_copy_compressed copies a tensor's data, then its scales (compression.py:214-215),
    each pinned in the issuing thread then DMA'd (pytorch_backend.py:843-849). So a decode load is
    four (pin, DMA) pairs, K's data, K's scales, V's data, V's scales: the thread pins them back to
    back, and each DMA starts when its pin and the DMA before it have ended (fails with K and V
    each one pinned copy)."""
    import itertools

    model, pins, dmas = _kv_load_spans(tmp_path, compress=True)
    assert len(pins) == len(dmas) == 4 * 2 * model.layers  # 4 pairs, 2 decode steps, every layer
    for i in range(0, len(pins), 4):
        p, d = pins[i : i + 4], dmas[i : i + 4]
        assert d[0]["args"]["bytes"] == pytest.approx(8 * d[1]["args"]["bytes"])  # data, then scales
        for a, b in itertools.pairwise(p):  # the thread pins them one after the other
            assert b["ts"] == pytest.approx(a["ts"] + a["dur"])
        ends = [x["ts"] + x["dur"] for x in d]
        for j in range(4):
            ready = p[j]["ts"] + p[j]["dur"]
            assert d[j]["ts"] == pytest.approx(max(ready, ends[j - 1]) if j else ready)


def test_disk_reads_reach_the_gpu_through_a_host_relay():
    """FlexGen's copy threads read a disk tensor into a pinned relay, then DMA it: the PCIe lane is
    busy only for its own hop (at 12.89 GiB/s), not for the whole read from the disk, which runs at
    the disk's read rate."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    plan = FlexGenPlan(8, 1, 0, 0, 100, 0, 100, 0, gpu="n0.gpu0")  # weights on disk
    r = simulate(get_strategy("flexgen"), plan, rig, model, Workload(8, 64, 2))
    assert r.feasible, r.reason
    disk, pcie = r.utilization["n0.disk0:read"], r.utilization["n0.pcie.gpu0:rev"]
    assert disk > 0.8  # disk-bound
    read_bw, pcie_bw = rig.disks["n0.disk0"].read_bw, rig.route("n0.cpu0", "n0.gpu0").bw
    assert pcie == pytest.approx(disk * read_bw / pcie_bw, rel=0.05)
