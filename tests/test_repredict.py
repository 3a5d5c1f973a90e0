"""validate.summary predicts recorded CUDA runs again: on the profile they were predicted on, it gives
back the recorded predictions (same plan, same workload; a FlexGen run's batch is its block)."""

import json
from pathlib import Path

import pytest

from hetsim.errors import InputError
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


def _broken(run: dict, where: str, value) -> dict:
    out = json.loads(json.dumps(run))
    *path, key = where.split(".")
    node = out
    for part in path:
        node = node[part]
    if value is KeyError:
        del node[key]
    else:
        node[key] = value
    return out


@pytest.mark.parametrize(
    ("where", "value", "named"),
    [
        ("measured.ttft_s", KeyError, "measured.ttft_s"),  # was a KeyError traceback
        ("measured.ttft_s", "fast", "measured.ttft_s"),  # a TypeError traceback
        ("measured", [1], "measured"),  # a TypeError traceback
        ("measured.tpot_s", 0, "measured.tpot_s"),  # '+nan%', exit 0
        ("measured.tpot_s", float("nan"), "measured.tpot_s"),  # NaN errors, exit 0
        ("model.hidden", 0, "model.hidden"),  # a prediction of nonsense, exit 0
        ("model.layers", "32", "model.layers"),  # "can't multiply sequence by non-int"
    ],
)
def test_a_cuda_run_with_bad_numbers_is_one_line(tmp_path, capsys, where, value, named):
    """The CUDA runs' measured times and model were read with key lookups, unchecked: the CPU runs'
    checks (report_file) apply to them too."""
    doc = json.loads((H200 / "hetegen-opt-6.7b.json").read_text())
    doc["runs"] = [_broken(doc["runs"][0], where, value)]
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps(doc))
    assert main([str(H200 / "gpu.yaml"), str(bad), "--offload", str(H200 / "gpu-10g.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "r.json" in err and "runs[0]" in err and named in err


def test_summarize_cuda_alone_refuses_a_report_without_runs(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="no list of runs"):
        summarize_cuda(str(H200 / "gpu.yaml"), [str(bad)])


def test_summary_reads_each_report_once(monkeypatch, capsys):
    """main reads a report's file once for both kinds of run (it read it once per kind), and prints
    the rows it printed before."""
    import validate.report_file as report_file

    reports = [str(H200 / f"{stem}.json") for stem in ("gpu-only-llama2-7b-b32", "accelerate-llama2-7b")]
    profile = str(H200 / "gpu.yaml")
    assert main([profile, *reports]) == 0
    before = capsys.readouterr().out
    reads: list[str] = []
    read_text = report_file.read_text
    monkeypatch.setattr(report_file, "read_text", lambda p: reads.append(str(p)) or read_text(p))
    assert main([profile, *reports]) == 0
    assert sorted(reads) == sorted(reports)
    assert capsys.readouterr().out == before and before.count("\n") >= 2
