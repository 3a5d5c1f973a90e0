"""Session 19's bad-input fixes: each case here gave a traceback, an error row that was a Python
error, a line naming the wrong thing, or ran a wrong value silently before its fix."""

from __future__ import annotations

import pytest
import yaml

SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]
SWEEP = {
    "name": "kn",
    "base": {"prompt_len": 16, "gen_len": 2, "model": "llama2-7b", "rig": "mixed-lab", "batch": 4},
    "grids": [{"strategy": "all"}],
}


def _sweep(tmp_path, guarded, grid: dict, base: dict | None = None) -> tuple[int, str, str]:
    spec = {**SWEEP, "base": {**SWEEP["base"], **(base or {})}, "grids": [{**SWEEP["grids"][0], **grid}]}
    f = tmp_path / "kn.yaml"
    f.write_text(yaml.safe_dump(spec))
    code, err = guarded(["sweep", str(f), "--out", str(tmp_path / "out"), "--plots-only"])
    return code, err, str(f)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (2.0, "expected an integer: write 2, not 2.0 (YAML reads 2.0 as a float)"),
        (True, "Input should be a valid integer, got True"),  # ran as micro_batches=1
        ("x", "Input should be a valid integer, got 'x'"),  # a TypeError row
        (1e400, "must be a finite number, got inf"),
    ],
)
def test_a_plan_knob_of_the_wrong_type_is_refused_naming_its_field(tmp_path, capsys, guarded, value, why):
    """``plan.micro_batches: [2.0]`` over every strategy: gpu-only's point was an error row
    ``TypeError: 'float' object cannot be interpreted as an integer``."""
    code, err, f = _sweep(tmp_path, guarded, {"plan.micro_batches": [1, value]})
    assert (code, err) == (2, f"error: {f}: grids[0].plan.micro_batches[1]: {why} (gpu-only's plan field)\n")


def test_a_null_plan_knob_still_leaves_the_knob_unset(tmp_path, capsys, guarded):
    """null is no value of any plan field, but a sweep's null means the knob is unset (the point runs
    the strategy's own plan; ``grid.expand`` drops it), as it did before knob values were checked."""
    from hetsim.sweep.grid import expand
    from hetsim.sweep.spec import load_spec

    code, err, f = _sweep(tmp_path, guarded, {"strategy": ["gpu-only"], "plan.micro_batches": [None, 2]})
    assert code == 0, err
    code, err, f = _sweep(tmp_path, guarded, {"strategy": ["gpu-only"]}, {"plan.weight_dtype": None})
    assert code == 0, err
    points = expand(load_spec(f))
    assert points and all("plan.weight_dtype" not in p for p in points)


def test_a_plan_knob_is_checked_only_against_the_strategies_it_meets(tmp_path, capsys, guarded):
    """A knob a strategy's plan lacks is ignored by it (and reported so per point): not refused, where
    another strategy the knob meets has the field (one none has is refused: test_bad_input_rel23)."""
    code, err, f = _sweep(tmp_path, guarded, {"strategy": ["flexgen", "hexgen"], "plan.max_batch": [4]})
    assert code == 0, err
    code, err, f = _sweep(tmp_path, guarded, {"strategy": ["gpu-only"]}, {"plan.micro_batches": True})
    why = "Input should be a valid integer, got True (gpu-only's plan field)"
    assert (code, err) == (2, f"error: {f}: base.plan.micro_batches: {why}\n")
    code, err, f = _sweep(tmp_path, guarded, {"strategy": ["flexgen"], "plan.wg": ["50"]})
    assert code == 2 and err.startswith(f"error: {f}: grids[0].plan.wg[0]: Input should be a valid number")
    for bad in (True, float("nan")):  # ran as 1 % / passed every range check
        code, err, f = _sweep(tmp_path, guarded, {"strategy": ["flexgen"], "plan.wg": [bad]})
        assert code == 2 and err.startswith(f"error: {f}: grids[0].plan.wg[0]: "), err


@pytest.mark.parametrize("strategy", ["moe-offload", "layer-offload", "gpu-only", "hexgen", "cpu-tp"])
def test_a_plan_knobs_unknown_dtype_is_refused_naming_its_field(tmp_path, capsys, guarded, strategy):
    """moe-offload's plan.weight_dtype: ['x'] was a point's ``KeyError: 'x'`` row (the knobs' check
    had no dtype check); the other strategies' rows said 'params.weight_dtype: unknown dtype'."""
    code, err, f = _sweep(tmp_path, guarded, {"strategy": [strategy], "plan.weight_dtype": ["x"]})
    assert code == 2 and err.startswith(
        f"error: {f}: grids[0].plan.weight_dtype[0]: unknown dtype 'x'; known: "
    )


def test_plan_knobs_of_the_right_type_still_run(tmp_path, guarded):
    from hetsim.sweep.spec import load_spec

    spec = {**SWEEP, "grids": [{"strategy": "all", "plan.micro_batches": [1, 2], "plan.wg": [50, 12.5],
                                "plan.gpu_mem_budget": [6e9], "plan.ranks": [["n0.cpu0"]],
                                "plan.weight_dtype": ["int4", "bf16"]}]}  # fmt: skip
    f = tmp_path / "ok.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert load_spec(f).grids[0]["plan.micro_batches"] == [1, 2]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--no-search", ""],
         "error: --no-search: takes no value (it is a switch), got ''\n"),  # said "compare's argument"
        (["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--allow-compression", ""],
         "error: --allow-compression: takes no value (it is a switch), got ''\n"),
        (["compare", ""], "error: hetsim compare: takes no argument, got ''\n"),
        (["model", "list", ""], "error: hetsim model list: takes no argument, got ''\n"),
    ],
)  # fmt: skip
def test_an_empty_value_after_a_switch_names_the_switch(capsys, guarded, args, line):
    assert guarded(args) == (2, line)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (
            ["compare", "--model", "llama2-7b", "--hw", "mixed-lab", *SMALL, "--strategies", "gpu-only"],
            "--trace",
        ),
        (["plan", "--model", "llama2-7b", "--hw", "mixed-lab", *SMALL, "--strategy", "gpu-only"], "--out"),
    ],
)
def test_an_output_file_that_is_the_root_folder_is_one_line(capsys, guarded, args, flag):
    """``--trace /`` and ``--out /``: ``ValueError: PosixPath('/') has an empty name`` out of main (the
    temporary file is named after the target's name); any other folder said 'Is a directory'."""
    assert guarded([*args, flag, "/"]) == (2, f"error: {flag} /: Is a directory\n")


def test_a_folder_given_as_the_rig_names_the_flag(tmp_path, capsys, guarded):
    """``--hw /`` said '/: is a directory, not a rig file' (a missing path named --hw already)."""
    args = ["compare", "--model", "llama2-7b", "--hw", str(tmp_path), *SMALL]
    assert guarded(args) == (2, f"error: --hw {tmp_path}: is a directory, not a rig file\n")


def test_every_dtype_check_says_the_same_line():
    """One rule (``models.spec.unknown_dtype``) for the flags, a plan file's fields and a sweep's axes
    and plan knobs: a plan file's said '(known: ...)' where the others said '; known: ...'."""
    from hetsim.api import problem
    from hetsim.errors import InputError
    from hetsim.models.spec import DTYPES
    from hetsim.strategies.gpu_only import PipelinePlan
    from hetsim.strategies.plan_io import known_dtype
    from hetsim.sweep.spec import _plan_value_problem

    line = f"unknown dtype 'fp7'; known: {', '.join(DTYPES)}"
    with pytest.raises(InputError) as flag:
        problem("llama2-7b", "mixed-lab", kv_dtype="fp7")
    with pytest.raises(InputError) as plan_file:
        known_dtype("fp7", "kv_dtype")
    assert (flag.value.field, flag.value.message) == ("--kv-dtype", line)
    assert (plan_file.value.field, plan_file.value.message) == ("params.kv_dtype", line)
    assert _plan_value_problem(PipelinePlan, "kv_dtype", "fp7") == line
    assert _plan_value_problem(PipelinePlan, "kv_dtype", "fp16") is None
