"""A seeded fuzz pass over every input kind the command line reads: the shipped examples mutated
(fields dropped, wrong types, NaN/inf/negative/zero/huge numbers, empty files, binary garbage,
truncated text, directories and missing paths for files), each run in-process through ``main``.

Every run must end with 0, 1 (no result: one line with the reason) or 2 (bad input: one line naming
the file or the flag), never a traceback nor an exception out of ``main``. Seeded, so the same
cases run every time; ~50 runs in a few seconds (cheap commands: ``hw show``, ``model show``,
``simulate`` and ``serve`` on a tiny workload, ``sweep --plots-only``, which reads the spec as
``sweep`` does)."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import yaml

from hetsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
SEED = 11
CASES_PER_KIND = 12
SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]
BAD_VALUES = [None, "x", [], {}, math.nan, math.inf, -math.inf, -1, 0, 1e300, True, 2**70, "1 GB"]
WHOLE_FILE = ["empty", "garbage", "nul", "truncate", "dir", "missing"]
TRACE = "arrival_s,prompt_len,output_len\n0.0,16,2\n0.5,32,4\n1.0,8,3\n"
SWEEP = {
    "name": "fz",
    "base": {"prompt_len": 16, "gen_len": 2, "model": "llama2-7b", "rig": "mixed-lab", "batch": 1},
    "grids": [{"strategy": ["gpu-only", "accelerate"]}],
}


def _paths(doc, prefix=()):
    if prefix:
        yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _mutated(rng: random.Random, doc):
    doc = copy.deepcopy(doc)
    path = rng.choice(list(_paths(doc)))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(BAD_VALUES)
    return doc


def _spoil(rng: random.Random, path: Path) -> None:
    """Replace a good file with a bad one (or none, or a directory)."""
    kind = rng.choice(WHOLE_FILE)
    if kind == "empty":
        path.write_text("")
    elif kind == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(200)))
    elif kind == "nul":
        path.write_bytes(b"\x00" * 10)
    elif kind == "truncate":
        text = path.read_text()
        path.write_text(text[: rng.randrange(max(1, len(text)))])
    elif kind == "dir":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()


def _write(rng: random.Random, path: Path, doc, good_text: str) -> None:
    """Mostly a mutated document, sometimes a spoiled file."""
    if rng.random() < 0.8:
        doc = _mutated(rng, doc)
        path.write_text(json.dumps(doc) if path.suffix == ".json" else yaml.safe_dump(doc))
    else:
        path.write_text(good_text)
        _spoil(rng, path)


def _cases(kind: str, tmp: Path, plan_text: str) -> list[tuple[list[str], list[str]]]:
    """(arguments, what a bad-input line may name) for ``CASES_PER_KIND`` mutations of ``kind``."""
    rng = random.Random(f"{SEED}-{kind}")
    cases = []
    for i in range(CASES_PER_KIND):
        d = tmp / f"{kind}{i}"
        d.mkdir()
        if kind == "rig":
            src = rng.choice(sorted((ROOT / "hardware_profiles" / "rigs").glob("*.yaml")))
            f = d / src.name
            _write(rng, f, yaml.safe_load(src.read_text()), src.read_text())
            args = ["hw", "show", str(f)]
        elif kind == "model":
            src = rng.choice(sorted((ROOT / "tests" / "data" / "hf-configs").glob("*/config.json")))
            f = d / "config.json"
            _write(rng, f, json.loads(src.read_text()), src.read_text())
            args = ["model", "show", str(f)]
        elif kind == "plan":
            f = d / "plan.json"
            _write(rng, f, json.loads(plan_text), plan_text)
            args = ["simulate", "--plan", str(f), "--format", "json"]
        elif kind == "trace":
            f = d / "trace.csv"
            rows = [r.split(",") for r in TRACE.splitlines()]
            if rng.random() < 0.8:
                r, c = rng.randrange(len(rows)), rng.randrange(3)
                rows[r][c] = rng.choice(["", "nan", "inf", "-1", "0", "1e300", "x", "1.5", "99999999999"])
                if rng.random() < 0.2:
                    del rows[r][c]
                f.write_text("\n".join(",".join(row) for row in rows) + "\n")
            else:
                f.write_text(TRACE)
                _spoil(rng, f)
            args = ["serve", "--model", "llama2-7b", "--hw", "hexgen-half-budget", "--requests", str(f)]
            args += ["--format", "json"]
        elif kind == "sweep":
            f = d / "fz.yaml"
            _write(rng, f, SWEEP, yaml.safe_dump(SWEEP))
            args = ["sweep", str(f), "--out", str(d / "out"), "--plots-only"]
        else:  # flags
            flag = rng.choice(["--batch", "--prompt-len", "--gen-len", "--gpu-mem-budget", "--objective",
                               "--strategies", "--dtype", "--kv-dtype", "--format"])  # fmt: skip
            value = rng.choice(
                ["0", "-1", "nan", "inf", "1e309", "99999999999999999999", "", "x", "1.5", "\x00"]
            )
            args = [
                "compare",
                "--model",
                "llama2-7b",
                "--hw",
                "mixed-lab",
                *SMALL,
                "--strategies",
                "gpu-only",
            ]
            args += [flag, value]
            cases.append((args, [flag]))
            continue
        cases.append((args, [str(f), f.name]))
    return cases


@pytest.fixture(scope="module")
def plan_text(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    assert main(["plan", "--model", "llama2-7b", "--hw", "mixed-lab", *SMALL, "--strategy", "gpu-only",
                 "--out", str(out), "--format", "json"]) == 0  # fmt: skip
    return out.read_text()


@pytest.mark.parametrize("kind", ["rig", "model", "plan", "trace", "sweep", "flags"])
def test_mutated_inputs_give_a_result_or_one_line_naming_the_file_or_flag(kind, tmp_path, monkeypatch, capsys,
                                                                          plan_text, guarded):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # anything a case writes by a relative name stays here
    capsys.readouterr()
    bad = []
    for args, names in _cases(kind, tmp_path, plan_text):
        code, err = guarded(args)
        lines = err.strip().splitlines()
        one_line = len(lines) == 1 and lines[0].startswith("error: ")
        if code not in (0, 1, 2) or "Traceback" in err or (code in (1, 2) and not one_line):
            bad.append((args, code, err[-300:]))
        elif code == 2 and not any(n and n in lines[0] for n in names):
            bad.append((args, "names neither", names, lines[0]))
    assert not bad, bad


@pytest.mark.parametrize(
    ("spec_change", "field"),
    [
        ({"base": {"model": -1}}, "base.model"),
        ({"base": {"rig": 0.5}}, "base.rig"),
        ({"grids": [{"strategy": ["gpu-only", []]}]}, "grids[0].strategy[1]"),
        ({"grids": [{"strategy": ["gpu-only", {}]}]}, "grids[0].strategy[1]"),
        ({"base": {"objective": 3}}, "base.objective"),
    ],
)
def test_sweep_names_that_are_not_strings_are_bad_input(tmp_path, capsys, spec_change, field, guarded):
    """Found by the fuzz pass: a number or a list where a name goes raised AttributeError/TypeError."""
    spec = copy.deepcopy(SWEEP)
    for key, value in spec_change.items():
        if isinstance(value, dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    f = tmp_path / "fz.yaml"
    f.write_text(yaml.safe_dump(spec))
    code, err = guarded(["sweep", str(f), "--out", str(tmp_path / "out"), "--plots-only"])
    assert (
        code == 2 and err == f"error: {f}: {field}: must be a name (a string), got " + err.split("got ", 1)[1]
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--strategies", "x"], "error: --strategies: unknown strategy 'x'"),
        (["--prompt-len", "99999999999"], "error: --prompt-len: must be <= 1048576"),
        (["--gen-len", "99999999999"], "error: --gen-len: must be <= 1048576"),
        (["--batch", "99999999999"], "error: --batch: must be <= 65536"),
        # found by session 12's fuzz pass (seeds 2-4 of its 900 cases): the name alone or 'model'
        (["--hw", "-1"], "error: --hw -1: unknown rig '-1' (known: "),
        (["--hw=nan"], "error: --hw nan: unknown rig 'nan' (known: "),
        (["--model", "1.5"], "error: --model: unknown model '1.5'; known: "),
        (["--model", ""], "error: --model: unknown model ''; known: "),  # was 'config.json: no such file'
        (["--hw", ""], "error: --hw: unknown rig '' (known: "),
    ],
)
def test_flag_errors_from_deeper_checks_name_the_flag(capsys, args, line, guarded):
    """Found by the fuzz pass: these named the workload's field (prompt_len) or 'strategy'."""
    code, err = guarded(["compare", "--model", "llama2-7b", "--hw", "mixed-lab", *SMALL, *args])
    assert code == 2 and err.startswith(line) and err.count("\n") == 1


def test_an_os_error_on_a_path_is_one_line_naming_it(tmp_path, capsys, guarded):
    """Found by the fuzz pass: ``sweep --out`` on a file printed ``[Errno 20] Not a directory: ...``."""
    f = tmp_path / "file"
    f.write_text("")
    spec = tmp_path / "fz.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    code, err = guarded(["sweep", str(spec), "--out", str(f), "--workers", "1", "--no-plots"])
    assert (code, err) == (2, f"error: --out {f}: is a file, not a folder\n")  # before any point (session 22)


@pytest.mark.parametrize("form", ["spaced", "equals"])
def test_errors_on_a_flags_file_name_the_flag(tmp_path, capsys, form, guarded):
    """``--trace``/``--routing-profile``/``--out`` file errors named the file only (a missing
    folder for a trace read as if an input were missing); now ``error: --trace PATH: ...``."""
    bad = tmp_path / "nowhere" / "t.json"
    routing = tmp_path / "r.yaml"
    routing.write_text("layers: [")

    def flag(name, value):
        return [f"{name}={value}"] if form == "equals" else [name, str(value)]

    base = ["--model", "llama2-7b", "--hw", "mixed-lab", *SMALL]
    cases = [
        (["compare", *base, "--strategies", "gpu-only", *flag("--trace", bad)],
         f"error: --trace {bad}: No such file or directory\n"),
        (["plan", *base, "--strategy", "gpu-only", *flag("--out", tmp_path)],
         f"error: --out {tmp_path}: Is a directory\n"),
        (["compare", "--model", "mixtral-8x7b", "--hw", "mixed-lab", *flag("--routing-profile", routing)],
         f"error: --routing-profile {routing}: malformed YAML at line "),
    ]  # fmt: skip
    for args, line in cases:
        code, err = guarded(args)
        assert code == 2 and err.startswith(line) and err.count("\n") == 1, (args, err)


# Every option of every cheap command, read from click's own parameters (a flag added later is in
# the pass without editing it), given one seeded bad value each: session 19's pass over all of them
# (1,354 runs, 26 values each) found `--trace /` and `--out /` raising ValueError out of main.
OPTION_VALUES = ["0", "-1", "nan", "inf", "1e400", "", "x", "1.5", "99999999999", "\x00", "/", ",", "2.0"]
OPTION_BASE = yaml.safe_load((ROOT / "tests/data/cli-bases.yaml").read_text())  # command -> its line


def _options(words: str) -> list[str]:
    import typer

    from hetsim.cli.commands import app

    command = typer.main.get_command(app)
    for word in words.split():
        command = command.commands[word]  # type: ignore[attr-defined]
    return [p.opts[0] for p in command.params if p.param_type_name == "option" and not p.is_flag]  # type: ignore[attr-defined]


def test_every_option_of_every_command_with_a_bad_value(tmp_path, monkeypatch, capsys, plan_text, guarded):
    monkeypatch.chdir(tmp_path)  # a value that is a file name ('x', 'nan') is written here
    (tmp_path / "plan.json").write_text(plan_text)
    rng = random.Random(f"{SEED}-options")
    bad = []
    for words, base in OPTION_BASE.items():
        if "TRACE" in base:  # serve's line again, with a trace file (the file fuzz's)
            continue
        for flag in _options(words):
            value = rng.choice(OPTION_VALUES)
            args = [str(tmp_path / "plan.json") if a == "PLAN" else a for a in base] + [flag, value]
            code, err = guarded(args)
            lines = err.strip().splitlines()
            if code not in (0, 1, 2) or "Traceback" in err or (code in (1, 2) and not (
                len(lines) == 1 and lines[0].startswith("error: "))):  # fmt: skip
                bad.append((args, code, err[-300:]))
    assert not bad, bad
