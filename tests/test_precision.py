"""A checkpoint's precision (config.json torch_dtype) is read and runs where the strategy keeps it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from hetsim.api import problem
from hetsim.errors import InputError
from hetsim.models.hf_config import spec_from_hf_dict
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy

CONFIGS = Path(__file__).parent / "data" / "hf-configs"


def _cfg(name: str) -> dict:
    return json.loads((CONFIGS / name / "config.json").read_text())


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        ("float32", "fp32"),
        ("bfloat16", "bf16"),
        ("float16", "fp16"),
        ("torch.float32", "fp32"),
        (None, "fp16"),
    ],
)
def test_checkpoint_dtype_from_config(value, dtype):
    cfg = {k: v for k, v in _cfg("Llama-2-7B").items() if k not in ("torch_dtype", "dtype")}
    if value is not None:
        cfg["torch_dtype"] = value
    assert spec_from_hf_dict(cfg).dtype == dtype
    if value is not None:  # transformers >= 4.56 writes "dtype"
        cfg["dtype"] = cfg.pop("torch_dtype")
        assert spec_from_hf_dict(cfg).dtype == dtype


def test_unknown_checkpoint_dtype_is_one_clear_error():
    cfg = {**_cfg("Llama-2-7B"), "torch_dtype": "float8"}
    with pytest.raises(InputError) as e:
        spec_from_hf_dict(cfg, source="x/config.json")
    assert e.value.field == "torch_dtype" and "float8" in e.value.message


def test_real_configs_keep_their_precision():
    assert spec_from_hf_dict(_cfg("OPT-350m")).dtype == "fp32"
    assert spec_from_hf_dict(_cfg("Llama-3.1-8B")).dtype == "bf16"


def test_cpu_tp_runs_an_fp32_checkpoint_in_fp32():
    """Weights, KV and activations in fp32 (as torch on a CPU): twice the weight bytes of the bf16 plan
    on the same shape, and a decode that streams them is slower."""
    p32 = problem(str(CONFIGS / "Llama-2-7B" / "config.json"), "cputp-4x8575c", 1, 128, 8)
    p32 = replace(p32, model=replace(p32.model, dtype="fp32"))
    cpu_tp = get_strategy("cpu-tp")
    plan32 = cpu_tp.default_plan(p32.rig, p32.model, p32.workload)
    assert (plan32.weight_dtype, plan32.kv_dtype, plan32.act_dtype) == ("fp32", "fp32", "fp32")
    p16 = replace(p32, model=replace(p32.model, dtype="bf16"))
    plan16 = cpu_tp.default_plan(p16.rig, p16.model, p16.workload)
    assert plan16.weight_dtype == "bf16"
    rank = plan32.ranks[0]
    w32 = cpu_tp.footprint(plan32, p32.rig, p32.model, p32.workload)[rank]["weights"]
    w16 = cpu_tp.footprint(plan16, p16.rig, p16.model, p16.workload)[rank]["weights"]
    assert w32 == pytest.approx(2 * w16, rel=1e-4)  # norm vectors are stored apart from the matrices
    r32 = simulate(cpu_tp, plan32, p32.rig, p32.model, p32.workload)
    r16 = simulate(cpu_tp, plan16, p16.rig, p16.model, p16.workload)
    assert r32.feasible and r16.feasible
    assert r32.tpot_s > 1.5 * r16.tpot_s  # decode is weight-streaming bound on these sockets


def test_asked_precision_overrides_the_checkpoint_on_cpu_tp():
    p = problem(str(CONFIGS / "OPT-350m" / "config.json"), "cputp-4x8575c", 1, 64, 4)
    p = replace(p, workload=replace(p.workload, weight_dtype="bf16"))
    plan = get_strategy("cpu-tp").default_plan(p.rig, p.model, p.workload)
    assert plan.weight_dtype == "bf16"


def test_gpu_strategies_run_an_fp32_checkpoint_in_fp32_unless_asked():
    """OPT-350m's checkpoint is fp32: gpu-only and hexgen run it in fp32 (at the fp32 rate) unless the
    user asks for 16 bits (--dtype fp16), which every output then reports as lossy; strategies that
    run fp16 only (FlexGen) report their narrowing; a 16-bit checkpoint's run reports nothing."""
    from hetsim.api import best_result

    opt32 = problem(str(CONFIGS / "OPT-350m" / "config.json"), "flexgen-t4", 1, 32, 4)
    res = best_result(get_strategy("gpu-only"), opt32, "throughput", search=False)
    assert res.feasible and res.lossy == ""
    assert (res.plan["weight_dtype"], res.plan["kv_dtype"]) == ("fp32", "fp32")
    asked = replace(opt32, workload=replace(opt32.workload, weight_dtype="fp16", kv_dtype="fp16"))
    res16 = best_result(get_strategy("gpu-only"), asked, "throughput", search=False)
    assert "fp16 weights from a fp32 checkpoint" in res16.lossy and "fp16 KV cache" in res16.lossy
    assert res16.ttft_s < res.ttft_s  # the T4's fp16 tensor cores against its fp32 CUDA cores
    flexgen = best_result(get_strategy("flexgen"), opt32, "throughput", search=False)
    assert "fp16 weights from a fp32 checkpoint" in flexgen.lossy
    opt16 = replace(opt32, model=replace(opt32.model, dtype="fp16"))
    assert best_result(get_strategy("gpu-only"), opt16, "throughput", search=False).lossy == ""
    # bf16 and fp16 are peers: neither narrows the other
    opt_bf = replace(opt32, model=replace(opt32.model, dtype="bf16"))
    assert best_result(get_strategy("gpu-only"), opt_bf, "throughput", search=False).lossy == ""
