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


def _raw(compute_scale: float = 1.1) -> dict:
    gemm = [
        {"m": m, "k": 1024, "n": 1024, "dtype": "fp32", "seconds": 1.0, "flops": f, "weight_bw": bw}
        for m, f, bw in ((1, 10e9, 20e9), (16, 40e9, 5e9), (64, 50e9, 1.5e9))
    ] + [{"m": 1, "k": 1024, "n": 1024, "dtype": "bf16", "seconds": 1.0, "flops": 0.3e9, "weight_bw": 1e9}]
    ar = [{"bytes": b, "seconds": 50e-6 + b / 2e9} for b in (4, 4096, 2**20, 4 * 2**20)]
    # co-running ranks each stream weights at half their solo rate: they share one DRAM
    shared = {**gemm[1], "weight_bw": gemm[1]["weight_bw"] / 2}
    corun = {"gemm": [shared, {**gemm[2], "flops": 50e9 * compute_scale / 2}], "stream": {"copy_bw": 6e9}}
    return {
        "threads": 1, "ranks": 2, "quick": True, "cpu": "test CPU", "gemm": gemm,
        "stream": {"copy_bw": 12e9, "add_bw": 15e9, "bytes": 1.0},
        "overhead": {"median": 5e-6}, "attention": {"flops": 20e9},
        "multiprocess": {"allreduce": ar, "corun": [corun, corun]},
    }  # fmt: skip


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
    assert cpu.peak_flops["fp32"] == pytest.approx(50e9, rel=1e-3)
    assert cpu.mem_bw == pytest.approx(20e9, rel=1e-3)  # GEMV streaming beats STREAM copy here
    assert cpu.efficiency.compute["matmul"] == pytest.approx(0.9, rel=1e-3)  # median(40, 50) / 50
    link = rig.route("n0.cpu0", "n0.cpu1")
    assert link.latency_s == pytest.approx(50e-6, rel=1e-2) and link.bw == pytest.approx(2e9, rel=1e-2)
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
