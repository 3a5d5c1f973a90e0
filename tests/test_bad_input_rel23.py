"""Session 23's bad-input fixes: each case here named the wrong thing, or no file, or was taken,
before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SERVE = ["serve", "--model", "llama2-7b", "--hw", "hexgen-homogeneous"]
SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
@pytest.mark.parametrize(
    "args",
    [
        ["hw", "list"],  # a small output: the failure is at the flush
        ["compare", "--model", "opt-6.7b", "--hw", "flexgen-t4", "--strategies", "flexgen", *SMALL,
         "--format", "json"],
    ],
)  # fmt: skip
def test_a_full_disk_on_standard_output_is_named(args):
    """``hetsim compare > /dev/full`` said "error: [Errno 28] No space left on device": no file named."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "hetsim.cli", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert (proc.returncode, proc.stderr) == (2, "error: standard output: No space left on device\n")


def test_standard_output_is_the_callers_again_after_main(capsys):
    from hetsim.cli import main

    before = sys.stdout
    assert main(["hw", "list", "--format", "json"]) == 0
    assert sys.stdout is before and json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "head",
    [
        "arrival_s, prompt_len, output_len",
        " arrival_s ,prompt_len , output_len",
        "arrival_s,prompt_len,output_len",
    ],
)
def test_a_trace_header_with_spaces_is_read(tmp_path, capsys, guarded, head):
    """``arrival_s, prompt_len, output_len`` (a spreadsheet's export, or typed with spaces) was refused:
    "prompt_len: missing column"; its values' spaces were already dropped."""
    trace = tmp_path / "t.csv"
    trace.write_text(f"{head}\n0, 16, 4\n0.5, 32, 8\n")
    from hetsim.cli import main

    assert main([*SERVE, "--requests", str(trace), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 2


def test_a_trace_column_given_twice_with_a_space_is_still_refused(tmp_path, capsys, guarded):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_len,output_len, arrival_s\n0,16,4,1\n")
    assert guarded([*SERVE, "--requests", str(trace)]) == (
        2,
        f"error: {trace}: arrival_s: column given twice\n",
    )


WHY = "at most 100000 (more requests do not sharpen the percentiles, only lengthen the run)"


@pytest.mark.parametrize(
    ("rate", "duration", "flag", "line"),
    [
        ("1e308", "1", "--rate", f"1e+308 requests/s x 1 s = 1e+308 requests; {WHY}"),
        ("1e6", "1", "--rate", f"1e+06 requests/s x 1 s = 1e+06 requests; {WHY}"),
        ("1", "1e9", "--duration", f"1 requests/s x 1e+09 s = 1e+09 requests; {WHY}"),
    ],
)
def test_too_many_poisson_requests_blame_the_absurd_flag(capsys, guarded, rate, duration, flag, line):
    """``--rate 1e308 --duration 1`` said "--duration: rate x duration = 1e+308 requests": the duration
    is one second; the rate is what no duration fits."""
    args = [*SERVE, "--rate", rate, "--duration", duration]
    assert guarded(args) == (2, f"error: {flag}: {line}\n")


@pytest.mark.parametrize(("value", "code"), [(10**30, 2), (65537, 2), (0, 2), (65536, 0), (8, 0)])
def test_hexgen_plan_max_batch_is_capped_as_the_flag_is(plan_file, capsys, guarded, value, code):
    """A HexGen plan's ``max_batch`` of 10**30 was taken (``--max-batch`` stops at 2**16, its reason
    ``workload.WHY_MAX['batch']``)."""
    f = plan_file("hexgen", "llama2-7b", "hexgen-homogeneous", max_batch=value)
    why = "larger batches gain no throughput and their KV cache fits no rig"
    line = f"error: {f}: params.max_batch: must be in [1, 65536] ({why}), got {value}\n"
    assert guarded(["simulate", "--plan", f, "--format", "json"]) == (code, line if code else "")


def test_a_plan_missing_a_parameter_may_be_from_an_older_hetsim(plan_file, capsys, guarded):
    """``hetsim_plan`` is still 1 though parameters were added: the line says the file may predate one."""
    f = Path(plan_file("flexgen", "opt-6.7b", "flexgen-t4"))
    doc = json.loads(f.read_text())
    del doc["params"]["cpu_attention"]
    f.write_text(json.dumps(doc))
    code, err = guarded(["simulate", "--plan", str(f)])
    assert code == 2 and "one from an older hetsim may predate the parameter" in err
    assert err.startswith(f"error: {f}: params.cpu_attention: missing;")


# ---- the hunt ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["plan", "--model", "opt-6.7b", "--hw", "flexgen-t4", "--strategy", "all", *SMALL], "--out"),
        (["compare", "--model", "opt-6.7b", "--hw", "flexgen-t4", *SMALL], "--trace"),
    ],
)
def test_an_output_in_a_missing_folder_is_refused_before_the_work(
    tmp_path, capsys, guarded, monkeypatch, args, flag
):
    """``plan --out new/p.json`` searched every strategy, printed the table, then failed to write
    ("No such file or directory"); ``compare --trace new/t.json`` likewise. calibrate, sweep and validate
    make their folders; these make none, so the write's line now comes before the search."""

    def searched(*a: object, **k: object) -> None:
        raise AssertionError("searched before the output was checked")

    monkeypatch.setattr("hetsim.api.compare", searched)
    target = tmp_path / "new" / "x.json"
    assert guarded([*args, flag, str(target)]) == (2, f"error: {flag} {target}: No such file or directory\n")
    assert not target.parent.exists()


@pytest.mark.parametrize("last", [True, False])
def test_calibrate_fit_into_a_missing_folder_is_refused_before_the_fit(tmp_path, capsys, guarded, last):
    """``calibrate --fit`` makes no folder: refused at once wherever ``--fit`` stands (given last, it was
    taken for calibrate's measuring, which makes its folder, and the report was read first)."""
    rig = str(Path(__file__).parents[1] / "hardware_profiles/rigs/flexgen-t4.yaml")
    report = tmp_path / "r.json"
    report.write_text("{}")  # no report: read after the output's check
    target = tmp_path / "new" / "c.yaml"
    rest = ["--profile", rig, "--out", str(target), str(report)]
    args = ["calibrate", *rest, "--fit"] if last else ["calibrate", "--fit", *rest]
    assert guarded(args) == (2, f"error: --out {target}: No such file or directory\n")


def test_folder_making_commands_still_make_their_folders(tmp_path, capsys, guarded):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: a\nbase: {rig: flexgen-t4, batch: 1, prompt_len: 16, gen_len: 2}\n"
                    "grids:\n  - {model: [opt-6.7b], strategy: [flexgen]}\n")  # fmt: skip
    out = tmp_path / "a" / "b"
    assert guarded(["sweep", str(spec), "--out", str(out), "--no-plots"])[0] == 0
    assert (out / "results").is_dir()


NEWER = "format 2 is newer than the one this hetsim reads (1): a newer hetsim may have written it"


@pytest.mark.parametrize(("version", "why"), [(2, NEWER), (0, "Input should be 1")])
def test_a_plan_of_a_newer_format_says_so(plan_file, capsys, guarded, version, why):
    """``"hetsim_plan": 2`` said "hetsim_plan: Input should be 1", as a typo would."""
    f = Path(plan_file("flexgen", "opt-6.7b", "flexgen-t4"))
    f.write_text(json.dumps({**json.loads(f.read_text()), "hetsim_plan": version}))
    assert guarded(["simulate", "--plan", str(f)]) == (2, f"error: {f}: hetsim_plan: {why}\n")


@pytest.mark.parametrize("value", ["1e30", "1.5", "0"])
def test_an_efficiency_out_of_range_names_its_fraction_bound(tmp_path, capsys, guarded, value):
    """An efficiency of 1e30 said "must be in [0, 1e+18] (SI units; physical bounds)" (Sourced's
    generic bound, checked first), 1.5 "must be a fraction in [0.001, 1]": now one range, the fraction's."""
    rig = tmp_path / "rig.yaml"
    text = (Path(__file__).parents[1] / "hardware_profiles/rigs/flexgen-t4.yaml").read_text()
    rig.write_text(text.replace("value: 0.48\n", f"value: {value}\n", 1))
    code, err = guarded(["compare", "--model", "opt-6.7b", "--hw", str(rig), *SMALL])
    why = "must be in [0.001, 1] (a fraction of the peak achieved)"
    assert (code, err) == (
        2,
        f"error: {rig}: nodes[0].cpus[0].efficiency.memory: {why}, got {float(value):g}\n",
    )


def test_calibrate_fit_names_a_folder_and_the_missing_default_profile(tmp_path, capsys, guarded, monkeypatch):
    """``calibrate --fit DIR`` said "DIR: no such file"; with no --profile and no --out file there it said
    "calibrated.yaml: rig file not found", naming neither flag."""
    pytest.importorskip("torch")  # the validate extra (README command 2 installs dev only)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    report = tmp_path / "r.json"
    report.write_text("{}")
    rig = str(Path(__file__).parents[1] / "hardware_profiles/rigs/flexgen-t4.yaml")
    assert guarded(["calibrate", "--fit", "runs", "--profile", rig, "--out", "x.yaml"]) == (
        2,
        "error: runs: is a folder, not a file\n",
    )
    why = "no profile to refit: --profile not given, so it is --out's file, which is not there"
    assert guarded(["calibrate", "--fit", str(report)]) == (2, f"error: --out calibrated.yaml: {why}\n")


def test_a_plans_type_errors_name_list_items_as_its_checks_do(plan_file, capsys, guarded):
    """pydantic's errors named ``params.replicas.0.stages.0.layers`` where the plan's own checks name
    ``params.replicas[0].stages[0].devices`` (and rig files ``nodes[0]``): one style now."""
    f = Path(plan_file("hexgen", "llama2-7b", "hexgen-homogeneous"))
    doc = json.loads(f.read_text())
    doc["params"]["replicas"][0]["stages"][0]["layers"] = "32"
    f.write_text(json.dumps(doc))
    code, err = guarded(["simulate", "--plan", str(f)])
    assert code == 2 and err.startswith(f"error: {f}: params.replicas[0].stages[0].layers: "), err


SPEC = "name: a\nbase: {rig: flexgen-t4, batch: 1, prompt_len: 16, gen_len: 2}\ngrids:\n"


@pytest.mark.parametrize("knob", ["gpu_batch_size", "num_gpu_batches"])
def test_a_plan_knob_past_64_bits_is_refused_before_the_points_run(tmp_path, capsys, guarded, knob):
    """``plan.gpu_batch_size: [10**26]`` ran its point, then ended the sweep in a pyarrow
    ``OverflowError`` traceback (exit 1) writing the results table's int64 column."""
    spec, out = tmp_path / "s.yaml", tmp_path / "out"
    spec.write_text(f"{SPEC}  - {{model: [opt-6.7b], strategy: [flexgen], plan.{knob}: [1, {10**26}]}}\n")
    why = "must be within +-(2**63 - 1) (the results table's 64-bit integers)"
    assert guarded(["sweep", str(spec), "--out", str(out), "--no-plots"]) == (
        2,
        f"error: {spec}: grids[0].plan.{knob}[1]: {why}, got {10**26}\n",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("grid", "base", "field", "names", "knob"),
    [
        ("strategy: [flexgen], plan.wgg: [10, 20]", "", "grids[0].plan.wgg", "flexgen", "wgg"),
        ("strategy: [flexgen, gpu-only]", ", plan.max_batch: 4", "base.plan.max_batch", "flexgen, gpu-only",
         "max_batch"),
    ],
)  # fmt: skip
def test_a_plan_knob_no_strategy_it_meets_has_is_refused(
    tmp_path, capsys, guarded, grid, base, field, names, knob
):
    """``plan.wgg: [10, 20]`` (a typo of wg) ran every point twice with the knob ignored, noted only in
    each row's ``ignored_knobs``: a sweep axis that changes nothing."""
    spec, out = tmp_path / "s.yaml", tmp_path / "out"
    spec.write_text(
        "name: a\nbase: {rig: flexgen-t4, batch: 1, prompt_len: 16, gen_len: 2" + base + "}\n"
        f"grids:\n  - {{model: [opt-6.7b], {grid}}}\n"
    )
    why = f"no plan of the strategies it meets ({names}) has a field {knob!r}"
    assert guarded(["sweep", str(spec), "--out", str(out), "--no-plots"]) == (
        2,
        f"error: {spec}: {field}: {why}\n",
    )
    assert not out.exists()


@pytest.mark.parametrize(("row", "field"), [("0,16", "output_len"), ("0", "prompt_len")])
def test_a_trace_row_short_of_values_says_so(tmp_path, capsys, guarded, row, field):
    """A row with fewer values than the header said "output_len: line 2: not a positive integer: None"."""
    trace = tmp_path / "t.csv"
    trace.write_text(f"arrival_s,prompt_len,output_len\n0,16,4\n{row}\n")
    assert guarded([*SERVE, "--requests", str(trace)]) == (
        2,
        f"error: {trace}: {field}: line 3: fewer values than the header has columns\n",
    )


def test_a_path_of_bytes_no_utf8_is_shown_as_its_bytes(tmp_path, capsys, guarded):
    """A file name with the byte 0xff (Python's U+DCFF) printed as "\\udcff.json", a name no file has."""
    missing = str(tmp_path / "ünï\udcff.json")
    shown = str(tmp_path / "ünï") + "\\xff.json"
    assert guarded(["simulate", "--plan", missing]) == (2, f"error: {shown}: no such file\n")
