"""Lossy plans (FlexGen's 4-bit compression) are the user's to ask for, and every output says so."""

from __future__ import annotations

import json
from dataclasses import dataclass

import hetsim.cli.commands as cli_app
from hetsim.api import compare, plan_document, problem
from hetsim.cli import main
from hetsim.planner import search
from hetsim.strategies.base import get_strategy
from hetsim.strategies.cpu_tp import CpuTensorParallel
from hetsim.strategies.flexgen_policy import FlexGenPlan

# The shipped FlexGen rig and a workload where the search used to switch the 4-bit KV cache on.
ARGS = ["--model", "opt-30b", "--hw", "flexgen-t4", "--strategies", "flexgen", "--batch", "8",
        "--prompt-len", "256", "--gen-len", "16", "--format", "json"]  # fmt: skip


def _flexgen(capsys, *extra: str) -> dict:
    assert main(["compare", *ARGS, *extra]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    return result


def test_search_is_lossless_unless_asked(capsys):
    plain = _flexgen(capsys)
    assert plain["feasible"]
    assert not plain["plan"]["compress_cache"] and not plain["plan"]["compress_weight"]
    assert plain["lossy"] == ""
    allowed = _flexgen(capsys, "--allow-compression")
    assert allowed["feasible"]
    # allowed to, the search takes 4-bit weights here (faster on this PCIe-bound rig: the weight copy
    # shrinks and the KV cache then fits on the GPU uncompressed) ...
    assert allowed["plan"]["compress_weight"] and not allowed["plan"]["compress_cache"]
    assert allowed["lossy"] == "4-bit weights (group 64)"
    # ... and never a worse plan than the lossless search found
    assert allowed["throughput_tok_s"] >= plain["throughput_tok_s"] * (1 - 1e-9)


def test_lossy_shows_in_the_table_and_the_plan_document(capsys, monkeypatch):
    monkeypatch.setattr(cli_app.out(), "width", 400)  # one line per row, whatever the terminal
    assert main(["compare", *ARGS[:-2], "--allow-compression"]) == 0
    assert "lossy: 4-bit weights (group 64)" in capsys.readouterr().out
    p = problem("opt-30b", "flexgen-t4", 8, 256, 16)
    flexgen = get_strategy("flexgen")
    doc = plan_document(p, flexgen, FlexGenPlan(gpu="n0.gpu0", compress_weight=True), "throughput")
    assert doc["lossy"] == "4-bit weights (group 64)"
    both = FlexGenPlan(gpu="n0.gpu0", compress_weight=True, compress_cache=True)
    both_doc = plan_document(p, flexgen, both, "throughput")
    assert both_doc["lossy"] == "4-bit weights (group 64); 4-bit KV cache (group 64)"
    assert plan_document(p, flexgen, FlexGenPlan(gpu="n0.gpu0"), "throughput")["lossy"] == ""


def test_no_lossy_result_without_the_flag_on_any_shipped_strategy():
    p = problem("opt-30b", "flexgen-t4", 8, 256, 16)
    assert all(r.lossy == "" for r in compare(p))


@dataclass(frozen=True)
class _Tagged:
    name: str
    lossy: bool


class _TwoPlans(CpuTensorParallel):
    """A strategy whose first candidate is lossy: the planner must skip it unless allowed."""

    def candidates(self, rig, model, workload):
        yield _Tagged("compressed", True)
        yield _Tagged("exact", False)

    def lossy(self, plan):
        return "made-up compression" if plan.lossy else ""


def test_planner_drops_lossy_candidates_unless_allowed():
    p = problem("llama2-7b", "cputp-4x8575c", 1, 16, 2)
    chosen = search(_TwoPlans(), p.rig, p.model, p.workload, "throughput")
    assert chosen == _Tagged("exact", False)  # the lone lossless candidate


def test_a_lossy_weight_dtype_asked_for_is_reported_as_lossy():
    from hetsim.strategies.cpu_tp import CpuTpPlan

    cpu_tp = get_strategy("cpu-tp")
    assert cpu_tp.lossy(CpuTpPlan(ranks=("n0.cpu0",), weight_dtype="int8")) == "int8 weights"
    assert cpu_tp.lossy(CpuTpPlan(ranks=("n0.cpu0",), weight_dtype="bf16")) == ""
