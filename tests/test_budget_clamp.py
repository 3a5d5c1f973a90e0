"""A GPU memory budget above what the GPU holds means "use at most this": every entry (the flag, the
API's planners, a plan file's ``gpu_mem_budget``) runs as the GPU's own size (``usable_bytes``) and
says so, where before the paper scripts' entries refused (HeteGen Fig. 8 at 24 GB on the 23.2 GB A10)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hetsim import api
from hetsim.planner.hetegen_knapsack import plan_hetegen
from hetsim.sim.memory import OutOfMemory, check_budget, usable_bytes
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy

GB = 1e9


def _paper_hetegen():
    path = Path(__file__).resolve().parent.parent / "paper_figs" / "hetegen.py"
    spec = importlib.util.spec_from_file_location("paper_figs_hetegen_clamp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def a10_13b():
    return api.problem("opt-13b", "hetegen-a10", batch=1, prompt_len=512, gen_len=64)


@given(
    st.floats(min_value=1e6, max_value=1e15, allow_nan=False),
    st.one_of(st.none(), st.floats(min_value=1e6, max_value=1e15, allow_nan=False)),
)
def test_usable_bytes_is_at_most_both(capacity: float, budget: float | None) -> None:
    got = usable_bytes(capacity, budget)
    assert got <= capacity
    assert got == (capacity if budget is None or budget >= capacity else budget)


def test_check_budget_holds_a_plan_to_the_gpu_not_to_a_larger_budget() -> None:
    check_budget("g", "w", {"a": 10.0}, 30.0, capacity=20.0)
    with pytest.raises(OutOfMemory) as exc:
        check_budget("g", "w", {"a": 25.0}, 30.0, capacity=20.0)
    assert exc.value.capacity == 20.0


@pytest.mark.parametrize("runner", ["hetegen_at_budget", "flexgen_at_budget"])
def test_paper_budget_above_the_a10_runs_as_the_a10(a10_13b, runner: str) -> None:
    """The Fig. 8 grid's 24 GB point of OPT-13B: refused before ("out of memory", "nothing fits
    24.00 GB"); now the plan the A10's own 23.2 GB gives, at least as fast as at 20 GB."""
    run = getattr(_paper_hetegen(), runner)
    cap = a10_13b.rig.gpus()[0].mem_bytes
    assert cap < 24 * GB
    over, at_cap, at_20 = run(a10_13b, 24 * GB), run(a10_13b, cap), run(a10_13b, 20 * GB)
    assert over.feasible, over.reason
    assert over.throughput_tok_s == pytest.approx(at_cap.throughput_tok_s, rel=1e-6)
    assert over.throughput_tok_s > at_20.throughput_tok_s
    assert over.peak_mem_bytes["n0.gpu0"] <= cap * (1 + 1e-12)


def test_plan_hetegen_sizes_to_the_gpu(a10_13b) -> None:
    gpu = a10_13b.rig.gpus()[0]
    big = plan_hetegen(a10_13b.rig, a10_13b.model, a10_13b.workload, gpu.name, 1e15)
    cap = plan_hetegen(a10_13b.rig, a10_13b.model, a10_13b.workload, gpu.name, gpu.mem_bytes)
    assert big == cap
    r = simulate(get_strategy("hetegen"), big, a10_13b.rig, a10_13b.model, a10_13b.workload)
    assert r.feasible, r.reason


def test_a_plan_files_budget_above_the_gpu_is_held_to_the_gpu(a10_13b) -> None:
    """FlexGen's plan with its own ``gpu_mem_budget`` above the GPU: its footprint check answers as the
    GPU's ledger does (out of memory at the GPU's size, not at the budget)."""
    fg = get_strategy("flexgen")
    plan = replace(fg.default_plan(a10_13b.rig, a10_13b.model, a10_13b.workload), gpu_mem_budget=1e15)
    plan = replace(plan, wg=100.0, wc=0.0, cg=100.0, cc=0.0, cpu_attention=False)
    with pytest.raises(OutOfMemory) as exc:  # 26 GB of fp16 weights on a 23.2 GB GPU
        fg.footprint(plan, a10_13b.rig, a10_13b.model, a10_13b.workload)
    assert exc.value.capacity == a10_13b.rig.gpus()[0].mem_bytes


def test_problem_says_when_the_budget_is_clamped() -> None:
    over = api.problem("opt-13b", "hetegen-a10", gpu_mem_budget=24 * GB)
    under = api.problem("opt-13b", "hetegen-a10", gpu_mem_budget=20 * GB)
    assert over.budget_note == (
        "GPU memory budget 24.0 GB is above the memory of n0.gpu0 (23.2 GB): it uses all it holds"
    )
    assert under.budget_note == ""
    assert over.rig.gpus()[0].mem_bytes == api.problem("opt-13b", "hetegen-a10").rig.gpus()[0].mem_bytes


def test_cli_notes_a_clamped_budget_on_stderr(guarded, capsys, tmp_path) -> None:
    args = ["--model", "opt-6.7b", "--hw", "hetegen-a10", "--batch", "1", "--prompt-len", "16"]
    args += ["--gen-len", "2", "--strategies", "hetegen", "--format", "json"]
    code, err = guarded(["compare", *args, "--gpu-mem-budget", "24GB"])
    assert code == 0
    assert err.strip() == (
        "note: GPU memory budget 24.0 GB is above the memory of n0.gpu0 (23.2 GB): it uses all it holds"
    )
    code, err = guarded(["compare", *args, "--gpu-mem-budget", "20GB"])
    assert code == 0 and err == ""
    out = tmp_path / "plan.json"
    plan_args = [a for a in args if a not in ("--strategies", "hetegen", "--format", "json")]
    code, err = guarded(
        ["plan", *plan_args, "--strategy", "hetegen", "--gpu-mem-budget", "24GB", "--out", str(out)]
    )
    assert code == 0 and err.startswith("note: GPU memory budget 24.0 GB")
    assert json.loads(out.read_text())["gpu_mem_budget"] == 24e9  # what was asked, clamped again on reading
    code, err = guarded(["simulate", "--plan", str(out), "--format", "json"])
    assert code == 0 and err.startswith("note: GPU memory budget 24.0 GB")


def test_a_failed_command_prints_its_error_line_alone(guarded) -> None:
    """The note follows the output: a command that fails after reading the budget still ends in one
    line (a bad --strategies; no feasible plan, exit 1)."""
    tiny = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]
    args = ["--model", "opt-6.7b", "--hw", "hetegen-a10", *tiny]
    code, err = guarded(["compare", *args, "--gpu-mem-budget", "24GB", "--strategies", "nope"])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --strategies"), err
    big = ["--model", "llama2-70b", "--hw", "hetegen-a10", *tiny]
    code, err = guarded(["plan", *big, "--strategy", "gpu-only", "--gpu-mem-budget", "24GB"])
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: no feasible plan"), err
