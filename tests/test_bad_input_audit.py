"""What session 15's hostile-user audit of every command found (tools/bad_input_audit.py: ~4,400
cases of flags, rig YAML, config.json, plan JSON, trace CSV, sweep YAML, routing profiles, calibrate
and validate flags): each case here gave a traceback, a hang or a silently wrong number before its
fix. Each now ends with exit 2 and one line naming the file (or flag) and the field, within the
alarm that turns a hang into a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

import hetsim.textfiles
from hetsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]
HANG_S = 30  # each case takes well under a second; a hang is a bug


def _one_line(code: int, err: str) -> str:
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# ---- a named pipe nobody writes to: opening it for reading waited for a writer for ever ----------
@pytest.mark.parametrize("kind", ["config", "plan", "trace", "sweep", "routing", "rig"])
def test_a_named_pipe_with_no_writer_is_waited_on_for_a_while_not_for_ever(
    tmp_path, capsys, monkeypatch, kind, guarded
):
    monkeypatch.setattr(hetsim.textfiles, "FIFO_WAIT_S", 0.1)
    fifo = tmp_path / "input"
    os.mkfifo(fifo)
    args = {
        "config": ["model", "show", str(fifo)],
        "plan": ["simulate", "--plan", str(fifo)],
        "trace": ["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--requests", str(fifo)],
        "sweep": ["sweep", str(fifo), "--no-plots", "--out", str(tmp_path / "o")],
        "routing": ["compare", "--model", "mixtral-8x7b", "--hw", "mixed-lab", *SMALL,
                    "--strategies", "moe-offload", "--routing-profile", str(fifo)],
        "rig": ["hw", "show", str(fifo)],  # was "rig file not found"
    }[kind]  # fmt: skip
    assert f"{fifo}: a named pipe nobody wrote to within 0.1 s" in _one_line(*guarded(args, HANG_S))


def test_a_named_pipe_whose_writer_comes_later_is_read_whole(tmp_path, capsys, monkeypatch, guarded):
    """``mkfifo p; hetsim model show p & producer > p``: the producer may open the pipe after hetsim
    did. Before, a pipe with no writer at the first read was read as empty (malformed JSON)."""
    monkeypatch.setattr(hetsim.textfiles, "FIFO_WAIT_S", 60.0)
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    text = (ROOT / "tests/data/hf-configs/Llama-2-7B/config.json").read_text()
    opened = threading.Event()

    def write():  # once hetsim has the pipe open (a non-blocking open for writing needs a reader)
        while not opened.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                opened.wait(0.01)
                continue
            os.close(fd)  # a writer that came and went, writing nothing: hetsim waits on
            opened.set()
        opened.wait(1.0)  # then one that comes later still (the old read ended at once)
        with open(fifo, "w") as f:
            f.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    code, err = guarded(["model", "show", str(fifo), "--format", "json"], HANG_S)
    writer.join(HANG_S)
    assert code == 0, err


def test_a_rig_from_a_pipe_is_read_and_what_is_not_a_rig_file_is_named(tmp_path, capsys, guarded):
    """``hetsim hw show <(cat rig.yaml)`` said "rig file not found" (the loader asked ``is_file``);
    now the pipe is read as every other input is, and a directory or socket is called what it is."""
    import socket

    read, write = os.pipe()
    text = (ROOT / "hardware_profiles/rigs/mixed-lab.yaml").read_text()
    writer = threading.Thread(target=lambda: (os.write(write, text.encode()), os.close(write)), daemon=True)
    writer.start()
    code, err = guarded(["hw", "show", f"/dev/fd/{read}", "--format", "json"], HANG_S)
    writer.join(HANG_S)
    os.close(read)
    assert (code, err) == (0, "")  # the rig read whole: it loads and prints
    assert f"{tmp_path}: is a directory, not a rig file" in _one_line(
        *guarded(["hw", "show", str(tmp_path)], HANG_S)
    )
    sock_path = tmp_path / "rig.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        line = _one_line(*guarded(["hw", "show", str(sock_path)], HANG_S))
    assert f"{sock_path}: is a socket, not a file" in line


def test_an_endless_device_is_refused_not_read_until_memory_runs_out(tmp_path):
    """/dev/zero as a file: before, read whole until MemoryError (here under a 2 GiB address-space
    limit; without one, until the OOM killer came)."""
    resource = pytest.importorskip("resource")
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    limit = (2 * 2**30, 2 * 2**30)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from hetsim.cli import main; sys.exit(main(sys.argv[1:]))",
         "model", "show", "/dev/zero"],
        capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, limit),
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (2, "error: /dev/zero: more than 256 MiB\n")


def test_a_named_pipe_with_a_writer_is_read_whole(tmp_path, capsys, guarded):
    """As ``--model <(cat config.json)`` gives it: the writer's text, waited for."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    text = (ROOT / "tests/data/hf-configs/Llama-2-7B/config.json").read_text()

    def write():
        with open(fifo, "w") as f:  # blocks until the reader opens it
            f.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    code, _ = guarded(["model", "show", str(fifo), "--format", "json"], HANG_S)
    writer.join(HANG_S)
    assert code == 0


# ---- integers longer than Python converts (4300 digits): ValueError out of main ------------------
def test_a_huge_integer_in_a_rig_is_one_line(tmp_path, capsys, guarded):
    rig = tmp_path / "rig.yaml"
    text = (ROOT / "hardware_profiles/rigs/mixed-lab.yaml").read_text()
    rig.write_text(text.replace("count: 2", "count: " + "9" * 5000))
    err = _one_line(*guarded(["hw", "show", str(rig)], HANG_S))
    assert (
        err.startswith(f"error: {rig}: malformed YAML at line ") and "integer longer than 4300 digits" in err
    )


@pytest.mark.parametrize("kind", ["config", "plan"])
def test_a_huge_integer_in_json_is_one_line(tmp_path, capsys, kind, guarded):
    f = tmp_path / "doc.json"
    f.write_text('{"num_hidden_layers": ' + "9" * 5000 + "}")
    args = ["model", "show", str(f)] if kind == "config" else ["simulate", "--plan", str(f)]
    err = _one_line(*guarded(args, HANG_S))
    assert err == f"error: {f}: malformed JSON: an integer longer than 4300 digits\n"


@pytest.mark.parametrize("kind", ["config", "plan"])
def test_a_key_given_twice_in_json_is_refused(tmp_path, capsys, plans, kind, guarded):
    """As YAML's loader does. Before, the last one's value was kept, silently: a plan edited by
    adding a line (the first ``micro_batches`` left above it) ran the second."""
    f = tmp_path / "doc.json"
    if kind == "config":
        text = (ROOT / "tests/data/hf-configs/Llama-2-7B/config.json").read_text()
        f.write_text(text.replace('"vocab_size": ', '"vocab_size": 7, "vocab_size": ', 1))
        args, key = ["model", "show", str(f)], "vocab_size"
    else:
        text = json.dumps(plans["gpu-only"])
        f.write_text(text.replace('"micro_batches": 1', '"micro_batches": 1, "micro_batches": 1', 1))
        args, key = ["simulate", "--plan", str(f)], "micro_batches"
    assert _one_line(*guarded(args, HANG_S)) == f"error: {f}: malformed JSON: duplicate key '{key}'\n"


# ---- flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "line"),
    [
        # OverflowError from the pool's queue semaphore (a C int)
        (["sweep", "SPEC", "--workers", "99999999999"],
         "error: --workers: must be <= 1024 (processes to start), got 99999999999\n"),
        # named the rig alone ("error: bogus: unknown rig"), unlike --hw
        (["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--rate", "1", "--num-requests", "3",
          "--slo-scale", "2", "--slo-ref", "bogus"], "error: --slo-ref bogus: unknown rig 'bogus' (known: "),
        # ValueError from torch.set_num_threads; MemoryError making the ranks
        (["calibrate", "--quick", "--out", "OUT", "--threads", "99999999999"],
         "error: --threads: must be in [1, 4096], got 99999999999\n"),
        (["calibrate", "--quick", "--out", "OUT", "--ranks", "99999999999"],
         "error: --ranks: must be in [1, 1024], got 99999999999\n"),
        # ValueError from int('nan') / int('x')
        (["validate", "--hw", "cputp-4x8575c", "--model", "opt-125m", "--ranks", "nan"],
         "error: --ranks: a comma-separated list of rank counts, got 'nan'\n"),
        (["validate", "--hw", "cputp-4x8575c", "--model", "opt-125m", "--ranks", "1,x"],
         "error: --ranks: a comma-separated list of rank counts, got '1,x'\n"),
        (["validate", "--hw", "cputp-4x8575c", "--model", "opt-125m", "--ranks", "1,99999999999"],
         "error: --ranks: must be in [1, 1024], got 99999999999\n"),
    ],
)  # fmt: skip
def test_absurd_flags_found_by_the_audit(tmp_path, capsys, monkeypatch, args, line, guarded):
    if args[0] in ("calibrate", "validate"):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text((ROOT / "tests/data/audit-sweep.yaml").read_text())  # the audit's own small sweep
    args = [str(spec) if a == "SPEC" else str(tmp_path / "c.yaml") if a == "OUT" else a for a in args]
    assert _one_line(*guarded(args, HANG_S)).startswith(line)


# ---- plans from files: strategies that checked nothing ---------------------------------------------
@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plans")
    docs = {}
    for strategy, model in (
        ("moe-offload", "mixtral-8x7b"),
        ("layer-offload", "llama2-7b"),
        ("gpu-only", "llama2-7b"),
    ):
        path = folder / f"{strategy}.json"
        args = [
            "plan",
            "--model",
            model,
            "--hw",
            "mixed-lab",
            *SMALL,
            "--strategy",
            strategy,
            "--out",
            str(path),
        ]
        assert main(args) == 0
        docs[strategy] = json.loads(path.read_text())
    return docs


@pytest.mark.parametrize(
    ("strategy", "key", "value", "field"),
    [
        ("moe-offload", "sockets", [], "params.sockets: needs at least one CPU socket"),  # ZeroDivisionError
        ("moe-offload", "sockets", ["n0.cpu0", "n0.cpu0"], "params.sockets: a socket is listed twice"),
        ("moe-offload", "sockets", ["n0.gpu0"], "params.sockets[0]: 'n0.gpu0' is not a CPU"),
        ("moe-offload", "gpu_experts", -1, "params.gpu_experts: must be in [0, 8], got -1"),  # ran
        ("moe-offload", "gpu_experts", 9, "params.gpu_experts: must be in [0, 8], got 9"),
        ("layer-offload", "gpu_layers", -1, "params.gpu_layers: must be in [0, 32], got -1"),  # ran
        ("layer-offload", "gpu_layers", 10**30, "params.gpu_layers: must be in [0, 32]"),  # hung
        ("layer-offload", "cpu", "n0.gpu0", "params.cpu: 'n0.gpu0' is not a CPU"),
        ("gpu-only", "micro_batches", 10**30, "params.micro_batches: must be in [1, 1]"),  # ran as 1
    ],
)
def test_tampered_plan_refused(tmp_path, capsys, plans, strategy, key, value, field, guarded):
    doc = json.loads(json.dumps(plans[strategy]))
    doc["params"][key] = value
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(doc))
    assert _one_line(*guarded(["simulate", "--plan", str(bad)], HANG_S)).startswith(f"error: {bad}: {field}")


# ---- trace CSV: values read under the wrong column ---------------------------------------------------
@pytest.mark.parametrize(
    ("text", "line"),
    [
        # the reader kept the second prompt_len column's 5, silently
        ("arrival_s,prompt_len,output_len,prompt_len\n0,16,2,5\n", "prompt_len: column given twice"),
        # the fourth value was dropped, silently
        ("arrival_s,prompt_len,output_len\n0,16,2,9\n", "line 2: more values than the header has columns"),
    ],
)
def test_trace_columns_that_do_not_line_up_are_refused(tmp_path, capsys, text, line, guarded):
    f = tmp_path / "t.csv"
    f.write_text(text)
    args = ["serve", "--model", "llama2-7b", "--hw", "hexgen-half-budget", "--requests", str(f)]
    assert _one_line(*guarded(args, HANG_S)) == f"error: {f}: {line}\n"


def test_a_trace_with_an_extra_column_still_runs(tmp_path, capsys, guarded):
    """Columns beyond the three (a request id) are left alone."""
    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_len,output_len,id\n0,16,2,a\n0.5,8,3,b\n")
    code, _ = guarded(
        ["serve", "--model", "llama2-7b", "--hw", "hexgen-half-budget", "--requests", str(f)], HANG_S
    )
    assert code == 0


# ---- sweep YAML: names that become paths ---------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "field"),
    [({"name": "../../escaped"}, "name"),
     ({"plots": [{"kind": "line", "x": "batch", "name": "../p"}]}, "plots[0].name")],
)  # fmt: skip
def test_a_sweep_name_that_is_a_path_is_refused(tmp_path, capsys, doc, field, guarded):
    """The sweep's name is its folder under ``out``, a plot's its file: before, "../../escaped"
    wrote the results two folders above the spec's ``out``."""
    base = {"prompt_len": 16, "gen_len": 2, "model": "llama2-7b", "rig": "mixed-lab", "batch": 1}
    spec = tmp_path / "a" / "b" / "s.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text(yaml.safe_dump({"name": "n", "base": base, "grids": [{"strategy": ["gpu-only"]}], **doc}))
    err = _one_line(*guarded(["sweep", str(spec), "--workers", "1"], HANG_S))
    assert err.startswith(
        f"error: {spec}: {field}: must be a plain name (no path separator, not '.' or '..'), got "
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--model", "llama2-7b", "--hw", "mixed-lab", *SMALL, "--strategies", "gpu-only",
         "--trace="],
        ["compare", "--model", "mixtral-8x7b", "--hw", "mixed-lab", *SMALL, "--strategies", "moe-offload",
         "--routing-profile", ""],
        ["plan", "--model", "llama2-7b", "--hw", "mixed-lab", *SMALL, "--strategy", "gpu-only", "--out", ""],
    ],
)  # fmt: skip
def test_an_empty_path_names_its_flag(tmp_path, monkeypatch, guarded, args):
    """``--trace ''`` read as Path('') = '.': "error: .: Is a directory", naming neither the flag nor
    what was wrong (the audit's check that each line names its flag found it)."""
    monkeypatch.chdir(tmp_path)
    flag = next(
        a for a in args if a.startswith("--") and a.rstrip("=") in ("--trace", "--routing-profile", "--out")
    )
    assert f"error: {flag.rstrip('=')}: is empty" in _one_line(*guarded(args, HANG_S))


@pytest.mark.parametrize("field", ["weight_dtype", "kv_dtype"])
def test_an_unknown_dtype_in_a_plan_names_its_field(tmp_path, capsys, guarded, field):
    """layer-offload and moe-offload do not check dtypes themselves: the footprint's KeyError was
    "params: unknown name 'x'"; now the field that gave it."""
    plan = tmp_path / "p.json"
    args = ["plan", "--model", "llama2-7b", "--hw", "mixed-lab", *SMALL, "--strategy", "layer-offload"]
    assert guarded([*args, "--out", str(plan)], HANG_S)[0] == 0
    doc = json.loads(plan.read_text())
    doc["params"][field] = "fp7"
    plan.write_text(json.dumps(doc))
    line = _one_line(*guarded(["simulate", "--plan", str(plan)], HANG_S))
    assert f"{plan}: params.{field}: unknown name 'fp7'" in line
