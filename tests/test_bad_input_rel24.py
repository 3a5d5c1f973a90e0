"""Session 24's hostile inputs: absurd plan counts refused at the boundary with their range, a GPU's
``memory`` beside the rule it replaces, and what the audit (tools/bad_input_audit.py) found."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.strategies.base import get_strategy
from hetsim.workload import MAX_WORK, Workload

HUGE = 10**30

# (strategy, model, rig, field, the range its line states)
COUNTS = [
    ("flexgen", "opt-6.7b", "flexgen-t4", "gpu_batch_size", "must be in [1, 65536]"),
    ("flexgen", "opt-6.7b", "flexgen-t4", "num_gpu_batches", "must be in [1, 65536]"),
    ("cpu-tp", "llama2-7b", "cputp-4x8575c", "weight_copies", "must be in [1, 2]"),
]


@pytest.mark.parametrize(("strategy", "model", "hw", "field", "says"), COUNTS)
def test_an_absurd_count_in_a_plan_file_is_refused_with_its_range(
    plan_file, guarded, strategy, model, hw, field, says
) -> None:
    """10**30 ran to an infeasible row quoting 10**25 TB ("kv_cache needs 3.7e25 TB"); now one line,
    exit 2, the file, the field and the allowed range."""
    f = plan_file(strategy, model, hw, **{field: HUGE})
    code, err = guarded(["simulate", "--plan", f, "--format", "json"])
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: {f}: params.{field}: {says}") and f"got {HUGE}" in err, err
    assert "TB" not in err


def test_num_gpu_batches_may_fill_the_largest_batch_and_no_more(plan_file, guarded) -> None:
    """The block (gpu_batch_size x num_gpu_batches) is a batch: at most 65536, rounded up to whole GPU
    batches (48 x 1366 = 65568, the default plan's at batch 65536)."""
    fg = get_strategy("flexgen")
    p = api.problem("opt-6.7b", "flexgen-t4", 1, 16, 2)
    plan = fg.default_plan(p.rig, p.model, p.workload)
    from dataclasses import replace

    fg.check_plan(replace(plan, gpu_batch_size=48, num_gpu_batches=1366), p.rig, p.model, p.workload)
    fg.check_plan(replace(plan, gpu_batch_size=2**16, num_gpu_batches=1), p.rig, p.model, p.workload)
    f = plan_file("flexgen", "opt-6.7b", "flexgen-t4", gpu_batch_size=48, num_gpu_batches=1367)
    code, err = guarded(["simulate", "--plan", f])
    assert code == 2 and "params.num_gpu_batches: must be in [1, 1366]" in err, err


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=MAX_WORK["batch"]))
def test_flexgens_default_plan_is_inside_its_own_ranges(batch: int) -> None:
    """The caps refuse no plan hetsim makes itself: the default plan at every batch passes them."""
    fg = get_strategy("flexgen")
    p = _t4()
    wl = Workload(batch, 16, 2)
    fg.check_plan(fg.default_plan(p.rig, p.model, wl), p.rig, p.model, wl)


_T4: list[api.Problem] = []


def _t4() -> api.Problem:
    if not _T4:
        _T4.append(api.problem("opt-6.7b", "flexgen-t4", 1, 16, 2))
    return _T4[0]


def test_cpu_tp_two_weight_copies_still_run(plan_file, guarded) -> None:
    """xFT's hybrid dtypes keep two complete models: 2 is inside the range, 3 is not."""
    ok = plan_file("cpu-tp", "llama2-7b", "cputp-4x8575c", weight_copies=2)
    assert guarded(["simulate", "--plan", ok, "--format", "json"])[0] == 0
    bad = plan_file("cpu-tp", "llama2-7b", "cputp-4x8575c", weight_copies=3)
    code, err = guarded(["simulate", "--plan", bad])
    assert code == 2 and "params.weight_copies: must be in [1, 2] (xFasterTransformer" in err, err


# ---- a GPU's measured memory beside the rule it replaces ---------------------------------------------
RIG = """name: r
nodes:
- count: 1
  cpus: [xeon-8380]
  host_memory: {{value: 256 GB, source: test, grade: assumed}}
  gpus:
  - model: a10
{extra}"""
MEMORY = "    memory: {value: 20 GB, source: test, grade: measured}\n"


def _rig(tmp_path: Path, extra: str) -> str:
    f = tmp_path / "r.yaml"
    f.write_text(RIG.format(extra=extra))
    return str(f)


@pytest.mark.parametrize("key", ["ecc_share", "driver_share"])
def test_a_share_beside_a_given_memory_is_refused(tmp_path, guarded, key) -> None:
    """Before: loaded, the share silently unused (19.5 GB whatever ecc_share said)."""
    f = _rig(tmp_path, MEMORY + f"    {key}: {{value: 0.5, source: test, grade: assumed}}\n")
    code, err = guarded(["hw", "show", f])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {f}: nodes[0].gpus[0].{key}: is not used: memory"), err


def test_dram_beside_a_given_memory_is_refused(tmp_path, guarded) -> None:
    f = _rig(tmp_path, MEMORY + "    dram: {value: 48 GiB, source: test, grade: datasheet}\n")
    code, err = guarded(["hw", "show", f])
    assert code == 2 and f"{f}: nodes[0].gpus[0].dram: is not used" in err, err


def test_a_rigs_memory_over_a_datasheet_card_replaces_its_rule(tmp_path) -> None:
    """What hetsim calibrate writes (a measured ``memory`` over the catalogue A10's dram and shares)
    still loads, and the memory is what the GPU holds."""
    from hetsim.hardware.loader import load_rig

    rig = load_rig(_rig(tmp_path, MEMORY))
    gpu = rig.gpus()[0]
    assert gpu.mem_bytes + gpu.reserved_bytes == 20e9


def test_memory_null_derives_it_from_the_rigs_share(tmp_path) -> None:
    from hetsim.hardware.loader import load_rig

    plain = load_rig(_rig(tmp_path, "")).gpus()[0]
    f = _rig(tmp_path, "    memory: null\n    ecc_share: {value: 0, source: ECC off, grade: measured}\n")
    off = load_rig(f).gpus()[0]
    assert off.mem_bytes + off.reserved_bytes == pytest.approx(
        (plain.mem_bytes + plain.reserved_bytes) * 16 / 15, abs=1
    )
    assert math.isfinite(off.mem_bytes)


def test_the_tampered_plans_json_is_what_simulate_reads(plan_file) -> None:
    """The fixture's edits land in the params (a guard on the tests above)."""
    f = plan_file("cpu-tp", "llama2-7b", "cputp-4x8575c", weight_copies=HUGE)
    assert json.loads(Path(f).read_text())["params"]["weight_copies"] == HUGE


# ---- found by the hunt (tools/bad_input_audit.py's new cases) ------------------------------------------
def test_hetegens_runtime_reserve_is_at_most_the_gpu(plan_file, guarded) -> None:
    """1e30 bytes of reserve ran to "needs 1000000000000000000.0 TB"; the GPU's memory is the bound."""
    f = plan_file("hetegen", "opt-6.7b", "hetegen-a10", runtime_reserve_bytes=1e30)
    code, err = guarded(["simulate", "--plan", f])
    assert code == 2 and err.count("\n") == 1, err
    assert (
        f"{f}: params.runtime_reserve_bytes: must be in [0, " in err and "23.2 GB n0.gpu0 may use" in err
    ), err
    ok = plan_file("hetegen", "opt-6.7b", "hetegen-a10", runtime_reserve_bytes=0.35e9)
    assert guarded(["simulate", "--plan", ok, "--format", "json"])[0] == 0


def test_a_reserve_over_the_budget_names_the_budgets_bytes_not_the_gpus(plan_file, guarded) -> None:
    """Under a plan's GPU memory budget the bound is the budget's bytes: the line said "at most what
    n0.gpu0 holds" while quoting 4e+09, of a GPU that holds 23.2 GB."""
    f = plan_file("hetegen", "opt-6.7b", "hetegen-a10", runtime_reserve_bytes=5e9)
    doc = json.loads(Path(f).read_text())
    Path(f).write_text(json.dumps({**doc, "gpu_mem_budget": 4e9}))
    code, err = guarded(["simulate", "--plan", f])
    assert code == 2 and err.count("\n") == 1, err
    assert (
        "params.runtime_reserve_bytes: must be in [0, 4e+09] (at most the 4.0 GB n0.gpu0 may use)" in err
    ), err


SWEEP = """name: s
base: {{batch: 1, gen_len: 2, prompt_len: 16, model: llama2-7b, rig: mixed-lab, strategy: gpu-only}}
grids:
- {{{key}: [{value}]}}
"""


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        # an OverflowError traceback out of the results table (10**30 is no 64-bit integer)
        ("cpu_sockets", str(10**30), "must be <= 64 (the most sockets a rig's node holds)"),
        ("cpu_sockets", "65", "must be <= 64"),
        # another kind's numbers swapped in for every PCIe (or NIC) link, silently
        ("pcie", "ethernet-100g", "'ethernet-100g' is a ethernet link, not pcie"),
        ("pcie", "nvlink4", "'nvlink4' is a nvlink link, not pcie"),
        ("net_link", "pcie4-x16", "'pcie4-x16' is a pcie link, not ethernet or infiniband or rdma"),
    ],
)
def test_a_sweeps_hardware_knob_out_of_its_range_is_refused(tmp_path, guarded, key, value, says) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SWEEP.format(key=key, value=value))
    code, err = guarded(["sweep", str(spec), "--workers", "1", "--no-plots", "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {spec}: grids[0].{key}[0]: {says}"), err
    assert not (tmp_path / "o" / "results").exists()


def test_a_sweeps_pcie_knob_of_a_pcie_link_still_runs(tmp_path, guarded) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        SWEEP.format(key="pcie", value="pcie3-x16").replace("grids:", "grids:\n- {cpu_sockets: [64]}")
    )
    code, err = guarded(["sweep", str(spec), "--workers", "1", "--no-plots", "--out", str(tmp_path / "o")])
    assert code == 0, err


@pytest.mark.parametrize("where", ["flag", "plan", "params"])
def test_a_budget_past_any_memory_is_refused(plan_file, guarded, where) -> None:
    """1e308 bytes (a bare number) ran, its clamp note quoting "5301413805838450032640.0 TB"; past an
    exabyte (a rig file's bound on any size, ``hardware.schema.Bytes``) is a typo."""
    from hetsim.hardware.schema import Bytes
    from hetsim.sim.memory import MAX_GPU_MEM_BUDGET

    assert Bytes._high == MAX_GPU_MEM_BUDGET
    if where == "flag":
        args = ["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--batch", "1", "--prompt-len", "16"]
        code, err = guarded(
            [*args, "--gen-len", "2", "--strategies", "gpu-only", "--gpu-mem-budget", "1e308"]
        )
        field = "--gpu-mem-budget"
    else:
        f = plan_file("hetegen", "opt-6.7b", "hetegen-a10")
        doc = json.loads(Path(f).read_text())
        (doc["params"] if where == "params" else doc)["gpu_mem_budget"] = 1e30
        Path(f).write_text(json.dumps(doc))
        code, err = guarded(["simulate", "--plan", f])
        field = f"{f}: " + ("params.gpu_mem_budget" if where == "params" else "gpu_mem_budget")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{field}: " in err and "past any memory (at most 1e+18, an exabyte)" in err, err
    assert "TB" not in err


def test_a_config_whose_shapes_multiply_past_any_model_is_refused(tmp_path, guarded) -> None:
    """Each shape under its own bound (hidden 1e8, 10,000 layers) made 7e20 parameters; compare's rows
    quoted "weights needs 1400000016.8 TB". The product is bounded too (hf_config.MAX_PARAMS)."""
    root = Path(__file__).resolve().parent / "data" / "hf-configs" / "Llama-2-7B" / "config.json"
    cfg = json.loads(root.read_text())
    cfg.update(hidden_size=10**8, intermediate_size=10**8, num_hidden_layers=10_000)
    cfg.update(num_attention_heads=1000, num_key_value_heads=1000)
    f = tmp_path / "config.json"
    f.write_text(json.dumps(cfg))
    for args in (["model", "show", str(f)], ["compare", "--model", str(f), "--hw", "mixed-lab"]):
        code, err = guarded(args)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("error: ") and f"{f}: its shapes (hidden_size, " in err, err
        assert "7e+20 parameters" in err
        assert "at most 1e+14" in err and "TB" not in err


@pytest.mark.parametrize(
    ("strategy", "knob", "value", "says"),
    [
        ("flexgen", "gpu_batch_size", 2**62, "must be in [1, 65536] (larger batches"),
        ("flexgen", "num_gpu_batches", 65537, "must be in [1, 65536] (a block of gpu_batch_size"),
        ("cpu-tp", "weight_copies", 3, "must be in [1, 2] (xFasterTransformer keeps at most two"),
        ("hexgen", "max_batch", 2**40, "must be in [1, 65536] (larger batches"),
    ],
)
def test_a_sweeps_plan_knob_out_of_its_range_is_refused_before_any_point(
    tmp_path, guarded, strategy, knob, value, says
) -> None:
    """Before: each such point ran to an error row (InputError: params.<knob>: ...) after the points
    before it; the strategy's ``knob_ranges`` are checked with the spec."""
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nbase: {batch: 1, gen_len: 2, prompt_len: 16, model: llama2-7b, rig: mixed-lab}\n"
        f"grids:\n- {{strategy: [{strategy}], plan.{knob}: [1, {value}]}}\n"
    )
    code, err = guarded(["sweep", str(spec), "--workers", "1", "--no-plots", "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {spec}: grids[0].plan.{knob}[1]: {says}"), err
    assert f"({strategy}'s plan field)" in err and not (tmp_path / "o" / "results").exists()
