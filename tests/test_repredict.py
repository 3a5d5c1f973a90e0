"""validate.summary predicts recorded CUDA runs again: on the profile they were predicted on, it gives
back the recorded predictions (same plan, same workload; a FlexGen run's batch is its block)."""

import json
from pathlib import Path

import pytest

from validate.summary import main, summarize_cuda

H200 = Path(__file__).resolve().parents[1] / "validate" / "results" / "h200" / "before"


@pytest.mark.parametrize("stem", ["gpu-only-llama2-7b-b32", "accelerate-llama2-7b", "flexgen-opt-6.7b"])
def test_recorded_predictions_come_back_on_their_profile(stem):
    report = H200 / f"{stem}.json"
    (row,) = summarize_cuda(str(H200 / "gpu.yaml"), [str(report)], str(H200 / "gpu-10g.yaml"))
    recorded = json.loads(report.read_text())["runs"][0]
    assert row["ttft_ms"][1] == pytest.approx(recorded["predicted"]["ttft_s"] * 1e3, rel=1e-6)
    assert row["tpot_ms"][1] == pytest.approx(recorded["predicted"]["tpot_s"] * 1e3, rel=1e-6)
    assert row["ttft_ms"][0] == recorded["measured"]["ttft_s"] * 1e3


def test_a_malformed_cuda_run_is_one_line(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"runs": [{"strategy": "gpu-only", "label": "gpu-only", "measured": {},
                                         "plan": {"stages": []}}]}))  # fmt: skip
    assert main([str(H200 / "gpu.yaml"), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "r.json" in err and "runs[0]" in err and "workload" in err
