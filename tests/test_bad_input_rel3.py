"""Session 20's bad-input fixes: each case here named the wrong thing, ran a wrong value silently or
left the CLI with a traceback before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]


@pytest.mark.parametrize(
    ("value", "path", "why"),
    [
        ("{d}", "{d}", "a folder with no config.json in it"),  # said '{d}/config.json: no such file'
        ("{d}/", "{d}", "a folder with no config.json in it"),
        ("{d}/x.json", "{d}/x.json", "no such file"),
        ("{d}/bad.json", "{d}/bad.json", "malformed JSON: Expecting value at line 1 column 1"),
    ],
)
def test_a_model_path_that_is_no_config_names_the_flag(tmp_path, capsys, guarded, value, path, why):
    """``--model /`` said '/config.json: no such file', naming no flag (``--hw /`` names ``--hw``)."""
    (tmp_path / "bad.json").write_text("not json\n")
    value, path = value.format(d=tmp_path), path.format(d=tmp_path)
    for args in (["--model", value], [f"--model={value}"]):
        got = guarded(["compare", *args, "--hw", "mixed-lab", *SMALL])
        assert got == (2, f"error: --model {path}: {why}\n")


@pytest.mark.parametrize("chunk", [1, 2**23 - 1, 2**40 + 1, 1e300])
def test_hetegen_chunks_out_of_range_are_refused_naming_the_field(plan_file, capsys, guarded, chunk):
    """``stream_chunk_bytes`` took any value >= 1: a 1-byte chunk shrank the GPU's share buffers to
    nothing while the timing still booked one copy a share (no per-copy latency), and 1e300 ran."""
    f = plan_file("hetegen", "opt-6.7b", "hetegen-a10", stream_chunk_bytes=chunk)
    why = (
        "must be from 8388608 (8 MiB: a copy long beside its latency) to 1099511627776 (1 TiB, past any "
        f"GPU's memory), got {float(chunk)!r}"
    )
    assert guarded(["simulate", "--plan", f]) == (2, f"error: {f}: params.stream_chunk_bytes: {why}\n")


@pytest.mark.parametrize("chunk", [2**23, 32 * 2**20, 12e9, 2**40])
def test_hetegen_chunks_in_range_run(plan_file, capsys, guarded, chunk):
    f = plan_file("hetegen", "opt-6.7b", "hetegen-a10", stream_chunk_bytes=chunk)
    assert guarded(["simulate", "--plan", f, "--format", "json"])[0] == 0


def test_a_small_gpu_budget_is_no_chunk_problem(plan_file, capsys, guarded):
    """A budget under two chunks (32 MiB each) once blamed the chunk (its bound read the GPU as the budget
    capped it): the plan runs and the budget, not the chunk, decides whether it fits."""
    f = Path(plan_file("hetegen", "opt-6.7b", "hetegen-a10"))
    f.write_text(json.dumps({**json.loads(f.read_text()), "gpu_mem_budget": 5e7}))
    assert guarded(["simulate", "--plan", str(f), "--format", "json"]) == (0, "")  # an out-of-memory row


@pytest.mark.parametrize(
    ("strategy", "model", "hw", "edit", "why"),
    [
        # HeteGen splits dense modules only: Mixtral's plan ran, its experts costed as one dense MLP
        ("hetegen", "opt-6.7b", "hetegen-a10", {"model": "mixtral-8x7b"},
         "MoE experts are not split by HeteGen (dense OPT/Llama-style models only)"),
        ("moe-offload", "mixtral-8x7b", "mixed-lab", {"model": "llama2-7b"},
         "a dense model has no routed experts to offload (see layer-offload)"),
        ("deepspeed", "llama2-7b", "mixed-lab", {"hardware": "cputp-4x8575c"}, "the rig has no GPU"),
    ],
)  # fmt: skip
def test_a_plan_of_a_strategy_that_does_not_apply_is_refused(plan_file, capsys, guarded, strategy, model, hw,
                                                            edit, why):  # fmt: skip
    """``simulate --plan`` asked FlexGen alone whether it applies (``Strategy.applicable``, which compare
    and plan ask of each); another strategy's plan for a model or rig it cannot run ran, or failed
    further in with a line about something else. Now the check compare makes, one line, exit 2."""
    f = plan_file(strategy, model, hw)
    doc = json.loads(Path(f).read_text())
    Path(f).write_text(json.dumps({**doc, **edit}))
    assert guarded(["simulate", "--plan", f]) == (2, f"error: {f}: strategy: not applicable: {why}\n")


@pytest.mark.parametrize("budget", [24, 1e-300, 5e-324, 999999.0])
@pytest.mark.parametrize(("strategy", "where"), [("hetegen", "params"), ("gpu-only", "top")])
def test_a_plan_files_budget_under_a_megabyte_is_refused_as_the_flag_is(plan_file, capsys, guarded, budget,
                                                                         strategy, where):  # fmt: skip
    """Found by the fuzz pass (tests/test_file_fuzz.py): ``--gpu-mem-budget 24`` is refused (24 bytes:
    a missing unit), a plan file's ``gpu_mem_budget: 24`` (or 1e-300) ran to an out-of-memory row,
    'needs 5.7 GB with 0 B of 0 B in use'. Now the flag's rule (``sim.memory.budget_problem``)."""
    hw = "hetegen-a10" if strategy == "hetegen" else "mixed-lab"
    f = plan_file(strategy, "opt-6.7b", hw, **({"gpu_mem_budget": budget} if where == "params" else {}))
    if where == "top":
        Path(f).write_text(json.dumps({**json.loads(Path(f).read_text()), "gpu_mem_budget": budget}))
    field = "params.gpu_mem_budget" if where == "params" else "gpu_mem_budget"
    why = f"{float(budget):g} bytes is below any model's working set (at least 1 MB): a size in bytes"
    assert guarded(["simulate", "--plan", f]) == (2, f"error: {f}: {field}: {why}\n")


@pytest.mark.parametrize(("budget", "shown"), [(0, "0.0"), (-5, "-5.0"), (-1e-300, "-1e-300")])
@pytest.mark.parametrize(("strategy", "where"), [("hetegen", "params"), ("gpu-only", "top")])
def test_a_plan_files_budget_not_positive_says_bytes_or_null(plan_file, capsys, guarded, budget, shown,
                                                             strategy, where):  # fmt: skip
    """A strategy's own budget (``plan_io.optional_budget``) that is no size says it may be null, in
    ``budget_problem``'s words otherwise; the workload's (``api.with_gpu_mem_budget``) as the flag's."""
    hw = "hetegen-a10" if strategy == "hetegen" else "mixed-lab"
    f = plan_file(strategy, "opt-6.7b", hw, **({"gpu_mem_budget": 1e9} if where == "params" else {}))
    doc = json.loads(Path(f).read_text())
    if where == "params":
        doc["params"]["gpu_mem_budget"] = budget
    else:
        doc["gpu_mem_budget"] = budget
    Path(f).write_text(json.dumps(doc))
    field = "params.gpu_mem_budget" if where == "params" else "gpu_mem_budget"
    must = "a positive number of bytes or null" if where == "params" else "a positive finite size"
    why = f"must be {must}, got {shown}"
    assert guarded(["simulate", "--plan", f]) == (2, f"error: {f}: {field}: {why}\n")


def test_budgets_from_a_megabyte_up_still_run(plan_file, capsys):
    f = plan_file("hetegen", "opt-6.7b", "hetegen-a10", gpu_mem_budget=1e6)
    from hetsim.cli import main

    assert main(["simulate", "--plan", f, "--format", "json"]) == 0  # a result: what does not fit, and why
    assert "out of memory" in json.loads(capsys.readouterr().out)["results"][0]["reason"]


@pytest.mark.parametrize(
    ("value", "shown"), [(64, "64"), (2, "2"), ("0.5 MB", "'0.5 MB'"), ("999999 B", "'999999 B'")]
)
def test_a_rig_size_under_a_megabyte_is_refused(tmp_path, capsys, guarded, value, shown):
    """Found by the fuzz pass: ``host_memory: {value: 2}`` (bytes: a bare number) loaded, and every strategy
    that holds weights in host memory was an out-of-memory row; a GPU's ``memory: 64`` the same."""
    import yaml

    doc = yaml.safe_load(Path("hardware_profiles/rigs/hetegen-a10.yaml").read_text())
    doc["nodes"][0]["host_memory"]["value"] = value
    f = tmp_path / "rig.yaml"
    f.write_text(yaml.safe_dump(doc))
    bare = "; a bare number is bytes: give a unit" if isinstance(value, int) else ""
    why = f"must be in [1e+06, 1e+18] (SI units; physical bounds), got {shown}{bare}"
    line = f"error: {f}: nodes[0].host_memory: {why}\n"
    assert guarded(["compare", "--model", "opt-6.7b", "--hw", str(f), *SMALL, "--no-search"]) == (2, line)


@pytest.mark.parametrize("gb", [1e-9, 0.0005])
def test_a_sweeps_budget_under_a_megabyte_is_refused(tmp_path, capsys, guarded, gb):
    """``gpu_mem_gb: [1e-9]`` (one byte) ran its points to out-of-memory rows; the flag and a plan
    file refuse a budget under 1 MB (``sim.memory.budget_problem``), and so does the sweep now."""
    import yaml

    spec = {
        "name": "b",
        "base": {"prompt_len": 16, "gen_len": 2, "model": "llama2-7b", "rig": "mixed-lab", "batch": 1},
        "grids": [{"strategy": ["gpu-only"], "gpu_mem_gb": [16, gb]}],
    }
    f = tmp_path / "b.yaml"
    f.write_text(yaml.safe_dump(spec))
    got = guarded(["sweep", str(f), "--out", str(tmp_path / "out"), "--plots-only"])
    assert got == (2, f"error: {f}: grids[0].gpu_mem_gb[1]: must be at least 0.001 (1 MB), got {gb!r}\n")


def test_a_trace_row_longer_than_the_models_context_names_the_file_and_line(tmp_path, capsys, guarded):
    """A ``serve --requests`` row whose prompt + output passes the model's context exited 1 with
    'error: request 1: context ... exceeds' (its index after sorting by arrival), naming no file."""
    f = tmp_path / "trace.csv"
    f.write_text("arrival_s,prompt_len,output_len\n1.0,16,2\n0.5,4000,97\n")  # llama2-7b: 4096 positions
    got = guarded(["serve", "--model", "llama2-7b", "--hw", "hexgen-half-budget", "--requests", str(f)])
    why = "context of 4097 tokens (prompt + generated) exceeds llama2-7b's maximum of 4096 positions"
    assert got == (2, f"error: {f}: prompt_len + output_len: line 3: {why}\n")


def test_a_trace_row_at_the_models_context_is_read(tmp_path):
    """The bound is the model's context: a row of exactly 4096 tokens is a request (the control)."""
    from hetsim.models.registry import get_model
    from hetsim.serving.workload import read_trace
    from hetsim.sim.run import context_reason

    f = tmp_path / "trace.csv"
    f.write_text("arrival_s,prompt_len,output_len\n0.5,4000,96\n")
    (req,) = read_trace(f, lambda n: context_reason(get_model("llama2-7b"), n))
    assert (req.prompt_len, req.output_len) == (4000, 96)
