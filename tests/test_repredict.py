"""validate.repredict predicts recorded CUDA runs again: on the profile they were predicted on, it
gives back the recorded predictions (same plan, same workload; a FlexGen run's batch is its block)."""

from pathlib import Path

import pytest

from validate.repredict import repredict

H200 = Path(__file__).resolve().parents[1] / "validate" / "results" / "h200" / "before"


@pytest.mark.parametrize("stem", ["gpu-only-llama2-7b-b32", "accelerate-llama2-7b", "flexgen-opt-6.7b"])
def test_recorded_predictions_come_back_on_their_profile(stem):
    import json

    report = H200 / f"{stem}.json"
    (row,) = repredict(report, str(H200 / "gpu.yaml"), str(H200 / "gpu-10g.yaml"))
    recorded = json.loads(report.read_text())["runs"][0]
    assert row["ttft_pred_s"] == pytest.approx(recorded["predicted"]["ttft_s"], rel=1e-6)
    assert row["tpot_pred_s"] == pytest.approx(recorded["predicted"]["tpot_s"], rel=1e-6)
    assert row["ttft_meas_s"] == recorded["measured"]["ttft_s"]
