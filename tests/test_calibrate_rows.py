"""calibrate's GEMM sweep and the provenance of its many-row limit: --quick reaches a prompt's rows, and
a limit fitted past the rows run is said to be an extrapolation (graded assumed), not a measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware import load_rig
from validate import calibrate as cal
from validate import microbench as mb

S19 = Path(__file__).resolve().parents[1] / "validate/results/h200/s19/gpu.microbench.json"


def _gemm_rows(quick: bool) -> list[int]:
    return sorted({m for m, _k, _n in cal.sweep_shapes(quick) if m > 1})


def test_quick_sweep_runs_a_prompts_rows():
    """The validate runs' prompts are 128 rows: --quick measures a GEMM there (it stopped at 32, and the
    H200 host's fp16 curve then booked HeteGen's CPU share 1.9x faster than one such share ran)."""
    rows = _gemm_rows(quick=True)
    assert max(rows) >= 128 and max(rows) >= mb.COMPUTE_BOUND_ROWS
    assert min(rows) == 2  # the few-row end of the Hockney fit is kept
    assert set(rows) <= set(_gemm_rows(quick=False))  # a subset of the full sweep's rows


def _curve(rates: dict[int, float]) -> dict:
    runs = [{"m": 1, "k": 1024, "n": 1024, "dtype": "fp16", "seconds": 1.0, "flops": 1.0, "weight_bw": 2e9}]
    runs += [{"m": m, "k": 1024, "n": 1024, "dtype": "fp16", "seconds": 1.0, "flops": f, "weight_bw": 1.0}
             for m, f in rates.items()]  # fmt: skip
    return cal._matmul_curve(runs)


def test_rows_fit_grades_an_extrapolated_limit():
    # Hockney-exact, m_half 40: fitted on m <= 32 the knee lies past the data; with 128 it does not
    hockney = {m: 1e12 * m / (m + 40.0) for m in (2, 8, 32, 128)}
    short = _curve({m: f for m, f in hockney.items() if m <= 32})
    assert short["rows"] == (2, 32) and short["rows_half"] == pytest.approx(40.0, rel=1e-6)
    where, grade = cal.rows_fit(short)
    assert grade == "assumed" and "extrapolated" in where and "m = 2..32" in where
    full = _curve(hockney)
    assert cal.rows_fit(full) == ("m = 2..128", "fitted")
    # no length dependence: the best run is the limit, nothing extrapolated
    flat = _curve({2: 5e11, 8: 5e11, 32: 5e11})
    assert cal.rows_fit(flat)[1] == "fitted"


@settings(max_examples=60, deadline=None)
@given(
    r_inf=st.floats(1e9, 1e13),
    m_half=st.floats(0.5, 2000.0),
    rows=st.sets(st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]), min_size=2),
)
def test_rows_fit_assumed_exactly_when_the_knee_is_past_the_data(r_inf, m_half, rows):
    """Hockney-exact rates: the fit recovers m_half, and the limit is graded assumed exactly when
    m_half lies past the largest rows run (the limit then also lies above every rate measured)."""
    curve = _curve({m: r_inf * m / (m + m_half) for m in rows})
    assert curve["rows_half"] == pytest.approx(m_half, rel=1e-6)
    where, grade = cal.rows_fit(curve)
    assert where.startswith(f"m = {min(rows)}..{max(rows)}")
    assert grade == ("assumed" if m_half > max(rows) else "fitted")


def test_recorded_h200_profile_says_its_fp16_limit_is_extrapolated(tmp_path):
    """The session-19 H200 host's sidecar (quick: m = 2, 8, 32): fp16's 1505 GFLOP/s limit (m_half 38)
    and bf16's are extrapolations and the profile grades them assumed; fp32's (m_half 14) is fitted.
    The same numbers as before, only their sources and grades."""
    raw = json.loads(S19.read_text())
    d = cal.derive(raw)
    path = cal.write_profile(cal.build_profile(raw, d), raw, tmp_path / "s19.yaml")
    cpu = load_rig(path).devices["n0.cpu0"]
    prov = cpu.provenance
    assert cpu.peak_flops["fp16"] == pytest.approx(1505.2e9, rel=1e-3)
    for key in ("peak_flops.fp16", "efficiency.matmul_by_dtype.fp16.compute"):
        assert prov[key].grade.name == "ASSUMED", key
        assert "extrapolated" in prov[key].source and "m = 2..32" in prov[key].source
    assert prov["peak_flops.bf16"].grade.name == "ASSUMED"
    assert prov["peak_flops.fp32"].grade.name == "FITTED" and "m = 2..32" in prov["peak_flops.fp32"].source
    assert "2..256" not in prov["efficiency.matmul_half_rows"].source  # the rows run, not the full sweep's
