"""validate.split_parts: one HeteGen split module's parts, measured beside hetsim's booking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from validate import split_parts  # noqa: E402

REPORT = Path(split_parts.REPORT)


def test_booked_parts_are_the_recorded_plans_module_on_its_profile():
    """The OPT-6.7B run's fc1 in decode: the plan's alpha and split count, and hetsim's own numbers
    for it (the CPU share's op cost, the pinned copy, a lone split module in the engine)."""
    from hetsim.costs.op_cost import op_cost
    from hetsim.hardware import load_rig
    from hetsim.models.spec import ModelSpec
    from hetsim.strategies.hetegen import measure_split, module_ops, split_module

    report = json.loads(REPORT.read_text())
    b = split_parts.booked(split_parts.PROFILE, report, "fc1", "decode")
    assert (b["rows"], b["k"], b["n"]) == (1, 4096, 16384)
    assert b["alpha"] == 0.442115 and b["split_modules_per_step"] == 32 - 15
    run = report["runs"][0]
    op = module_ops(ModelSpec(**run["model"]), "decode", 1, 1)["fc1"]
    rig = load_rig(split_parts.PROFILE)
    sm = split_module(op, 0.442115)
    assert b["cpu_s"] == op_cost(rig.devices["n0.cpu0"], sm.cpu_part).time_s
    assert b["h2d_s"] == rig.route("n0.cpu0", "n0.gpu0").time(sm.weight_bytes)
    assert b["module_s"] == measure_split(rig, "n0.gpu0", "n0.cpu0", op, 0.442115, 2e-5)[0]
    # the sizes the report quotes: 75 MB of CPU share at ~67 GB/s, 59 MB copied at 55 GB/s
    assert b["cpu_s"] == pytest.approx(1.115e-3, rel=0.01)
    assert b["h2d_s"] == pytest.approx(1.083e-3, rel=0.01)
    assert b["module_s"] == pytest.approx(1.156e-3, rel=0.01)  # + x, y and the barrier
    prefill = split_parts.booked(split_parts.PROFILE, report, "fc1", "prefill")
    assert prefill["rows"] == 128 and prefill["alpha"] == 0.874057


def test_parts_run_on_the_host_and_the_split_is_the_whole_matmul(capsys, tmp_path):
    """--device cpu (no GPU here): every host part is timed, the runner's split module gives the
    whole module's product, and the CLI writes the table and the JSON."""
    torch.set_num_threads(1)
    m = split_parts.measure(3, 64, 96, 0.4, 3, device="cpu", reps=1)
    for key in ("cpu_dram_s", "cpu_cached_s", "cpu_pool_s", "x_d2h_s", "y_h2d_s", "cat_s", "runner_s"):
        assert m[key] > 0
    assert m["max_abs_diff"] <= 1e-3 and m["copies"] == 3
    assert "h2d_s" not in m  # no copies without CUDA
    out = tmp_path / "parts.json"
    argv = [
        "--device",
        "cpu",
        "--scale",
        "0.02",
        "--rotate-gib",
        "0.001",
        "--reps",
        "1",
        "--phases",
        "decode",
    ]
    assert split_parts.main([*argv, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["phases"]["decode"]["booked"]["alpha"] == 0.442115
    assert "the runner's split module" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_cuda_is_one_line_and_exit_2(capsys):
    assert split_parts.main(["--phases", "decode"]) == 2
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "needs CUDA" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parts_on_cuda_include_the_copies_and_both_at_once():
    m = split_parts.measure(1, 256, 512, 0.5, 2, device="cuda", reps=1)
    for key in ("h2d_s", "h2d_cached_s", "both_cpu_s", "both_h2d_s", "both_s", "runner_s"):
        assert m[key] > 0
    assert m["both_s"] >= max(m["both_cpu_s"], m["both_h2d_s"])
    assert m["max_abs_diff"] <= 1e-2
