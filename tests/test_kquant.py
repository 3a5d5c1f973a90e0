"""llama.cpp's k-quant CPU kernels: measured cycles per MAC, carried to another CPU by cores x clock."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hetsim.costs.op_cost import op_cost
from hetsim.errors import InputError
from hetsim.hardware import Grade, load_rig
from hetsim.hardware.catalog import profiles_dir
from hetsim.hardware.types import log_interp
from hetsim.models import get_model
from hetsim.models.layer_ops import decoder_layer_ops
from hetsim.models.spec import DTYPES
from validate.kquant import BLOCK_BYTES, EXPERT_SHAPES, QK_K, decode_layer_rates, fit

MEASURED = Path(__file__).parents[1] / "validate" / "results" / "kquant" / "epyc-zen4-2core.json"


def _expert_op(tokens: int, name: str = "gate_proj"):
    v3 = get_model("deepseek-v3")
    ops = decoder_layer_ops(v3, "decode" if tokens == 1 else "prefill", 1, tokens, tokens,
                            DTYPES["q4_k_m"], DTYPES["fp16"])  # fmt: skip
    return next(o for o in ops if o.name == name)


def test_catalogue_curve_is_the_fit_of_the_committed_measurement():
    doc = json.loads(MEASURED.read_text())
    f = fit(doc)
    rig = load_rig("ktransformers-1s")
    cpu = rig.devices["n0.cpu0"]
    assert cpu.efficiency.kernel_cycles["q4_k_m"] == tuple(
        zip(f["q4_k_m"]["tokens"], f["q4_k_m"]["cycles_per_mac"], strict=True)
    )
    assert cpu.provenance["efficiency.kernel_cycles.q4_k_m"].grade == Grade.FITTED
    # Held out (DeepSeek-V3's expert matrices streamed from DRAM): within 10 % for the Q4_K_M mix.
    assert f["held_out_q4_k_m_abs_error"]["max"] < 0.10
    # A one-token Q4_K product costs ~0.1 cycle per MAC: 10x the VNNI int8 peak's 1/128 per core.
    assert 0.08 < f["curves"]["q4_K"][1] < 0.13


def test_xeon_runs_the_kernel_at_cores_times_clock():
    cpu = load_rig("ktransformers-1s").devices["n0.cpu0"]
    assert (cpu.cores, cpu.clock_hz) == (32, 2.2e9)
    for tokens in (1, 16):
        op = _expert_op(tokens)
        cycles = cpu.efficiency.cycles_per_mac("q4_k_m", op.rows)
        c = op_cost(cpu, op)
        assert c.compute_s == pytest.approx(op.flops / 2 * cycles / (32 * 2.2e9))
    # One token: 667 G MAC/s of compute, more than the socket's DRAM streams, so the GEMV is memory-bound.
    gemv = op_cost(cpu, _expert_op(1))
    assert gemv.bound == "memory"
    # A 500-token prefill (~16 tokens per expert) is bound by the kernel's compute.
    assert op_cost(cpu, _expert_op(500)).bound == "compute"


def test_gpu_dequantises_to_fp16():
    gpu = load_rig("ktransformers-1s").devices["n0.gpu0"]
    op = _expert_op(500)
    assert gpu.efficiency.kernel_cycles == {}
    c = op_cost(gpu, op)
    rate = gpu.peak_flops["fp16"] * gpu.efficiency.matmul_compute(op.rows)
    assert c.compute_s == pytest.approx(op.flops / rate)


@given(st.floats(min_value=0.5, max_value=1e5, allow_nan=False))
def test_interpolation_stays_inside_the_measured_range(tokens):
    pts = ((1.0, 0.1055), (4.0, 0.1023), (16.0, 0.0499), (64.0, 0.0386))
    y = log_interp(pts, tokens)
    assert 0.0386 <= y <= 0.1055
    assert log_interp(pts, max(tokens, 1.0) * 2) <= y + 1e-12  # measured cost falls with tokens here


def test_bad_kernel_curve_is_one_line_naming_the_field(tmp_path):
    import shutil

    root = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), root)
    eff = root / "efficiency.yaml"
    eff.write_text(eff.read_text().replace("tokens: [1, 4, 16, 64]", "tokens: [1, 16, 4, 64]"))
    rig = tmp_path / "r.yaml"
    rig.write_text(
        textwrap.dedent("""\
        name: r
        nodes:
          - region: a
            cpus: [xeon-gold-6454s]
            host_memory: {value: 64 GB, source: t, grade: assumed}
        """)
    )
    with pytest.raises(InputError) as info:
        load_rig(rig, profiles=root)
    assert "tokens must increase" in info.value.line() and "kernel_cycles" in info.value.line()


def test_q8_k_quantisation_is_the_committed_measurement():
    doc = json.loads((MEASURED.parent / "q8k-quantize-epyc-zen4-2core.json").read_text())
    rows = {r["elements"]: r["cycles_per_element"] for r in doc["rows"]}
    # DeepSeek-V3 quantises 7168 (the hidden state) and 8 x 2048 (the experts' intermediates) per token.
    weighted = (7168 * rows[7168] + 16384 * rows[16384]) / (7168 + 16384)
    cpu = load_rig("ktransformers-1s").devices["n0.cpu0"]
    assert cpu.efficiency.quantize_cycles["q8_k"] == pytest.approx(weighted, abs=0.005)
    assert cpu.provenance["efficiency.quantize_cycles.q8_k"].grade == Grade.MEASURED
    repeat = json.loads((MEASURED.parent / "q8k-quantize-epyc-zen4-2core-run2.json").read_text())
    for a, b in zip(doc["rows"], repeat["rows"], strict=True):
        assert b["cycles_per_element"] == pytest.approx(a["cycles_per_element"], rel=0.01)


def test_bad_quantize_cycles_one_line(tmp_path):
    import shutil

    root = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), root)
    eff = root / "efficiency.yaml"
    eff.write_text(eff.read_text().replace("value: 3.66", "value: -1"))
    rig = tmp_path / "r.yaml"
    memory = "{value: 64 GB, source: t, grade: assumed}"
    rig.write_text(f"name: r\nnodes:\n  - cpus: [xeon-gold-6454s]\n    host_memory: {memory}\n")
    with pytest.raises(InputError) as info:
        load_rig(rig, profiles=root)
    assert "quantize_cycles" in info.value.line() and "\n" not in info.value.line()


def test_decode_layer_rate_combines_the_q4_k_m_expert():
    # The number a 32-thread run on the target socket would report (docs/ktransformers.md): expert bytes
    # per second of a one-token layer from DRAM. If every matrix streams X bytes/s of its own weights,
    # the layer does too, whatever the mix.
    rows = []
    for qtype in BLOCK_BYTES:
        for matrix, (k, n) in EXPERT_SHAPES.items():
            for threads, rate in ((1, 20e9), (32, 245.76e9)):
                nbytes = n * (k // QK_K) * BLOCK_BYTES[qtype]
                rows.append({"type": qtype, "matrix": matrix, "k": k, "n": n, "where": "dram", "tokens": 1,
                             "threads": threads, "best_s": nbytes / rate})  # fmt: skip
    rates = decode_layer_rates({"rows": rows})
    assert rates == {1: pytest.approx(20e9), 32: pytest.approx(245.76e9)}
    # Measured here (one Zen 4 core, compute-bound): between its Q4_K and Q6_K rates, nearer Q4_K's.
    got = decode_layer_rates(json.loads(MEASURED.read_text()))[1]
    assert 19.7e9 < got < 22e9
