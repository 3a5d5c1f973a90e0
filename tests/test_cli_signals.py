"""Ctrl-C (SIGINT) and SIGTERM stop every long command with one line and 128 + the signal's number
(130, 143: the sweep's convention, tests/test_sweep.py), no traceback, no hang, no worker left
behind. Real signals to real processes; the only clock is a generous kill timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# ~100 CPU s if left alone (every decode step simulated, in compare's forked workers)
LONG_COMPARE = ("--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "64", "--gen-len", "4000")
KILL_TIMEOUT_S = 120
# compare forks its search workers only with two usable cores (one: it searches serially, in-process)
FORKS_WORKERS = pytest.mark.skipif(
    (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) < 2,
    reason="compare searches serially on one core: no workers to wait for",
)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hetsim.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killpg reaches its workers, as Ctrl-C does
    )


def _wait_for(proc: subprocess.Popen[str], ready) -> None:
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be interrupted: {proc.stderr.read()}"
    assert ready(), "never got ready to be interrupted"


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        _, err = proc.communicate(timeout=KILL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"did not exit within {KILL_TIMEOUT_S} s of the signal")
    return err


@FORKS_WORKERS
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc for the worker pids")
@pytest.mark.parametrize(
    ("sig", "group", "code"),
    [("SIGINT", True, 130), ("SIGTERM", True, 143), ("SIGINT", False, 130), ("SIGTERM", False, 143)],
    ids=["ctrl-c", "sigterm-group", "sigint-parent-only", "sigterm-parent-only"],
)
def test_signal_stops_compare_and_its_workers(sig, group, code):
    """``group``: the whole process group (a terminal's Ctrl-C), else the parent only (``kill PID``):
    the parent then ends its workers itself, or the pool's shutdown would wait for their searches."""
    proc = _start("compare", *LONG_COMPARE, "--exact", "--format", "json")
    _wait_for(proc, lambda: len(_children(proc.pid)) >= 2)
    workers = _children(proc.pid)
    (os.killpg if group else os.kill)(proc.pid, getattr(signal, sig))
    err = _finish(proc)
    assert proc.returncode == code, err
    assert err == f"interrupted by {sig}: hetsim compare stopped (it keeps no partial results)\n"
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, workers)), "a search worker outlived its compare"


# A command that loses the KeyboardInterrupt (as when the signal lands in a callback whose exceptions
# Python only prints: logging's at-fork hook while compare's pool forks; compare then searched on,
# serially, for minutes) and carries on.
_LOST_INTERRUPT = """
import signal, sys, time
from hetsim.cli import commands

def swallowing(argv):
    try:
        signal.raise_signal(signal.SIGTERM)
    except KeyboardInterrupt:
        pass
    time.sleep(600)
    return 0

commands._main = swallowing
sys.exit(commands.main(["compare"], process=True))
"""


def test_a_lost_interrupt_still_ends_the_command():
    proc = subprocess.Popen([sys.executable, "-c", _LOST_INTERRUPT], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    err = _finish(proc)
    assert proc.returncode == 143
    assert err == "interrupted by SIGTERM: hetsim compare stopped (it keeps no partial results)\n"


# The signal lands in an at-fork hook while a pool forks its workers (logging registers one):
# Python can only print an exception raised there ("Exception ignored in ...", a traceback), and
# the worker being forked is in no list yet when the raise arrives.
_SIGNAL_WHILE_FORKING = """
import concurrent.futures, multiprocessing, os, signal, sys, time
from hetsim.cli import commands

def forking(argv):
    os.register_at_fork(after_in_parent=lambda: signal.raise_signal(signal.SIGTERM) if not fired
                        and not fired.append(1) else None)
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    with pool:
        pool.submit(time.sleep, 600).result()
    return 0

fired = []
commands._main = forking
sys.exit(commands.main(["compare"], process=True))
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc for the worker pids")
def test_a_signal_while_a_worker_forks_is_not_lost_and_leaves_no_worker():
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_WHILE_FORKING], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    err = _finish(proc)  # a worker left alive would hold stderr open: this would time out
    assert proc.returncode == 143
    assert err == "interrupted by SIGTERM: hetsim compare stopped (it keeps no partial results)\n"


def test_signal_during_a_command_in_process_returns_130_and_restores_handlers(monkeypatch, capsys):
    """In-process (as tests call ``main``): the handler is the CLI's only while the command runs."""
    from hetsim.cli import commands

    before = signal.getsignal(signal.SIGINT)

    def interrupted(argv):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("not reached: the signal unwinds the command")

    monkeypatch.setattr(commands, "_main", interrupted)
    assert commands.main(["simulate", "--plan", "p.json"]) == 143
    assert capsys.readouterr().err == (
        "interrupted by SIGTERM: hetsim simulate stopped (it keeps no partial results)\n"
    )
    assert signal.getsignal(signal.SIGINT) is before


def test_an_interrupted_plan_out_keeps_the_old_file_whole(tmp_path, monkeypatch, capsys):
    """``--out`` is written beside and renamed over: a run stopped while writing (here, at the
    rename) leaves the previous plan as it was and no temporary file; before, the file was written
    in place (a stop or a second run writing the same path left a mix)."""
    import hetsim.textfiles
    from hetsim.cli import main

    out = tmp_path / "plan.json"
    out.write_text("the previous plan\n")
    args = ["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--strategy", "gpu-only", "--out", str(out)]

    def stopped(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(hetsim.textfiles.os, "replace", stopped)
        assert main(args) == 130
    assert out.read_text() == "the previous plan\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    assert main(args) == 0 and json.loads(out.read_text())["strategy"] == "gpu-only"
    plain = tmp_path / "plain"
    plain.write_text("")
    assert out.stat().st_mode == plain.stat().st_mode  # the mode a plain open gives
    capsys.readouterr()


_LIBRARY_CALLER = """
import os, signal, subprocess, sys, threading, time
from pathlib import Path
from hetsim.cli import main
signal.signal(signal.SIGINT, signal.default_int_handler)  # not one ignored, inherited from a background job
own = subprocess.Popen(["sleep", "120"])  # the caller's own child, there before the command
def ctrl_c():  # once compare's two workers are forked (the caller's child makes three)
    kids = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    while len(kids.read_text().split()) < 3:
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=ctrl_c, daemon=True).start()
code = main(["compare", *sys.argv[1:]])
time.sleep(0.3)
print(code, own.poll(), signal.getsignal(signal.SIGINT) is signal.default_int_handler)
own.kill()
"""


@FORKS_WORKERS
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc for the worker pids")
def test_a_stopped_command_kills_its_workers_not_the_callers_children():
    """``main`` called in a process that has children of its own (a notebook, a script driving
    hetsim): Ctrl-C stops the command and kills the workers it forked, and leaves the caller's
    child running (every child the kernel listed was SIGKILLed before)."""
    proc = subprocess.run([sys.executable, "-c", _LIBRARY_CALLER, *LONG_COMPARE], capture_output=True,
                          text=True, timeout=KILL_TIMEOUT_S)  # fmt: skip
    assert proc.stdout.split() == ["130", "None", "True"], (proc.stdout, proc.stderr[-1500:])
    assert proc.stderr == "interrupted by SIGINT: hetsim compare stopped (it keeps no partial results)\n"


def test_the_line_is_said_once_however_many_ask(capsys):
    """The grace timer's ``_leave`` and the main flow (unstuck by the timer's kill of a worker forked
    after the first kill) can both reach the line: CI once printed it twice."""
    import threading

    from hetsim.cli.stop import Stop

    stop = Stop("hetsim compare")
    stop.signum = signal.SIGTERM
    threads = [threading.Thread(target=stop.say) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (
        capsys.readouterr().err
        == "interrupted by SIGTERM: hetsim compare stopped (it keeps no partial results)\n"
    )


# compare with two workers, FlexGen's search never ending; Ctrl-C to the whole group once the
# parent has a job's results (from the pool's thread, as they arrive)
_STOP_AFTER_A_JOB = """
import os, signal, sys, time
from hetsim import api
from hetsim.cli import commands
real_best, real_scatter = api.best_result, api.forked.scatter
def best(s, *a, **k):
    if s.name == "flexgen":
        time.sleep(600)
    return real_best(s, *a, **k)
def scatter(pools, calls, keep, **kw):
    def kept(i, result):  # the signal once a job's results are kept
        keep(i, result)
        if not sent:
            sent.append(1)
            os.killpg(os.getpgrp(), signal.SIGINT)
    return real_scatter(pools, calls, kept, **kw)
sent = []
api.best_result, api.forked.scatter = best, scatter
commands._cores = lambda: 2
sys.exit(commands.main(["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--batch", "1",
                        "--prompt-len", "16", "--gen-len", "2", *sys.argv[1:]]))
"""


@FORKS_WORKERS
@pytest.mark.parametrize("fmt", ["json", "table"])
def test_a_stopped_compare_prints_the_strategies_that_finished(fmt, signalled):
    """Ctrl-C after some strategies' searches ended: their rows, ranked, marked partial with the
    names of those that did not finish, exit 130 (before: nothing printed, "keeps no partial
    results")."""
    returncode, out, err = signalled(_STOP_AFTER_A_JOB, ["--format", fmt])
    assert returncode == 130, err
    line = "interrupted by SIGINT: hetsim compare stopped (the rows of the "
    assert err.startswith(line) and err.count("\n") == 1 and "marked partial; not finished: " in err, err
    unfinished = err.split("not finished: ")[1].rstrip(")\n").split(", ")
    assert "flexgen" in unfinished
    if fmt == "json":
        doc = json.loads(out)
        assert doc["partial"] == {"stopped_by": "SIGINT", "not_finished": unfinished}
        done = [r["strategy"] for r in doc["results"]]
        assert done and not set(done) & set(unfinished)
        assert f"the {len(done)} finished strateg" in err
    else:
        assert "PARTIAL: stopped by SIGINT, not finished: " + ", ".join(unfinished) in " ".join(out.split())


def test_a_stopped_serial_compare_prints_what_finished_in_each_format(monkeypatch, capsys):
    """One core (the search runs here, strategy by strategy): SIGTERM during HeteGen's search keeps
    the strategies searched before it, ranked as compare ranks them."""
    from hetsim import api
    from hetsim.cli import commands

    args = ["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--batch", "1", "--prompt-len", "16",
            "--gen-len", "2"]  # fmt: skip
    assert commands.main([*args, "--format", "json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    real = api.best_result

    def best(s, *a, **k):
        if s.name == "hetegen":
            signal.raise_signal(signal.SIGTERM)
        return real(s, *a, **k)

    monkeypatch.setattr(commands, "_cores", lambda: 1)
    monkeypatch.setattr(api, "best_result", best)
    names = [s.name for s in api.all_strategies()]
    before, after = names[: names.index("hetegen")], names[names.index("hetegen") :]
    assert commands.main([*args, "--format", "json"]) == 143
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["partial"] == {"stopped_by": "SIGTERM", "not_finished": after}
    assert doc["results"] == [r for r in whole["results"] if r["strategy"] in before]  # same rows, order
    assert captured.err == (
        f"interrupted by SIGTERM: hetsim compare stopped (the rows of the {len(before)} finished "
        f"strategies are printed, marked partial; not finished: {', '.join(after)})\n"
    )
    assert commands.main([*args, "--format", "csv"]) == 143
    rows = capsys.readouterr().out.splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [r["strategy"] for r in doc["results"]]


def test_a_plan_stopped_after_writing_out_says_the_file_is_kept(tmp_path, monkeypatch, capsys):
    """Stopped after ``--out`` was written (here, as the table prints): the line says the file is
    whole and kept (before: "it keeps no partial results")."""
    from hetsim.cli import commands

    out = tmp_path / "plan.json"

    def stopped(*a, **k):
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(commands, "out", lambda: type("C", (), {"print": stopped})())
    args = ["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--strategy", "gpu-only", "--out", str(out)]
    assert commands.main(args) == 130
    assert json.loads(out.read_text())["strategy"] == "gpu-only"
    assert capsys.readouterr().err == (
        f"interrupted by SIGINT: hetsim plan stopped (its plan, written whole to {out} before the stop, "
        "is kept)\n"
    )


def test_a_third_signal_while_leaving_does_not_hang(monkeypatch):
    """A second signal ends the process (``_leave``: the line, then ``os._exit``); a third landing
    while the line is written waited for the lock the second held, forever (found by the fuzz
    pass: signals repeated from a pool's thread)."""
    import threading

    from hetsim.cli import stop as stop_module

    stop = stop_module.Stop("hetsim compare")
    stop.armed, stop.signum = True, signal.SIGINT
    written = []

    class Stderr:
        def write(self, text):
            if not written:
                written.append(text)
                stop._handle(signal.SIGINT, None)  # the third signal, inside the write

        def flush(self):
            pass

    class Exited(Exception):
        pass

    def exit_(code):
        raise Exited(code)

    monkeypatch.setattr(stop_module.sys, "stderr", Stderr())
    monkeypatch.setattr(stop_module.os, "_exit", exit_)
    monkeypatch.setattr(stop_module, "kill_children", lambda spare=frozenset(): None)
    ended = []

    def second():
        try:
            stop._handle(signal.SIGINT, None)
        except Exited as exc:
            ended.append(exc.args)

    t = threading.Thread(target=second, daemon=True)
    t.start()
    t.join(KILL_TIMEOUT_S)
    assert not t.is_alive(), "the third signal waited for the lock held by the second's line"
    assert ended == [(130,)] and written == [stop.line()]


# ``python -m hetsim.cli`` (as the console script runs), Ctrl-C while the CLI imports WHEN
_CTRL_C_WHILE_IMPORTING = """
import importlib.abc, runpy, signal, sys
WHEN = sys.argv[1]
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == WHEN:
            signal.raise_signal(signal.SIGINT)
sys.meta_path.insert(0, Hook())
sys.argv = ["hetsim", "model", "list"]
runpy.run_module("hetsim.cli", run_name="__main__")
"""

# ... and once ``main`` has returned, the command's output printed
_CTRL_C_AFTER_THE_OUTPUT = """
import runpy, signal, sys
from hetsim.cli import commands
real = commands.main
def main(argv=None, **kw):
    code = real(argv, **kw)
    signal.raise_signal(signal.SIGINT)
    return code
commands.main = main
sys.argv = ["hetsim", "model", "list", "--format", "json"]
runpy.run_module("hetsim.cli", run_name="__main__")
"""


@pytest.mark.parametrize("when", ["typer", "hetsim.cli.commands"])
def test_ctrl_c_during_the_start_up_imports_is_one_line(when):
    """Before ``main`` (~0.25 s of imports) Ctrl-C printed Python's traceback."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_IMPORTING, when], capture_output=True,
                          text=True, timeout=KILL_TIMEOUT_S)  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130,
        "",
        "interrupted by SIGINT: hetsim stopped while starting\n",
    )


def test_ctrl_c_after_the_output_prints_no_traceback():
    """After the command's output (``main`` returned) Ctrl-C printed Python's traceback; now the
    output stays whole and the process ends with 130, silently."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_AFTER_THE_OUTPUT], capture_output=True, text=True,
                          timeout=KILL_TIMEOUT_S)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (130, "")
    assert "llama2-70b" in [m["name"] for m in json.loads(proc.stdout)]


# A script calling ``main`` whose command swallows the first interrupt and carries on (a lost raise),
# then gets a second signal: the script's process must live on
_LIBRARY_SECOND_SIGNAL = """
import signal, sys, time
from hetsim.cli import commands, stop

def swallowing(argv):
    try:
        signal.raise_signal(signal.SIGTERM)
    except KeyboardInterrupt:
        pass
    time.sleep(2 * stop.STOP_GRACE_S)  # past the grace period
    signal.raise_signal(signal.SIGINT)  # the second signal
    return 0

stop.STOP_GRACE_S = 0.2
commands._main = swallowing
try:
    code = commands.main(["compare"])
except KeyboardInterrupt:
    code = "raised"
print(code, "the caller's process lives on")
"""


def test_main_in_a_callers_process_never_ends_it():
    """The grace period and a second signal ``os._exit`` the process only when it is hetsim's own
    (the console script); a script or notebook calling ``main`` was ended with it."""
    proc = subprocess.run([sys.executable, "-c", _LIBRARY_SECOND_SIGNAL], capture_output=True, text=True,
                          timeout=KILL_TIMEOUT_S)  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "143 the caller's process lives on\n"), proc.stderr
    assert proc.stderr == "interrupted by SIGTERM: hetsim compare stopped (it keeps no partial results)\n"


# A sweep whose plots are drawn by two forked workers: the one drawing plot 0 sends Ctrl-C to the
# whole group, and from then on every plot takes a minute to draw
_CTRL_C_WHILE_DRAWING = """
import os, signal, sys, time
from pathlib import Path
import hetsim.sweep.plots as plots
from hetsim.cli.commands import main
real, flag = plots._draw, Path(sys.argv[1]) / "stopped"
def draw(spec, df, folder, k):
    if k == 0 and not flag.exists():
        flag.write_text("")
        os.killpg(0, signal.SIGINT)
    if flag.exists():
        time.sleep(60)
    return real(spec, df, folder, k)
plots._draw = draw
sys.exit(main(sys.argv[2:], process=True))
"""


@pytest.mark.parametrize("plots_only", [False, True])
def test_ctrl_c_while_plots_are_drawn_stops_the_drawing_workers(tmp_path, plots_only):
    """The forked plot workers inherited the sweep's handler: Ctrl-C raised in each (a plot's
    exception), they drew on through the queue, and the sweep waited for every plot; now they
    ignore it and the sweep terminates them. No plot is left half written."""
    import yaml

    spec = tmp_path / "fz.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "fz",
        "base": {"prompt_len": 16, "gen_len": 2, "model": "llama2-7b", "rig": "mixed-lab", "batch": 1},
        "grids": [{"strategy": ["gpu-only", "accelerate"], "gen_len": [2, 4]}],
        "plots": [{"kind": "line", "name": n, "x": "gen_len", "metric": m}
                  for n, m in zip("abcdef", ["e2e_s", "ttft_s", "tpot_s"] * 2, strict=True)],
    }))  # fmt: skip
    out = tmp_path / "out"
    args = ["sweep", str(spec), "--out", str(out), "--workers", "2"]
    if plots_only:
        done = subprocess.run([sys.executable, "-m", "hetsim.cli", *args, "--no-plots"], capture_output=True,
                              text=True, timeout=KILL_TIMEOUT_S)  # fmt: skip
        assert done.returncode == 0, done.stderr
        args.append("--plots-only")
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_WHILE_DRAWING, str(tmp_path), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    err = _finish(proc)
    assert proc.returncode == 130, err
    kept = (f"the plots drawn before the stop are whole, in {out / 'plots'})" if plots_only
            else f"4 finished points kept in {out / 'results'}; run the same command to resume")  # fmt: skip
    assert err.splitlines()[-1].endswith(kept) and "Traceback" not in err, err
    drawn = sorted(p.name for p in (out / "plots").iterdir()) if (out / "plots").exists() else []
    assert all(not n.startswith(".") for n in drawn), drawn  # no temporary file left


def test_a_compare_stopped_after_every_search_ended_is_not_marked_partial(monkeypatch, capsys):
    """A signal after the last strategy's search (here, as the results are ranked; also the pool's
    shutdown) with no ``--trace`` asked: the comparison is whole, printed as a full run's (before:
    marked PARTIAL, "the trace was not written" though none was asked)."""
    from hetsim import api
    from hetsim.cli import commands

    args = ["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--batch", "1", "--prompt-len", "16",
            "--gen-len", "2", "--format", "json"]  # fmt: skip
    monkeypatch.setattr(commands, "_cores", lambda: 1)
    assert commands.main(args) == 0
    whole = capsys.readouterr().out
    real, sent = api.rank_key, []

    def ranking(objective):
        if not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGINT)
        return real(objective)

    monkeypatch.setattr(api, "rank_key", ranking)
    assert commands.main(args) == 130
    captured = capsys.readouterr()
    assert captured.out == whole
    assert (
        captured.err
        == "interrupted by SIGINT: hetsim compare stopped (every strategy finished and is printed)\n"
    )


# SIGTERM in the two gaps around ``main``'s ``Stop``: while it sets up (``_children`` reads the
# children to spare, before its handlers are in: the console script's take the signal), and just
# after its ``__exit__`` (the output complete)
_SIGTERM_IN_A_GAP = """
import signal, sys
from hetsim.cli import entry, stop

if sys.argv[1] == "before":
    real, once = stop._children, []

    def children():
        if not once:
            once.append(1)
            signal.raise_signal(signal.SIGTERM)
        return real()

    stop._children = children
else:
    real_exit = stop.Stop.__exit__

    def exit_(self, *exc):
        real_exit(self, *exc)
        signal.raise_signal(signal.SIGTERM)

    stop.Stop.__exit__ = exit_
sys.argv = ["hetsim", "model", "list", "--format", "json"]
entry.run()
"""


def test_sigterm_before_the_commands_handlers_are_in_says_the_line():
    """Before: exit 130 and nothing said (the KeyboardInterrupt came from the console script's handler,
    which ``main`` took for one of its own command's)."""
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_IN_A_GAP, "before"], capture_output=True, text=True,
                          timeout=KILL_TIMEOUT_S)  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        143,
        "",
        "interrupted by SIGTERM: hetsim model list stopped (it keeps no partial results)\n",
    )


def test_sigterm_just_after_the_command_is_143_and_silent():
    """Before: 130 (``__exit__`` put back the console script's handler, whose raise ``main`` counted as
    Ctrl-C). The output stays whole."""
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_IN_A_GAP, "after"], capture_output=True, text=True,
                          timeout=KILL_TIMEOUT_S)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (143, "")
    assert "llama2-70b" in [m["name"] for m in json.loads(proc.stdout)]


def test_a_signal_after_the_output_in_a_callers_process_goes_to_the_caller(monkeypatch):
    """In a caller's process (``main(process=False)``), Ctrl-C after the command's output but before
    ``main`` put the caller's handlers back went nowhere: ``main`` returned 130 for a run that had
    finished. Now the run's code comes back and the signal goes to the caller's handler."""
    from hetsim.cli import commands
    from hetsim.cli.stop import Stop

    real_exit, got = Stop.__exit__, []

    def exit_then_ctrl_c(self, *exc):
        real_exit(self, *exc)
        signal.raise_signal(signal.SIGINT)  # between ``__exit__`` and ``restore``

    monkeypatch.setattr(Stop, "__exit__", exit_then_ctrl_c)
    monkeypatch.setattr(commands, "_main", lambda argv: 0)
    before = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        assert commands.main(["model", "list"]) == 0
    finally:
        signal.signal(signal.SIGINT, before)
    assert got == [signal.SIGINT]


# A stopped serve whose grace period runs out while its kept document is built (as on a much busier
# machine): the whole document is printed, not cut off by the grace timer's exit. The clock runs out
# there on purpose (its function called, the real timer cancelled), not by a short grace period and a
# sleep: under load (pytest -n 2 beside a busy suite) the gaps between the keeping blocks (a stopped
# serve has three) took up to 0.34 s, and a 0.3 s grace that ran out in one left no output.
_SLOW_TO_KEEP = """
import signal, sys
from hetsim import api
from hetsim.cli import commands, stop
from hetsim.serving import batching

real_doc, real_init, done = api._stopped_document, batching.ReplicaServer.__init__, [0]

def slow_doc(*a, **k):
    clock = stop._RUNNING[-1].timer
    clock.cancel()
    clock.function()  # the grace period is over (before: the process ended here, printing nothing)
    return real_doc(*a, **k)

def init(self, *a, **k):
    real_init(self, *a, **k)
    inner = self.on_done

    def on_done(r, t):
        inner(r, t)
        done[0] += 1
        if done[0] == 20:
            signal.raise_signal(signal.SIGTERM)

    self.on_done = on_done

api._stopped_document = slow_doc
batching.ReplicaServer.__init__ = init
sys.exit(commands.main(["serve", "--model", "llama2-70b", "--hw", "mixed-lab", "--rate", "5",
                        "--duration", "19000", "--format", "json"], process=True))
"""


def test_what_a_stopped_command_keeps_is_printed_whole_past_the_grace_period(signalled):
    returncode, out, err = signalled(_SLOW_TO_KEEP, [])
    assert returncode == 143, err
    assert json.loads(out)["partial"]["stopped_by"] == "SIGTERM"  # before: nothing (the timer's exit)
    assert err.startswith("interrupted by SIGTERM: hetsim serve stopped (the metrics of the "), err


# A stopped command whose kept output never finishes printing (a pipe nobody reads, full): the
# grace clock waits for the ``keeping`` block only up to ``KEEP_CAP_S``, then ends the process.
_KEPT_OUTPUT_BLOCKED = """
import signal, sys, threading
from hetsim.cli import commands, stop
from hetsim.stopping import keeping

stop.STOP_GRACE_S, stop.KEEP_CAP_S = 0.2, 0.5

def stopped(argv):
    with keeping():  # entered before the signal: the 0.2 s grace clock cannot run out first
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:  # the command unwinds to what it keeps
            sys.stdout.write('{"partial": ')
            sys.stdout.flush()
            threading.Event().wait()  # as a write blocked on a full pipe
    return 0

commands._main = stopped
commands.exit_process(commands.main(["serve"], process=True))
"""


def test_a_kept_output_that_never_finishes_printing_is_cut_short_at_the_cap(signalled):
    """Before, the grace clock waited for the block without end: the process never exited."""
    returncode, out, err = signalled(_KEPT_OUTPUT_BLOCKED, [])
    assert (returncode, out) == (143, '{"partial": ')
    assert err == (
        "interrupted by SIGTERM: hetsim serve stopped (what it keeps was cut short: still printing it "
        "0.5 s past the grace period)\n"
    )


# Two kept blocks, each within the cap, the second begun after the first's wait: before, the cap ran
# from the first wait on, so it cut the second short (1.4 s into a 2 s cap it had 0.6 s left).
_TWO_KEPT_BLOCKS = """
import signal, sys, threading
from hetsim.cli import commands, stop
from hetsim.stopping import keeping

stop.STOP_GRACE_S, stop.KEEP_CAP_S = 0.2, 2.0

def block(text):
    with keeping():
        threading.Event().wait(1.4)  # past the grace period, within the cap
        sys.stdout.write(text)
        sys.stdout.flush()

def stopped(argv):
    try:
        with keeping():  # entered before the signal: the grace clock cannot run out first
            signal.raise_signal(signal.SIGTERM)
    except KeyboardInterrupt:
        block("first ")
        block("second")  # begun at once: the grace clock started again by the first's end has not run out
    return 0

commands._main = stopped
commands.exit_process(commands.main(["serve"], process=True))
"""


def test_each_kept_block_gets_its_own_cap(signalled):
    _, out, err = signalled(_TWO_KEPT_BLOCKS, [])
    assert out == "first second", err  # before: "first " and the cap's line
    assert "cut short" not in err, err


# A stopped command that leaves a thread that never ends, as a process pool interrupted inside its
# shutdown can (its manager thread waiting for good: seen on CPython 3.11 with the signal injected there).
_LEAVES_A_STUCK_THREAD = """
import signal, sys, threading
from hetsim.cli import commands

def stopped(argv):
    threading.Thread(target=threading.Event().wait, name="stuck").start()
    signal.raise_signal(signal.SIGTERM)
    return 0

commands._main = stopped
commands.exit_process(commands.main(["compare"], process=True))
"""


def test_a_stopped_process_does_not_wait_at_exit_for_threads_its_command_left():
    """Before, the interpreter's exit joined the thread: the process hung after its line (the likely
    cause of a rare timeout of test_signal_stops_compare_and_its_workers[sigterm-parent-only])."""
    proc = subprocess.Popen([sys.executable, "-c", _LEAVES_A_STUCK_THREAD], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    err = _finish(proc)
    assert proc.returncode == 143
    assert err == "interrupted by SIGTERM: hetsim compare stopped (it keeps no partial results)\n"


def test_a_late_signal_raised_in_the_callers_handler_leaves_the_callers_gc_threshold(monkeypatch):
    """``restore`` hands a late Ctrl-C to the caller's handler (Python's: KeyboardInterrupt, raised
    inside ``main``'s ``finally``); the caller's collection threshold is put back all the same
    (before: left at CLI_GC_THRESHOLD, the rest of the ``finally`` skipped by the raise)."""
    import gc

    from hetsim.cli import commands
    from hetsim.cli.stop import Stop

    real_exit = Stop.__exit__

    def exit_then_ctrl_c(self, *exc):
        real_exit(self, *exc)
        signal.raise_signal(signal.SIGINT)  # between ``__exit__`` and ``restore``

    monkeypatch.setattr(Stop, "__exit__", exit_then_ctrl_c)
    monkeypatch.setattr(commands, "_main", lambda argv: 0)
    threshold = gc.get_threshold()
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            commands.main(["model", "list"])
        assert gc.get_threshold() == threshold
    finally:
        gc.set_threshold(*threshold)
        signal.signal(signal.SIGINT, before)
