"""validate/: calibration maths, the profile it writes, cpu_sharing in the engine, a tiny real run."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from hetsim.hardware import load_rig  # noqa: E402
from hetsim.models import get_model  # noqa: E402
from hetsim.workload import Workload  # noqa: E402
from validate import calibrate as cal  # noqa: E402
from validate import microbench as mb  # noqa: E402
from validate import report  # noqa: E402

STREAM_INF, ROW_HALF = 20e9, 2048.0  # bytes/s with long rows; row bytes at half that rate
FLOPS_INF, ROWS_HALF = 50e9, 16.0  # FLOP/s with many rows; rows at half that rate


def _raw(compute_scale: float = 1.1) -> dict:
    """Microbenchmarks of a synthetic CPU whose GEMV and GEMM rates follow Hockney's law exactly."""

    def gemv(k: int, n: int) -> dict:
        bw = STREAM_INF * 4 * n / (4 * n + ROW_HALF)
        return {"m": 1, "k": k, "n": n, "dtype": "fp32", "seconds": 1.0, "flops": bw / 2, "weight_bw": bw}

    def gemm(m: int, k: int) -> dict:
        f = FLOPS_INF * m / (m + ROWS_HALF)
        return {"m": m, "k": k, "n": k, "dtype": "fp32", "seconds": 1.0, "flops": f, "weight_bw": 2 * f / m}

    fp32 = [gemv(1024, n) for n in (256, 1024, 4096, 16384)] + [gemm(m, 1024) for m in (2, 8, 32, 128)]
    bf16 = [{"m": 1, "k": 1024, "n": 1024, "dtype": "bf16", "seconds": 1.0, "flops": 0.3e9, "weight_bw": 1e9}]
    ar = [{"bytes": b, "seconds": 50e-6 + b / 2e9} for b in (4, 4096, 2**20, 4 * 2**20)]
    # behind a GEMV an all-reduce costs 80 us + 10 % of the GEMV (the wait for the slower rank)
    in_loop = [{"gemv_s": g, "allreduce_s": 0.0, "both_s": g + 80e-6 + 4096 / 2e9 + 0.1 * g, "bytes": 4096}
               for g in (1e-3, 8e-3)]  # fmt: skip
    # co-running ranks each stream weights at half their solo rate: they share one DRAM
    solo_gemv, solo_gemm = fp32[1], fp32[-1]
    shared = {**solo_gemv, "weight_bw": solo_gemv["weight_bw"] / 2}
    corun = {"gemm": [shared, {**solo_gemm, "flops": solo_gemm["flops"] * compute_scale / 2}],
             "stream": {"copy_bw": 6e9}}  # fmt: skip
    return {
        "threads": 1, "ranks": 2, "quick": True, "cpu": "test CPU", "gemm": fp32 + bf16,
        "stream": {"copy_bw": 12e9, "add_bw": 15e9, "bytes": 1.0},
        "overhead": {"median": 5e-6}, "attention": {"flops": 20e9},
        "multiprocess": {"allreduce": ar, "corun": [corun, corun], "allreduce_in_loop": in_loop},
    }  # fmt: skip


def test_derive_recovers_hockney_half_lengths():
    d = cal.derive(_raw())
    assert d["mem_bw"] == pytest.approx(STREAM_INF, rel=1e-6)  # long-row GEMV beats STREAM copy/add
    assert d["stream_half_row_bytes"] == pytest.approx(ROW_HALF, rel=1e-6)
    assert d["peak_fp32"] == pytest.approx(FLOPS_INF, rel=1e-6)  # above the best run (m = 128)
    assert d["matmul_half_rows"] == pytest.approx(ROWS_HALF, rel=1e-6)
    assert d["eff_matmul"] == pytest.approx(1.0) and d["eff_memory"] == pytest.approx(1.0)


def test_fit_half_without_length_dependence_keeps_best_rate():
    assert cal.fit_half([64, 64], [3.0, 5.0]) == (5.0, 0.0)
    assert cal.fit_half([8, 64, 512], [5.0, 5.0, 5.0]) == pytest.approx((5.0, 0.0), abs=1e-9)


def _profile(tmp_path, compute_scale: float = 1.1):
    raw = _raw(compute_scale)
    path = cal.write_profile(cal.build_profile(raw, cal.derive(raw)), raw, tmp_path / "p.yaml")
    return path


def test_fit_alpha_beta_recovers_known_line():
    pts = [{"bytes": b, "seconds": 30e-6 + b / 3e9} for b in (4, 1024, 65536, 2**22)]
    alpha, beta = mb.fit_alpha_beta(pts)
    assert alpha == pytest.approx(30e-6, rel=1e-3)
    assert beta == pytest.approx(3e9, rel=1e-3)


def test_profile_loads_with_measured_numbers(tmp_path):
    rig = load_rig(_profile(tmp_path))
    cpu = rig.devices["n0.cpu0"]
    assert len(rig.cpus()) == 2 and rig.nodes["n0"].cpu_sharing == "core"
    assert cpu.peak_flops["fp32"] == pytest.approx(FLOPS_INF, rel=1e-3)
    assert cpu.mem_bw == pytest.approx(STREAM_INF, rel=1e-3)  # GEMV streaming beats STREAM copy here
    assert cpu.efficiency.matmul_half_rows == pytest.approx(ROWS_HALF, rel=1e-3)
    assert cpu.efficiency.stream_half_row_bytes == pytest.approx(ROW_HALF, rel=1e-3)
    # the cost model reproduces a measured point: a 1-row GEMV over 1024-float rows
    assert cpu.mem_bw * cpu.efficiency.matmul_memory(4096) == pytest.approx(20e9 * 4096 / 6144, rel=1e-3)
    link = rig.route("n0.cpu0", "n0.cpu1")
    # latency as TP sees it (behind compute), the rest as a straggler share of each segment
    assert link.latency_s == pytest.approx(80e-6, rel=1e-2) and link.bw == pytest.approx(2e9, rel=1e-2)
    assert rig.nodes["n0"].straggler_fraction == pytest.approx(0.1, rel=1e-3)
    assert "torch" in cpu.provenance["mem_bw"].source
    assert load_rig(_profile(tmp_path, compute_scale=1.9)).nodes["n0"].cpu_sharing == "dram"


def test_core_sharing_serialises_ranks(tmp_path):
    """Two ranks on SMT siblings cannot beat one rank on the same core; on real sockets they do."""
    path = _profile(tmp_path)
    spec = dataclasses.replace(get_model("llama2-7b"), layers=2)
    w = Workload(1, 16, 4)
    one = report.predict_cpu(str(path), spec, w, 1, "fp32")
    two = report.predict_cpu(str(path), spec, w, 2, "fp32")
    assert two["tpot_s"] > one["tpot_s"]
    text = path.read_text().replace("cpu_sharing: core", "cpu_sharing: none")
    (tmp_path / "n.yaml").write_text(text)
    free = report.predict_cpu(str(tmp_path / "n.yaml"), spec, w, 2, "fp32")
    assert free["tpot_s"] < 0.7 * one["tpot_s"]


def test_tiny_real_run_baseline_and_tp(tmp_path):
    from validate.cli_impl import run_validate

    torch.set_num_threads(1)
    doc = run_validate(
        hw=str(_profile(tmp_path)), plan=None, model="llama2-7b", strategy="cpu-tp", ranks="1,2", layers=1,
        hidden=256, batch=1, prompt_len=4, gen_len=3, dtype="fp32", threads=1, repeats=1, out=tmp_path,
        stem="v",
    )  # fmt: skip
    assert [r["world"] for r in doc["runs"]] == [1, 2]
    for r in doc["runs"]:
        assert r["measured"]["ttft_s"] > 0 and r["predicted"]["tpot_s"] > 0
        assert len(r["measured"]["tokens"]) == 3
    assert (tmp_path / "v.json").is_file() and (tmp_path / "v.png").is_file()
    # the refit runs on these reports and keeps efficiencies in (0, 1]
    fitted = cal.fit_runs(tmp_path / "p.yaml", [tmp_path / "v.json"], tmp_path / "f.yaml")
    assert 0 < fitted["memory"] <= 1 and fitted["overhead_s"] >= 0
    # attention is a sliver of a 4-token prompt's time: the fit must leave it at its prior
    prior = load_rig(tmp_path / "p.yaml").devices["n0.cpu0"].efficiency.compute["attention"]
    assert fitted["attention"] == pytest.approx(prior)
    load_rig(tmp_path / "f.yaml")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_only_runs():
    from validate.runners import RunConfig, run_gpu_only

    spec = dataclasses.replace(get_model("llama2-7b"), layers=1)
    cfg = RunConfig(model=dataclasses.asdict(spec), batch=1, prompt_len=4, gen_len=3, dtype="fp16", repeats=1)
    assert run_gpu_only(cfg).tpot_s > 0


@pytest.mark.parametrize("model", ["llama2-7b", "opt-6.7b"])
def test_hetegen_run_matches_the_plain_decoder(model):
    """HeteGen's column-split linears (GPU share + CPU thread share, here both on the host) and
    resident modules produce the plain decoder's tokens."""
    from validate.offload import hetegen_decoder
    from validate.runners import RunConfig, generate_timed
    from validate.torch_model import TorchDecoder

    torch.set_num_threads(1)
    spec = dataclasses.replace(get_model(model), layers=2, hidden=256, heads=4, kv_heads=4, intermediate=512)
    plan = {
        "resident": {"q_proj": 1, "fc1": 2, "gate_proj": 1, "lm_head": 1},
        "alpha_prefill": {k: 0.25 for k in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2",
                                             "gate_proj", "up_proj", "down_proj")},
        "alpha_decode": {"k_proj": 1.0, "v_proj": 0.0, "out_proj": 0.5, "fc2": 0.7, "down_proj": 0.7},
    }  # fmt: skip
    cfg = RunConfig(model=dataclasses.asdict(spec), batch=2, prompt_len=5, gen_len=4, repeats=1, warmup_steps=0)
    plain = generate_timed(TorchDecoder(spec), cfg)
    split = hetegen_decoder(spec, plan, dtype=torch.float32, device="cpu")
    assert len(split.splits) > 0 and len(split.resident) > 0
    assert generate_timed(split, cfg).tokens == plain.tokens
