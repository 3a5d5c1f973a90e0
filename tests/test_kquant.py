"""llama.cpp's k-quant CPU kernels: measured cycles per MAC, carried to another CPU by cores x clock."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.op_cost import op_cost
from hetsim.errors import InputError
from hetsim.hardware import Grade, load_rig
from hetsim.hardware.catalog import profiles_dir
from hetsim.hardware.types import log_interp
from hetsim.models import get_model
from hetsim.models.layer_ops import decoder_layer_ops
from hetsim.models.spec import DTYPES
from validate.kquant import (
    _CHAIN_C,
    _CHAIN_OPS,
    BLOCK_BYTES,
    CHAIN_CYCLES,
    EXPERT_SHAPES,
    QK_K,
    MatmulCase,
    _CPlan,
    assume_clock,
    clock_from_chain,
    decode_layer_rates,
    fit,
    measure,
    weight_set,
)

MEASURED = Path(__file__).parents[1] / "validate" / "results" / "kquant" / "epyc-zen4-2core.json"
# The lead's run on an Emerald Rapids KVM guest (16 vCPUs), refitted at its nominal 2.1 GHz (assumed).
EMR = MEASURED.parent / "xeon-emr-kvm16.json"


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


def test_clock_probe_chains_have_no_immediate_operand():
    # The old probe timed dependent `add $1, reg`, which Golden Cove and later Intel renamers fold (several
    # per cycle): it read 10.1-11.2 GHz on the Emerald Rapids VM. Multiplies, and adds of a run-time
    # register, run at their table latencies (Agner Fog, uops.info).
    assert "$" not in _CHAIN_C
    assert "imul %1, %0" in _CHAIN_C and "add %1, %0" in _CHAIN_C
    assert CHAIN_CYCLES == {"imul": 3, "add": 1}


def test_a_probe_reading_no_x86_core_reaches_is_refused():
    doc = json.loads(EMR.read_text())
    trips = 400_000  # the old chain: 400k loop trips of 8 adds, taken as one cycle each
    for hz in (doc["clock_hz"]["before"], doc["clock_hz"]["after"]):
        with pytest.raises(ValueError, match="above any x86 core"):
            clock_from_chain("add", trips, _CHAIN_OPS * trips / hz)
    # Zen 4 here: both chains and the old one read 3.692 GHz.
    assert clock_from_chain("imul", 150_000, _CHAIN_OPS * 3 * 150_000 / 3.692e9) == pytest.approx(3.692e9)


@settings(max_examples=20, deadline=None)
@given(st.floats(min_value=1e9, max_value=6e9))
def test_the_clock_scales_cycles_per_mac_not_the_held_out_errors(clock):
    # The EMR file's held-out misses (-37 % median) are the DRAM rows against the in-cache fit at one
    # thread: both sides scale with the clock, so no clock, right or wrong, moves them.
    doc = json.loads(EMR.read_text())
    before, used = fit(doc), doc["clock_hz"]["used"]
    assume_clock(doc, clock, "test")
    after = fit(doc)
    assert doc["clock_assumed"] == {"value": clock, "source": "test", "grade": "assumed"}
    for a, b in zip(before["held_out"], after["held_out"], strict=True):
        assert b["error"] == pytest.approx(a["error"], abs=1e-12)
    assert after["curves"]["q4_K"][1] == pytest.approx(before["curves"]["q4_K"][1] * clock / used)


def test_emerald_rapids_run_refitted_at_its_nominal_clock():
    doc = json.loads(EMR.read_text())
    assert doc["clock_hz"]["used"] == doc["clock_assumed"]["value"] == 2.1e9
    assert doc["clock_assumed"]["grade"] == "assumed"
    for r in doc["rows"]:
        assert r["cycles_per_mac"] == pytest.approx(2.1e9 * r["threads"] / (r["gmac_per_s"] * 1e9))
    # At that clock one core's in-cache one-token Q4_K_M cost is Zen 4's within 10 % (0.0997 vs 0.1055):
    # the catalogue's "same cycles on another x86 core" holds there, if the core ran at its base clock.
    zen4 = fit(json.loads(MEASURED.read_text()))["q4_k_m"]["cycles_per_mac"][0]
    assert doc["fit"]["q4_k_m"]["cycles_per_mac"][0] == pytest.approx(zen4, rel=0.10)
    # The decode expert layer's rates (docs/ktransformers.md): per thread 6.46, 4.25, 3.26 GB/s.
    rates = decode_layer_rates(doc)
    assert {t: round(r / 1e9, 2) for t, r in rates.items()} == {1: 6.46, 8: 33.99, 16: 52.10}


@given(st.integers(1, 10), st.integers(1, 8), st.integers(1, 20))
def test_each_timed_call_reads_a_weight_set_of_its_own(rounds, n_threads, per):
    # Every thread count of a round read the set the first had just read (possibly from L3) before.
    sets = [
        weight_set(r, ti, j, per, n_threads)
        for r in range(rounds)
        for ti in range(n_threads)
        for j in range(per)
    ]
    assert len(set(sets)) == len(sets) and min(sets) == 1  # set 0 is the warm-up's


class _RecordedCase(MatmulCase):
    """A DRAM case without ggml: ``run`` is MatmulCase's own, and the compute call records which copy of
    the weights it was given."""

    def __init__(self, copies: int, log: list[int]) -> None:
        self.qtype, self.k, self.n, self.m, self.copies = "q4_K", QK_K, 1, 1, copies
        self.graphs, self.weight_bytes = list(range(copies)), 1
        compute = lambda graph, plan: log.append(graph) or 0  # noqa: E731
        self.g = SimpleNamespace(cpu=SimpleNamespace(ggml_graph_compute=compute))

    def _plan(self, i: int, threads: int) -> _CPlan:
        return _CPlan()

    def close(self) -> None:
        pass


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(1, 300))
def test_no_timed_call_rereads_weights_the_case_read_since_its_last_lap(copies, n_threads, calls):
    # Each DRAM read must come after every other copy a timed call can reach (copies - 1 of them) has been
    # read since that copy's last read, the most traffic the case holds. The wrap of the timed calls' index
    # onto copy 0 -- the warm-up's, read just before the block's timed calls -- broke this (an L3 hit, and
    # the fastest call is the one kept).
    log: list[int] = []
    case = _RecordedCase(copies, log)
    kquant = sys.modules[MatmulCase.__module__]
    original = kquant._cases
    kquant._cases = lambda g, dram_mb: [("dram", "gate_up", case)]
    try:
        measure(None, tuple(range(1, n_threads + 1)), calls, 0.0)
    finally:
        kquant._cases = original
    per = max(1, calls // 10)
    assert len(log) == 10 * n_threads * (per + 1)
    last: dict[int, int] = {}
    for pos, c in enumerate(log):
        if pos % (per + 1):  # a timed call (each block starts with its warm-up)
            assert c != 0
            if c in last:
                assert len(set(log[last[c] + 1 : pos]) - {0}) == copies - 2
        last[c] = pos
