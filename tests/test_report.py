"""What a user sees from ``hetsim.report.tables``: number formats, JSON documents, rendered tables."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from hetsim.hardware import load_rig, rig_to_dict
from hetsim.models import get_model
from hetsim.report.tables import (
    compare_document,
    fmt_bw,
    fmt_count,
    fmt_flops,
    fmt_money,
    fmt_rate,
    model_dict,
    model_table,
    models_table,
    plan_summary_table,
    results_table,
    rig_tables,
    rigs_table,
)
from hetsim.sim.result import Result
from hetsim.workload import Workload

NAN = float("nan")
INF = float("inf")


def render(table) -> str:
    console = Console(file=io.StringIO(), width=300, color_system=None)
    console.print(table)
    return console.file.getvalue()


def rows(text: str) -> list[list[str]]:
    """Body rows of a rendered rich table, as stripped cells."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("┃"))
    return [c.strip() for c in line.split("┃")[1:-1]]


@pytest.fixture
def feasible() -> Result:
    return Result(
        "hexgen",
        True,
        plan={"max_batch": 8},
        ttft_s=0.0123,
        tpot_s=0.0456,
        e2e_s=1.5,
        throughput_tok_s=1234.56,
        peak_mem_bytes={"n0.gpu0": 3.2e10, "n0.gpu1": 1.2e10},
        utilization={"n0.gpu0:compute": 0.75},
        bottleneck="n0.gpu0:compute",
        cost_usd_per_mtok=0.42,
        batch=8,
        weakest_grade="assumed",
        tasks=17,
        extras={"pipeline_bubbles": 0.5},
    )


@pytest.fixture
def infeasible() -> Result:
    return Result.infeasible("flexgen", "out of memory on n0.gpu0", plan={"wg": 100})


# ---- number formats ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "text"),
    [
        (3.12e14, "312 TFLOPS"),
        (1.5e15, "1.5 PFLOPS"),
        (2e9, "2 GFLOPS"),
        (12.0, "12 FLOPS"),
        (1.234e13, "12.3 TFLOPS"),
    ],
)
def test_fmt_flops(x, text):
    assert fmt_flops(x) == text


def test_fmt_bw_is_decimal_bytes_per_second():
    assert fmt_bw(25.2e9) == "25.2 GB/s"
    assert fmt_bw(1.935e12) == "1.9 TB/s"
    assert fmt_bw(512.0) == "512 B/s"


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (1234.56, "1,234.6"),
        (0.04, "0.0"),
        (99_999.9, "99,999.9"),
        (123_456.7, "123,457"),
        (NAN, "-"),
        (INF, "-"),
        (None, "-"),
    ],
)
def test_fmt_rate(x, text):
    assert fmt_rate(x) == text


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (1234.5, "$1,234.50"),
        (0.42, "$0.42"),
        (0.01, "$0.01"),
        (0.004567, "$0.0046"),
        (0.0, "-"),
        (None, "-"),
        (NAN, "-"),
        (INF, "-"),
    ],
)
def test_fmt_money(x, text):
    assert fmt_money(x) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(6_738_415_616, "6.74B"), (999, "999"), (1500, "1.50K"), (1.5e12, "1.50T"), (2.5e6, "2.50M")],
)
def test_fmt_count(n, text):
    assert fmt_count(n) == text


# ---- models ---------------------------------------------------------------------------------------
def test_model_dict_has_hand_computed_sizes():
    d = model_dict(get_model("llama2-7b"))
    # 32 x (4 h^2 attention + 3 h i MLP + 2 h norms) + 2 v h embedding and head + h final norm
    h, i, v = 4096, 11008, 32000
    params = 32 * (4 * h * h + 3 * h * i + 2 * h) + 2 * v * h + h
    assert d["params"] == params == 6_738_415_616
    assert d["weight_bytes_fp16"] == 2 * params
    assert d["kv_bytes_per_token_fp16"] == 2 * 32 * 32 * 128 * 2  # K and V, 32 layers, 32 heads x 128, fp16
    assert d["bytes_per_param"] == 2.0
    assert (d["layers"], d["hidden"], d["heads"], d["kv_heads"], d["head_dim"]) == (32, 4096, 32, 32, 128)
    assert (d["experts"], d["experts_per_token"]) == (1, 1)
    json.dumps(d, allow_nan=False)
    # GQA: llama2-70b keeps 8 KV heads over 80 layers
    assert model_dict(get_model("llama2-70b"))["kv_bytes_per_token_fp16"] == 2 * 80 * 8 * 128 * 2


def test_models_table_rows():
    text = render(models_table([get_model("llama2-7b"), get_model("mixtral-8x7b")]))
    assert header(text) == [
        "name",
        "family",
        "params",
        "layers",
        "hidden",
        "heads/kv",
        "weights fp16",
        "KV/token fp16",
    ]
    body = rows(text)
    assert body[0] == ["llama2-7b", "llama", "6.74B", "32", "4096", "32/32", "13.5 GB", "524.3 KB"]
    assert body[1][0] == "mixtral-8x7b"
    assert body[1][1] == "mixtral (MoE 8x)"
    assert body[1][5] == "32/8"


def test_model_table_shows_exact_and_human_params():
    body = dict(rows(render(model_table(get_model("llama2-7b")))))
    assert body["params"] == "6.74B (6,738,415,616)"
    assert body["weight_bytes_fp16"] == "13.5 GB"
    assert body["kv_bytes_per_token_fp16"] == "524.3 KB"
    assert body["name"] == "llama2-7b"


# ---- hardware -------------------------------------------------------------------------------------
def test_rigs_table_summarises_a_rig_and_shows_a_broken_one():
    rig = load_rig("mixed-lab")
    text = render(rigs_table([("mixed-lab", rig), ("broken", "cannot parse rig")]))
    assert header(text) == ["name", "nodes", "GPUs", "CPU sockets", "$/h", "weakest grade"]
    good, bad = rows(text)
    # two servers at $9.68/h, an A100 at $1.79, a 4090 at $0.69, two A6000s at $0.79
    assert good == ["mixed-lab", "2", "1x a100-80g, 1x rtx-4090, 2x rtx-a6000", "4", "$23.42", "assumed"]
    assert bad[0] == "broken"
    assert "cannot parse rig" in bad


def test_rig_tables_devices_disks_links():
    rig = load_rig("mixed-lab")
    tables = rig_tables(rig, rig_to_dict(rig))
    assert len(tables) == 3
    devices, disks, links = (render(t) for t in tables)
    assert "$23.42/h" in devices and "weakest grade assumed" in devices
    by_name = {r[0]: r for r in rows(devices)}
    assert set(by_name) == set(rig.devices)
    # a GPU's memory is what a framework can allocate: the 80 GiB of HBM2e less the driver's share (78.65
    # GiB = 84.45 GB to torch) less the runtime's 0.5 GiB
    row = ["a100-80g", "gpu", "83.9 GB", "536.9 MB", "1.9 TB/s", "312 TFLOPS", "$1.79"]
    assert by_name["n0.gpu0"][1:8] == row
    assert by_name["n0.cpu0"][4] == "-" and by_name["n0.cpu0"][7] == "-"  # CPUs: no reserve, no own price
    assert len(rows(disks)) == 2
    link_rows = {r[0]: r for r in rows(links)}
    assert link_rows["n0.pcie.gpu0"][1:5] == ["pcie", "n0.gpu0 <-> n0.cpu0", "25.2 GB/s", "10 us"]
    assert set(link_rows) == set(rig.links)


# ---- results --------------------------------------------------------------------------------------
def test_compare_document_is_strict_json(feasible, infeasible):
    doc = compare_document("llama2-7b", "mixed-lab", Workload(4, 128, 32), [feasible, infeasible])
    back = json.loads(json.dumps(doc, allow_nan=False))
    assert back["model"] == "llama2-7b" and back["hardware"] == "mixed-lab"
    assert back["workload"] == {"batch": 4, "prompt_len": 128, "gen_len": 32}
    ok, bad = back["results"]
    assert ok["strategy"] == "hexgen" and ok["feasible"] is True
    assert ok["ttft_s"] == 0.0123 and ok["throughput_tok_s"] == 1234.56
    assert ok["peak_mem_bytes"] == {"n0.gpu0": 3.2e10, "n0.gpu1": 1.2e10}
    assert ok["tasks"] == 17 and ok["extras"] == {"pipeline_bubbles": 0.5}
    # an infeasible result keeps its reason and plan; every missing metric is null, not NaN
    assert bad["feasible"] is False and bad["reason"] == "out of memory on n0.gpu0"
    assert bad["plan"] == {"wg": 100}
    for key in ("ttft_s", "tpot_s", "e2e_s", "throughput_tok_s", "cost_usd_per_mtok"):
        assert bad[key] is None
    expected = {
        "strategy",
        "feasible",
        "reason",
        "plan",
        "ttft_s",
        "tpot_s",
        "e2e_s",
        "throughput_tok_s",
        "peak_mem_bytes",
        "utilization",
        "bottleneck",
        "cost_usd_per_mtok",
        "weakest_grade",
        "tasks",
        "extras",
        "lossy",
        "batch",
    }
    assert set(ok) == set(bad) == expected


def test_results_table_formats_feasible_and_infeasible_rows(feasible, infeasible):
    text = render(results_table([feasible, infeasible]))
    assert "Strategies, best first" in text
    assert header(text) == [
        "strategy",
        "ok",
        "batch",
        "TTFT",
        "TPOT",
        "e2e",
        "tok/s",
        "$/Mtok",
        "bottleneck",
        "peak mem (max)",
        "reason / grade",
    ]
    ok, bad = rows(text)
    assert ok == [
        "hexgen",
        "yes",
        "8",
        "12.3 ms",
        "45.6 ms",
        "1.5 s",
        "1,234.6",
        "$0.42",
        "n0.gpu0:compute",
        "32.0 GB (n0.gpu0)",
        "assumed",
    ]
    assert bad == ["flexgen", "no", *["-"] * 8, "out of memory on n0.gpu0"]


def test_results_table_missing_numbers_show_as_dashes():
    r = Result("cpu-tp", True, e2e_s=2.0, throughput_tok_s=INF, cost_usd_per_mtok=0.0)
    ok = rows(render(results_table([r, Result.infeasible("x", "")], title="T")))
    assert ok[0] == ["cpu-tp", "yes", "-", "-", "-", "2 s", "-", "-", "-", "-", ""]
    assert ok[1][-1] == "infeasible"  # no reason given


def test_plan_summary_table(feasible):
    doc = {
        "strategy": "hexgen",
        "objective": "latency",
        "model": "llama2-7b",
        "hardware": "mixed-lab",
        "workload": {"batch": 4, "prompt_len": 128, "gen_len": 32},
        "params": {"max_batch": 8, "weight_dtype": "fp16"},
    }
    text = render(plan_summary_table(doc, feasible))
    assert "Plan: hexgen (latency)" in text
    body = dict(rows(text))
    assert body["model"] == "llama2-7b" and body["hardware"] == "mixed-lab"
    assert body["workload"] == "batch 4, prompt 128, gen 32"
    assert body["params.max_batch"] == "8" and body["params.weight_dtype"] == "fp16"
    assert body["e2e / tok/s"] == "1.5 s / 1,234.6"


def test_predict_plan_refuses_a_precision_the_strategy_does_not_run():
    """validate's predictions ask what compare, plan and a plan file ask (``api.not_applicable``): the
    strategy's own rule, then the precisions it runs. HexGen runs no q4_k_m weights; only its own rule was
    asked before, and the search ran."""
    from pathlib import Path

    from hetsim.workload import Workload
    from validate.report import predict_plan

    rig = Path(__file__).resolve().parents[1] / "hardware_profiles" / "rigs" / "mixed-lab.yaml"
    wl = Workload(1, 16, 2, weight_dtype="q4_k_m")
    why = r"hexgen on .*: not applicable: --dtype q4_k_m is not a weight precision"
    with pytest.raises(ValueError, match=why):
        predict_plan(str(rig), "hexgen", None, get_model("llama2-7b"), wl)
