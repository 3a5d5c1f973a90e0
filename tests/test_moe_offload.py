"""moe-offload (KTransformers-style) and layer-offload (llama.cpp-style) on one GPU and Xeon sockets."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.cli import main
from hetsim.errors import InputError
from hetsim.hardware.catalog import profiles_dir
from hetsim.models import get_model, weight_bytes
from hetsim.models.spec import DTYPES, ModelSpec
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.moe_offload import NUMA_MODES, _layer_work, routed_expert_bytes

V3_KT = dict(batch=1, prompt_len=500, gen_len=32, weight_dtype="q4_k_m")


def _run(strategy: str, model: str, hw: str, search: bool = True, **wl):
    return api.best_result(get_strategy(strategy), api.problem(model, hw, **wl), "latency", search=search)


@pytest.fixture(scope="module")
def v3_1s():
    # The published configuration: KTransformers' default rule keeps every routed expert on the CPU.
    r = _run("moe-offload", "deepseek-v3", "ktransformers-1s", search=False, **V3_KT)
    assert r.plan["gpu_experts"] == 0 and r.plan["sockets"] == ["n0.cpu0"]
    return r


def test_q4_k_m_is_about_4_8_bits_and_lossy():
    assert DTYPES["q4_k_m"].bytes_per_element * 8 == pytest.approx(4.8)


def test_routed_experts_live_in_dram(v3_1s):
    v3 = get_model("deepseek-v3")
    per_expert = 3 * 7168 * 2048  # gate, up, down of one routed expert
    assert routed_expert_bytes(v3, "q4_k_m") == pytest.approx(58 * 256 * per_expert * 0.6)
    assert v3_1s.feasible, v3_1s.reason
    # KTransformers' tutorial reports 382 GB of DRAM used for DeepSeek-V3 Q4_K_M (experts plus runtime).
    assert v3_1s.peak_mem_bytes["n0.cpu0"] == pytest.approx(382e9, rel=0.05)
    # What stays on the GPU fits the 24 GB card (the tutorial: at least 12 GB of VRAM used).
    assert 8e9 < v3_1s.peak_mem_bytes["n0.gpu0"] < 24e9
    assert v3_1s.plan["weight_dtype"] == "q4_k_m"


GAP = (
    "KTransformers V0.2 (doc/en/DeepseekR1_V3_tutorial.md), DeepSeek-V3 Q4_K_M, 4090D + 1 x Xeon Gold "
    "6454S, prompt 500, batch 1: prefill 54.21 tok/s, decode 8.73 tok/s (114.5 ms); hetsim gives prefill "
    "65.9 tok/s (+22 %, within 25 %) and decode 13.2 tok/s (+51 %, 75.8 ms). Decode is bound by reading "
    "12.3 GB of routed experts per token from the socket's DRAM: 51.5 ms at 0.8 x 307 GB/s (the measured "
    "Q4_K kernels carried to 32 cores x 2.2 GHz compute faster than that), plus 2.3 ms of measured serial "
    "Q8_K quantisation and 22 ms of GPU and PCIe. The published point leaves ~90 ms for streaming the "
    "experts, i.e. ~138 GB/s; the other part-level effects examined (docs/ktransformers.md) are 1-2 ms. "
    "Only two could be 39 ms: the sustained DRAM fraction of a 32-thread read stream (0.45 instead of the "
    "assumed 0.8) or unpacking not overlapping the loads (their sum: +30.6 ms); no part-level fact here "
    "decides either. What a 32-thread Q4_K GEMV streams from that socket's DRAM is not measured (a 2-core "
    "VM): `python -m validate.kquant --threads 1,8,16,32` on a 6454S settles it (<= 186 GB/s: within 25 %); "
    "nothing tuned"
)


@pytest.mark.xfail(strict=True, reason=GAP)
def test_golden_ktransformers_deepseek_v3_one_socket(v3_1s):
    prefill = 500 / v3_1s.ttft_s
    decode = 1 / v3_1s.tpot_s
    assert prefill == pytest.approx(54.21, rel=0.25)
    assert decode == pytest.approx(8.73, rel=0.25)


def test_gap_is_what_the_xfail_reason_says(v3_1s):
    # Keeps the golden test's stated gap honest: it must be updated when the model moves.
    assert 500 / v3_1s.ttft_s == pytest.approx(65.9, rel=0.05)
    assert 1 / v3_1s.tpot_s == pytest.approx(13.2, rel=0.05)


def test_bf16_experts_do_not_fit_one_socket():
    r = _run("moe-offload", "deepseek-v3", "ktransformers-1s", batch=1, prompt_len=64, gen_len=2)
    assert not r.feasible and "out of memory" in r.reason


def test_two_sockets_split_the_expert_reads():
    one = _run("moe-offload", "qwen3-30b-a3b", "ktransformers-1s", batch=1, prompt_len=64, gen_len=4)
    two = _run("moe-offload", "qwen3-30b-a3b", "ktransformers-2s", batch=1, prompt_len=64, gen_len=4)
    assert one.feasible and two.feasible
    assert len(two.plan["sockets"]) == 2
    assert two.tpot_s < one.tpot_s
    assert two.peak_mem_bytes["n0.cpu1"] == pytest.approx(two.peak_mem_bytes["n0.cpu0"])


def test_hot_experts_fill_free_gpu_memory():
    searched = _run("moe-offload", "deepseek-v3", "ktransformers-1s", **V3_KT)
    v3 = get_model("deepseek-v3")
    per_layer_expert = routed_expert_bytes(v3, "q4_k_m") / 256
    assert 0 < searched.plan["gpu_experts"] < 256
    # The GPU holds its share, with less than one more expert per layer of room left (of the 4090D's
    # 24 GiB: 23.60 GiB to torch, less the runtime's 0.5 GiB).
    usable = api.load_rig("ktransformers-1s").devices["n0.gpu0"].mem_bytes
    assert usable == pytest.approx(23.095 * 2**30, abs=0.01 * 2**30)
    assert usable - per_layer_expert < searched.peak_mem_bytes["n0.gpu0"] <= usable
    # Qwen3-30B-A3B in Q4_K_M fits the 24 GB card whole: every expert stays on the GPU.
    q = _run("moe-offload", "qwen3-30b-a3b", "ktransformers-1s", batch=1, prompt_len=64, gen_len=4,
             weight_dtype="q4_k_m")  # fmt: skip
    assert q.plan["gpu_experts"] == 128 and q.peak_mem_bytes.get("n0.cpu0", 0.0) == 0.0


def test_moe_offload_beats_layer_offload_when_the_model_does_not_fit():
    moe = _run("moe-offload", "deepseek-v3", "ktransformers-1s", batch=1, prompt_len=64, gen_len=4,
               weight_dtype="q4_k_m")  # fmt: skip
    layer = _run("layer-offload", "deepseek-v3", "ktransformers-1s", batch=1, prompt_len=64, gen_len=4,
                 weight_dtype="q4_k_m")  # fmt: skip
    assert moe.feasible and layer.feasible
    assert moe.tpot_s < layer.tpot_s
    assert 0 < layer.plan["gpu_layers"] < 61


def test_dense_models_and_other_strategies():
    p = api.problem("llama3-8b", "ktransformers-1s", 1, 64, 4, weight_dtype="q4_k_m")
    assert "dense model" in api.best_result(get_strategy("moe-offload"), p, "latency").reason
    assert api.best_result(get_strategy("layer-offload"), p, "latency").feasible
    # A strategy that runs 16-bit weights only is not applicable to a lossy --dtype, never silently fp16.
    r = api.best_result(get_strategy("gpu-only"), p, "latency")
    assert not r.feasible and "--dtype q4_k_m" in r.reason
    with pytest.raises(InputError) as ei:
        api.problem("llama3-8b", "ktransformers-1s", weight_dtype="q3")
    assert ei.value.field == "--dtype"


def test_cli_shows_the_lossy_dtype(capsys):
    args = ["compare", "--model", "qwen3-30b-a3b", "--hw", "ktransformers-1s", "--dtype", "q4_k_m",
            "--strategies", "moe-offload,layer-offload", "--prompt-len", "32", "--gen-len", "2"]  # fmt: skip
    assert main(args) == 0
    assert "q4_k_m (lossy" in capsys.readouterr().out
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["workload"]["weight_dtype"] == "q4_k_m"
    assert {r["plan"]["weight_dtype"] for r in doc["results"]} == {"q4_k_m"}


@settings(max_examples=25, deadline=None)
@given(
    layers=st.integers(2, 6),
    dense=st.integers(0, 2),
    experts=st.sampled_from([4, 8, 16]),
    top_k=st.integers(1, 4),
    shared=st.sampled_from([0, 256]),
    mla=st.booleans(),
    dtype=st.sampled_from(["bf16", "q4_k_m", "int4"]),
)
def test_footprint_conserves_weights_and_slices_experts(layers, dense, experts, top_k, shared, mla, dtype):
    """Every weight is on exactly one device: the GPU's share plus the sockets' expert slices is the
    model (a replicated layout holds the experts once per socket); each socket holds the same share;
    every candidate runs. (Two sockets are not always faster:
    for tiny experts the second socket's PCIe and UPI hops cost more than its share saves.)"""
    model = ModelSpec(
        name="tiny-moe", family="deepseek_v3", hidden=256, layers=layers, heads=4, kv_heads=4,
        head_dim=96 if mla else 64, intermediate=128, vocab=1000, max_position=4096, gated_mlp=True,
        qkv_bias=False, linear_bias=False, learned_positions=0, tied_embeddings=False,
        num_experts=experts, experts_per_token=top_k, shared_intermediate=shared,
        dense_layers=min(dense, layers - 1), dense_intermediate=512,
        kv_lora_rank=64 if mla else 0, rope_head_dim=32 if mla else 0, v_head_dim=64 if mla else 0,
    )  # fmt: skip
    strategy = get_strategy("moe-offload")
    p = api.problem("llama3-8b", "ktransformers-2s", 2, 16, 3, weight_dtype=dtype)
    p = dataclasses.replace(p, model=model)
    plans = list(strategy.candidates(p.rig, model, p.workload))
    # The tiny model's experts all fit on the 24 GB GPU: with none or all of them there.
    assert {(len(pl.sockets), pl.gpu_experts, pl.numa) for pl in plans} == {
        (n, e, numa) for n in (1, 2) for e in (0, experts) for numa in (NUMA_MODES if n == 2 else ("slice",))
    }
    for plan in plans:
        fp = strategy.footprint(plan, p.rig, model, p.workload)
        copies = len(plan.sockets) if plan.numa == "replicate" else 1
        routed_cpu = routed_expert_bytes(model, dtype) * (1 - plan.gpu_experts / experts)
        held = fp[plan.gpu]["weights"] + sum(fp[s]["experts"] for s in plan.sockets)
        # MLA's kv_b_proj is held in bf16 on the GPU whatever the dtype (KTransformers' rules).
        kv_b = layers * model.heads * (96 - 32 + 64) * 64 if mla else 0  # heads x (nope + v) x latent
        kv_b *= 2 - DTYPES[dtype].bytes_per_element
        assert held == pytest.approx(
            weight_bytes(model, DTYPES[dtype]) + (copies - 1) * routed_cpu + kv_b, rel=1e-12
        )
        slice_ = routed_cpu * copies / len(plan.sockets)
        assert [fp[s]["experts"] for s in plan.sockets] == pytest.approx([slice_] * len(plan.sockets))
        assert simulate(strategy, plan, p.rig, model, p.workload).feasible


def _numa_runs(rig, numa_modes=NUMA_MODES, model="qwen3-235b-a22b", dtype="bf16"):
    strategy = get_strategy("moe-offload")
    p = api.problem(model, rig, batch=1, prompt_len=64, gen_len=4, weight_dtype=dtype)
    base = strategy.default_plan(p.rig, p.model, p.workload)
    plans = {m: dataclasses.replace(base, numa=m) for m in numa_modes}
    return {m: simulate(strategy, pl, p.rig, p.model, p.workload) for m, pl in plans.items()}


def test_numa_layouts_trade_dram_for_cross_socket_reads():
    r = _numa_runs("ktransformers-2s")
    sl, rep, inter = r["slice"], r["replicate"], r["interleave"]
    # Replicating reads the same local bytes as slicing, at twice the DRAM.
    assert rep.tpot_s == pytest.approx(sl.tpot_s) and rep.ttft_s == pytest.approx(sl.ttft_s)
    assert rep.peak_mem_bytes["n0.cpu0"] == pytest.approx(2 * sl.peak_mem_bytes["n0.cpu0"])
    assert inter.peak_mem_bytes["n0.cpu0"] == pytest.approx(sl.peak_mem_bytes["n0.cpu0"])
    # Interleaved memory: half of each socket's expert reads cross UPI (4 x 32 GB/s, datasheet) and load
    # the other socket's DRAM too; bf16 decode is memory-bound, so it is slower than local reads.
    assert inter.tpot_s > 1.1 * sl.tpot_s


def test_interleave_pays_the_upi_bandwidth(tmp_path):
    rigs = {}
    for count in (1, 4):
        text = (profiles_dir() / "rigs" / "ktransformers-2s.yaml").read_text()
        path = tmp_path / f"upi{count}.yaml"
        path.write_text(
            text.replace("upi: {link: upi-16gt, count: 4}", f"upi: {{link: upi-16gt, count: {count}}}")
        )
        rigs[count] = _numa_runs(str(path), ("slice", "interleave"))
    # Local reads never touch UPI; interleaved ones slow down with a quarter of the links.
    assert rigs[1]["slice"].tpot_s == pytest.approx(rigs[4]["slice"].tpot_s)
    assert rigs[1]["interleave"].tpot_s > 1.5 * rigs[4]["interleave"].tpot_s


def test_planner_picks_a_layout_that_fits_and_is_fastest():
    # DeepSeek-V3 in int8: 654 GB of routed experts do not fit twice in 1 TB; the search drops replicate
    # (infeasible) and interleave (slower) for the slice.
    r = _numa_runs("ktransformers-2s", model="deepseek-v3", dtype="int8")
    assert not r["replicate"].feasible and "out of memory" in r["replicate"].reason
    best = _run("moe-offload", "deepseek-v3", "ktransformers-2s", batch=1, prompt_len=64, gen_len=4,
                weight_dtype="int8")  # fmt: skip
    assert best.plan["numa"] == "slice" and len(best.plan["sockets"]) == 2
    assert best.tpot_s <= r["interleave"].tpot_s


@pytest.mark.parametrize("model", ["llama3-8b", "opt-13b", "deepseek-v3", "qwen3-30b-a3b"])
def test_layer_offload_holds_every_weight_once_and_a_gpu_copy_of_a_tied_head(model):
    strategy = get_strategy("layer-offload")
    p = api.problem(model, "ktransformers-1s", 1, 64, 4, weight_dtype="q4_k_m")
    plan = strategy.default_plan(p.rig, p.model, p.workload)
    fp = strategy.footprint(plan, p.rig, p.model, p.workload)
    spec, q4 = p.model, DTYPES["q4_k_m"]
    copy = spec.vocab * spec.token_dim * q4.bytes_per_element if spec.tied_embeddings else 0.0
    # llama.cpp keeps the token table on the CPU; a tied output layer needs its own copy on the GPU.
    assert fp[plan.gpu]["weights"] + fp[plan.cpu]["weights"] == pytest.approx(weight_bytes(spec, q4) + copy)
    assert sum(fp[plan.gpu].values()) <= p.rig.devices[plan.gpu].mem_bytes


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_kv_b_stays_16_bit_on_the_gpu(phase):
    # KTransformers' DeepSeek rules quantise every linear but self_attn.kv_b_proj: 128 heads x (128 + 128)
    # x 512 weights read in bf16 however the rest is stored.
    v3 = get_model("deepseek-v3")
    seq = 500 if phase == "prefill" else 1
    work = _layer_work(v3, phase, 1, seq, 532, "q4_k_m", "fp16", 1, True)
    kv_b = [o for o in work.before if o.module == "kv_b_proj"]
    assert kv_b and all(o.compute_dtype == "bf16" for o in kv_b)
    assert sum(o.weight_bytes for o in kv_b) == pytest.approx(128 * 256 * 512 * 2)
    others = [o for o in work.before if o.name in ("q_b_proj", "out_proj")]
    assert all(o.compute_dtype == "q4_k_m" for o in others)


def test_serial_q8_k_quantisation_of_a_decode_token(monkeypatch):
    # KTransformers V0.2 (moe.cpp, forward_one) quantises the hidden state (7168) and its 8 experts'
    # 2048-wide intermediates to Q8_K on one thread below 10 tokens; from 10 on it runs inside its jobs.
    v3 = get_model("deepseek-v3")
    work = _layer_work(v3, "decode", 1, 1, 532, "q4_k_m", "fp16", 1, True)
    assert work.serial_elements == 7168 + 8 * 2048
    assert _layer_work(v3, "decode", 1, 1, 532, "q4_k_m", "fp16", 2, True).serial_elements == 7168 + 8 * 1024
    assert _layer_work(v3, "decode", 10, 1, 532, "q4_k_m", "fp16", 1, True).serial_elements == 0
    assert _layer_work(v3, "prefill", 1, 500, 500, "q4_k_m", "fp16", 1, True).serial_elements == 0
    assert _layer_work(v3, "decode", 1, 1, 532, "bf16", "fp16", 1, True).serial_elements == 0
    # Measured 3.66 cycles per element (efficiency.yaml) at the 6454S's 2.2 GHz, on each of 58 layers.
    with_serial = _run("moe-offload", "deepseek-v3", "ktransformers-1s", search=False, **V3_KT)
    monkeypatch.setattr("hetsim.strategies.moe_offload.ACTIVATION_TYPE", {})
    without = _run("moe-offload", "deepseek-v3", "ktransformers-1s", search=False, **V3_KT)
    serial_s = 58 * (7168 + 8 * 2048) * 3.66 / 2.2e9
    assert with_serial.tpot_s - without.tpot_s == pytest.approx(serial_s, rel=1e-6)
    assert with_serial.ttft_s == pytest.approx(without.ttft_s, rel=1e-12)


def test_v0_2_reads_each_tokens_experts_below_ten_tokens():
    # KTransformers V0.2 (moe.cpp, MOE::forward) runs forward_one once per token below group_min_len = 10:
    # a decode batch of 4 reads 4 x 8 experts' weights per layer, not the ~30.5 distinct experts they hit.
    v3 = get_model("deepseek-v3")
    expert = 3 * 7168 * 2048 * DTYPES["q4_k_m"].bytes_per_element

    def cpu_reads(batch, dtype="q4_k_m", **kw):
        work = _layer_work(v3, "decode", batch, 1, 532, dtype, "fp16", 1, True, **kw)
        return work.repeat * sum(o.weight_bytes for o in work.routed), work

    one, w1 = cpu_reads(1)
    assert w1.repeat == 1 and one == pytest.approx(8 * expert)
    four, w4 = cpu_reads(4)
    assert w4.repeat == 4 and four == pytest.approx(4 * 8 * expert)
    assert all(o.rows == 1 for o in w4.routed if o.name in ("gate_proj", "up_proj", "down_proj"))
    assert w4.serial_elements == 4 * (7168 + 8 * 2048)
    # the GPU's side is the batch's: attention over 4 sequences
    assert w4.before == _layer_work(v3, "decode", 4, 1, 532, "q4_k_m", "fp16", 1, True, 0, None, False).before
    # from 10 tokens on (forward_many) an expert's tokens share its weights: the distinct experts
    ten, w10 = cpu_reads(10)
    assert w10.repeat == 1 and ten == pytest.approx(256 * (1 - (1 - 8 / 256) ** 10) * expert)
    # bf16/int8/int4 experts are not V0.2's llamafile k-quant path: distinct experts at any batch
    bf16, wb = cpu_reads(4, "bf16")
    per_expert_bf16 = 3 * 7168 * 2048 * 2
    assert wb.repeat == 1 and bf16 == pytest.approx(256 * (1 - (1 - 8 / 256) ** 4) * per_expert_bf16)
    # hot experts on the GPU: each token's CPU share of its picks, token by token
    hot, wh = cpu_reads(4, gpu_experts=64)
    assert wh.repeat == 4 and hot == pytest.approx(4 * 8 * (1 - 64 / 256) * expert)


def test_decode_batch_of_four_costs_four_tokens_of_expert_reads():
    b1 = _run("moe-offload", "deepseek-v3", "ktransformers-1s", search=False, **V3_KT)
    b4 = _run("moe-offload", "deepseek-v3", "ktransformers-1s", search=False, **{**V3_KT, "batch": 4})
    # the CPU's experts (memory-bound, ~0.89 ms a layer a token) dominate: about 4x the batch-1 CPU time
    v3 = get_model("deepseek-v3")
    cpu_one = 58 * 8 * 3 * 7168 * 2048 * 0.6 / (0.8 * 307.2e9)
    assert b4.tpot_s - b1.tpot_s == pytest.approx(3 * cpu_one, rel=0.1)
    assert v3.layers - v3.dense_layers == 58


def test_bottleneck_label_names_each_phases_bound(v3_1s):
    # Prefill of 500 tokens computes (the k-quant kernels at 500 tokens a row); decode streams 12.3 GB of
    # experts a token from DRAM. The whole run's CPU time is mostly prefill: one label would hide decode.
    assert v3_1s.bottleneck == "n0.cpu0:compute (compute-bound prefill, memory-bound decode)"


def test_fast_forward_labels_the_runs_own_prefill():
    # A fast-forwarded run's tail simulates a long prompt (prompt + gen - 16) the real run does not have:
    # its compute-bound prefill must not label a run whose 16-token prefill streams the experts.
    wl = dict(batch=1, prompt_len=16, gen_len=80, weight_dtype="q4_k_m")
    p = api.problem("deepseek-v3", "ktransformers-1s", **wl)
    strategy = get_strategy("moe-offload")
    plan = strategy.default_plan(p.rig, p.model, p.workload)
    fast = simulate(strategy, plan, p.rig, p.model, p.workload)
    exact = simulate(strategy, plan, p.rig, p.model, p.workload, exact=True)
    assert fast.extras.get("fast_forward_sample") == 16
    assert fast.bottleneck == exact.bottleneck == "n0.cpu0:compute (memory-bound)"
