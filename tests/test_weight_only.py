"""Weight-only int8/int4 (--dtype) on the GPU strategies, FlexGen's 4-bit as the same ask, and the
per-device precision units (issue 15)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.cli.commands import main
from hetsim.costs.op_cost import block_cost, op_cost
from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.models.sharding import layer_blocks
from hetsim.models.spec import DTYPES
from hetsim.models.weights import layer_weight_bytes
from hetsim.strategies.base import get_strategy

FAST = ["--prompt-len", "64", "--gen-len", "2"]
GPU_ONLY = get_strategy("gpu-only")


def _run(strategy, model, rig, dtype=None, **kw):
    p = api.problem(model, rig, weight_dtype=dtype, **kw)
    return api.best_result(strategy, p, "latency", search=False)


def test_llama2_70b_in_int4_fits_a_gpu_budget_that_fp16_does_not():
    kw = dict(batch=1, prompt_len=256, gen_len=4, gpu_mem_budget=16e9)  # 4 GPUs x 16 GB
    fp16, int8, int4 = (_run(GPU_ONLY, "llama2-70b", "mixed-lab", d, **kw) for d in (None, "int8", "int4"))
    assert not fp16.feasible and not int8.feasible  # 138 GB and 70 GB of weights
    assert int4.feasible and int4.lossy == "int4 weights"  # 36 GB


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_decode_drops_by_the_weight_byte_ratio_prefill_is_not_faster(dtype):
    """One llama2-70b layer on an A100: decode streams the narrower weights (scale bytes included);
    prefill computes the same fp16 GEMMs and pays the dequantisation on top."""
    m, dev = get_model("llama2-70b"), load_rig("mixed-lab").devices["n0.gpu0"]
    ratio = layer_weight_bytes(m, DTYPES[dtype]) / layer_weight_bytes(m, DTYPES["fp16"])

    def busy(wd, phase, seq, kv):  # the layer's time without the fixed per-kernel launch cost
        c = block_cost(dev, layer_blocks(m, phase, 1, seq, kv, 1, wd).whole)
        return c.time_s - c.overhead_s, c.time_s

    dec16, dec_q = busy("fp16", "decode", 1, 128)[0], busy(dtype, "decode", 1, 128)[0]
    assert dec_q / dec16 == pytest.approx(ratio, rel=0.03)
    pre16, pre_q = busy("fp16", "prefill", 2048, 2048)[1], busy(dtype, "prefill", 2048, 2048)[1]
    assert pre_q > pre16
    # end to end: TPOT falls (KV, activations and launches stay), TTFT does not
    r16 = _run(GPU_ONLY, "llama2-70b", "mixed-lab", None, batch=1, prompt_len=2048, gen_len=8)
    rq = _run(GPU_ONLY, "llama2-70b", "mixed-lab", dtype, batch=1, prompt_len=2048, gen_len=8)
    assert rq.tpot_s < r16.tpot_s * (0.7 if dtype == "int8" else 0.45)
    assert rq.ttft_s >= r16.ttft_s * 0.99  # fewer pipeline stages may save a hop, never the GEMMs


def test_hexgen_runs_the_weight_precision_asked_for():
    hexgen = get_strategy("hexgen")
    r = _run(hexgen, "llama2-70b", "hexgen-half-budget", "int4", batch=2, prompt_len=128, gen_len=4)
    assert r.feasible and r.plan["weight_dtype"] == "int4" and r.lossy == "int4 weights"


def test_every_output_shows_int4_weights_and_a_plan_file_resimulates_identically(capsys, tmp_path):
    base = ["--model", "llama2-70b", "--hw", "mixed-lab", "--dtype", "int4", "--batch", "2", *FAST]
    assert main(["compare", *base, "--strategies", "gpu-only,hexgen"]) == 0
    assert "weights int4 (lossy, as asked with --dtype)" in capsys.readouterr().out
    assert main(["compare", *base, "--strategies", "gpu-only", "--format", "csv"]) == 0
    assert "int4 weights" in capsys.readouterr().out
    out = tmp_path / "plan.json"
    assert main(["plan", *base, "--strategy", "gpu-only", "--out", str(out), "--format", "json"]) == 0
    capsys.readouterr()
    saved = json.loads(out.read_text())
    assert saved["workload"]["weight_dtype"] == "int4" and saved["params"]["weight_dtype"] == "int4"
    assert saved["lossy"] == "int4 weights"
    assert main(["compare", *base, "--strategies", "gpu-only", "--format", "json"]) == 0
    compared = json.loads(capsys.readouterr().out)["results"][0]
    assert main(["simulate", "--plan", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0] == compared


def test_unknown_dtype_is_one_line_exit_2(capsys):
    rc = main(["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--dtype", "int3"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "--dtype" in err and "int3" in err


# ---- FlexGen: its group-64 4-bit compression is --dtype int4 / --kv-dtype int4 ----------------------
FLEXGEN = get_strategy("flexgen")


def _flexgen(allow_lossy=False, **dt):
    p = api.problem("opt-6.7b", "flexgen-t4", 16, 256, 8, **dt)
    return api.best_result(FLEXGEN, p, "throughput", allow_lossy=allow_lossy)


def test_flexgen_compresses_what_the_user_asks_and_only_that():
    w = _flexgen(weight_dtype="int4")
    assert w.plan["compress_weight"] and not w.plan["compress_cache"]
    assert w.lossy == "4-bit weights (group 64)"
    kv = _flexgen(kv_dtype="int4")
    assert kv.plan["compress_cache"] and not kv.plan["compress_weight"]
    # --allow-compression lets the search choose 4-bit weights and KV; a precision the user fixed is kept
    kv_fixed = _flexgen(allow_lossy=True, kv_dtype="fp16")
    assert not kv_fixed.plan["compress_cache"]
    fixed = _flexgen(allow_lossy=True, weight_dtype="fp16", kv_dtype="fp16")
    assert not fixed.plan["compress_weight"] and not fixed.plan["compress_cache"] and not fixed.lossy
    plain = _flexgen()
    assert not plain.plan["compress_weight"] and not plain.plan["compress_cache"]
    assert fixed.throughput_tok_s == plain.throughput_tok_s  # same plan, same numbers
    chosen = _flexgen(allow_lossy=True)
    assert chosen.throughput_tok_s >= plain.throughput_tok_s
    assert not _flexgen(weight_dtype="int8").feasible  # FlexGen has no int8 format


def test_flexgen_default_plan_takes_the_asked_compression():
    p = api.problem("opt-6.7b", "flexgen-t4", 4, 64, 2, weight_dtype="int4", kv_dtype="int4")
    plan = FLEXGEN.default_plan(p.rig, p.model, p.workload)
    assert plan.compress_weight and plan.compress_cache


# ---- precision units per device ------------------------------------------------------------------
def test_bf16_on_a_gpu_without_a_bf16_unit_costs_the_fp32_rate():
    t4 = load_rig("flexgen-t4").gpus()[0]
    assert t4.flops("bf16") == t4.peak_flops["fp32"] < t4.flops("fp16")
    a100 = load_rig("mixed-lab").devices["n0.gpu0"]
    assert a100.flops("bf16") == a100.peak_flops["bf16"]
    cpu = load_rig("ktransformers-1s").cpus()[0]
    assert cpu.flops("bf16") == cpu.peak_flops["bf16"]  # AMX


def test_serve_runs_int4_weights_and_says_so(capsys):
    serve = ["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--rate", "2", "--num-requests", "8"]
    assert main([*serve, "--format", "json"]) == 0
    fp16 = json.loads(capsys.readouterr().out)
    assert main([*serve, "--dtype", "int4", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["weight_dtype"] == "int4" and doc["lossy"] == "int4 weights"
    assert doc["tpot_s"]["p50"] < fp16["tpot_s"]["p50"]


@settings(max_examples=40, deadline=None)
@given(
    model=st.sampled_from(["llama2-7b", "opt-6.7b", "mixtral-8x7b", "qwen3-30b-a3b"]),
    gpu=st.sampled_from(["n0.gpu0", "n0.gpu1", "n1.gpu0"]),
    rows=st.integers(1, 4096),
    dtype=st.sampled_from(["int8", "int4"]),
)
def test_weight_only_matmuls_read_fewer_bytes_and_never_compute_faster(model, gpu, rows, dtype):
    """Every matmul of a layer: the quantised one reads fewer bytes, and its compute (fp16 GEMM plus
    the dequantisation) is never below the fp16 one's."""
    m, dev = get_model(model), load_rig("mixed-lab").devices[gpu]
    q16 = [o for o in layer_blocks(m, "prefill", 1, rows, rows, 1, "fp16").whole if o.kind == "matmul"]
    qq = [o for o in layer_blocks(m, "prefill", 1, rows, rows, 1, dtype).whole if o.kind == "matmul"]
    for a, b in zip(q16, qq, strict=True):
        assert b.weight_bytes < a.weight_bytes and b.flops == a.flops and b.dequant_ops > 0
        ca, cb = op_cost(dev, a), op_cost(dev, b)
        assert cb.memory_s < ca.memory_s and cb.compute_s > ca.compute_s
