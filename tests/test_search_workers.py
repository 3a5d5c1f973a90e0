"""compare's search workers (``hetsim.workers``): forked early, fed one job at a time, results in order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api, workers
from hetsim.cli.commands import SEARCH_MODULES

FORK = pytest.mark.skipif(not workers.can_fork(), reason="processes cannot be forked here")


class _Counting:
    """A pool's calls, watched: the most ever running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0

    def run(self, seconds: float) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    seconds=st.lists(st.sampled_from([0.0, 0.001, 0.003]), min_size=0, max_size=12),
)
def test_scatter_returns_every_result_in_call_order_and_never_queues_past_a_pools_workers(sizes, seconds):
    counting = {f"pool{k}": _Counting() for k in range(len(sizes))}
    pools = [(ThreadPoolExecutor(n, thread_name_prefix=f"pool{k}"), n) for k, n in enumerate(sizes)]

    def call(i: int, s: float) -> int:
        counting[threading.current_thread().name.split("_")[0]].run(s)  # the pool it runs on
        return i

    try:
        results = workers.scatter(pools, [(call, (i, s)) for i, s in enumerate(seconds)])
    finally:
        for executor, _ in pools:
            executor.shutdown()
    assert results == list(range(len(seconds)))
    assert all(c.most <= n for c, n in zip(counting.values(), sizes, strict=True))


def test_scatter_gives_the_first_calls_to_the_first_pool():
    """The pool listed first (the one forked early, its workers ready) gets the costliest jobs."""
    first, second = ThreadPoolExecutor(1, "first"), ThreadPoolExecutor(2, "second")
    try:
        names = workers.scatter(
            [(first, 1), (second, 2)], [(lambda: threading.current_thread().name, ())] * 3
        )
    finally:
        first.shutdown()
        second.shutdown()
    assert names[0].startswith("first_") and all(n.startswith("second_") for n in names[1:])


def _pid() -> int:
    return os.getpid()


@FORK
def test_a_compare_with_workers_forked_early_has_the_results_of_one_process():
    p = api.problem("llama2-7b", "mixed-lab", None, 64, 4)
    names = ["gpu-only", "cpu-tp", "layer-offload", "deepspeed"]
    alone = [r.to_dict() for r in api.compare(p, names, "throughput", workers=1)]
    with workers.early(1, SEARCH_MODULES) as started:
        assert started is not None
        early_pid = started.submit(_pid).result()
        pooled = [r.to_dict() for r in api.compare(p, names, "throughput", workers=2, started=(started, 1))]
        assert started.submit(_pid).result() == early_pid  # the same worker, still there for more jobs
    assert pooled == alone


@FORK
def test_an_early_worker_imports_the_search_while_the_parent_goes_on():
    """In a fresh interpreter: the worker forked by ``early`` has the search and networkx imported
    (and frozen, as a parent's heap is at a fork), and neither the rig loader nor pydantic's models
    (the parent reads the problem); the parent, meanwhile, imported none of it."""
    code = (
        "import gc, sys\n"
        "from hetsim import workers\n"
        "from hetsim.cli.commands import SEARCH_MODULES\n"
        "def seen():\n"
        "    mods = (*SEARCH_MODULES, 'hetsim.hardware.loader', 'pydantic.main')\n"
        "    return [n in sys.modules for n in mods], gc.get_freeze_count() > 0\n"
        "with workers.early(1, SEARCH_MODULES) as pool:\n"
        "    here = [n in sys.modules for n in ('hetsim.api', 'networkx')]\n"
        "    print(pool.submit(seen).result(), here)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "([True, True, True, False, False], True) [False, False]"


def test_no_workers_are_forked_for_one_core_or_none_asked():
    with workers.early(0, SEARCH_MODULES) as started:
        assert started is None


_STUCK_IMPORT = (
    "import os, time\nopen(os.environ['STUCK_PID'], 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
)
_BAD_INPUT_WHILE_IMPORTING = """
import sys
from hetsim.cli import commands
commands.SEARCH_MODULES = ("r20p_stuck_import",)  # the early worker's imports never end
commands._cores = lambda: 2
sys.exit(commands.main(["compare", "--hw", "mixed-lab", *sys.argv[1:]]))
"""


@FORK
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "no-such-model"], "error: --model: unknown model 'no-such-model'"),
        # refused by typer's parsing, after the workers were forked (before it, since session 13)
        (["--model", "llama2-7b", "--gen-len", "x"], "error: --gen-len: Input should be a valid integer"),
        (["--model", "llama2-7b", "--format", "nope"], "error: --format: unknown format 'nope'"),
    ],
)
def test_bad_input_does_not_wait_for_the_early_workers_imports(tmp_path, args, says):
    """A compare whose input is bad ends with its one line and exit 2 without waiting for the early
    worker still importing the search (shutting its pool down waited for those imports: here they
    never end, so the command hung), and leaves no worker behind."""
    (tmp_path / "r20p_stuck_import.py").write_text(_STUCK_IMPORT)
    pid_file = tmp_path / "worker.pid"
    env = {**os.environ, "STUCK_PID": str(pid_file)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _BAD_INPUT_WHILE_IMPORTING, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        worker = int(pid_file.read_text()) if pid_file.exists() else None
        if worker is not None and _alive(worker):
            os.kill(worker, 9)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(says)
    assert worker is None or not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    ("names", "cores", "forked"),
    [(None, 16, 15), ("all", 16, 15), ("flexgen,hetegen", 16, 2), ("flexgen,flexgen", 16, 0),
     ("flexgen", 16, 0), ("flexgen,hetegen,gpu-only", 2, 1), (None, 1, 0)],
)  # fmt: skip
def test_early_workers_are_no_more_than_the_strategies_named(monkeypatch, names, cores, forked):
    """``--strategies a,b`` on 16 cores forked 15 workers, each importing the search (~0.3 CPU s),
    for 2 jobs at most."""
    from contextlib import contextmanager

    from hetsim.cli import commands

    asked = []

    @contextmanager
    def early(n, modules):
        asked.append(n)
        yield None

    monkeypatch.setattr(workers, "early", early)
    monkeypatch.setattr(commands, "_cores", lambda: cores)
    with commands._search_workers(names) as (searching_on, started):
        assert (searching_on, started) == (cores, None)
    assert asked == [forked]


@pytest.mark.parametrize(
    ("args", "forked"),
    [(["compare", "--model", "m", "--strategies", "flexgen,hetegen"], 2),
     (["compare", "--strategies=flexgen,hetegen,gpu-only", "--strategies", "flexgen"], 0),
     (["compare", "--strategies", "a,b", "--strategies=a,b,c"], 3),
     (["compare", "--model", "m"], 15), (["plan", "--strategy", "all"], 15), (["plan"], 15),
     (["plan", "--strategy", "hexgen"], None), (["compare", "--help"], None),
     (["simulate", "--plan", "p.json"], None), (["model", "list"], None), ([], None)],
)  # fmt: skip
def test_searching_commands_fork_their_workers_from_the_arguments(monkeypatch, args, forked):
    """``_main`` forks a compare's or plan's workers from its arguments (the last ``--strategies``,
    as typer takes it), before typer parses them; other commands, and help, fork none."""
    from contextlib import contextmanager

    from hetsim.cli import commands

    asked = []

    @contextmanager
    def early(n, modules):
        asked.append(n)
        yield "pool" if n else None

    monkeypatch.setattr(workers, "early", early)
    monkeypatch.setattr(commands, "_cores", lambda: 16)
    # the command's own call hands out the forked ones
    with commands._forking(args), commands._search_workers("flexgen") as handed:
        pass
    if forked is None:  # forked by the command itself, as before
        assert asked == [0] and handed == (16, None)
    else:
        assert asked == [forked] and handed == (16, ("pool", forked) if forked else None)
    assert commands._forked is None


_FORKED_WHEN = """
import sys
from contextlib import contextmanager
from hetsim import workers
from hetsim.cli import commands
seen = []
@contextmanager
def early(n, modules):
    seen.append(sorted(m for m in ("typer._adapters", "pydantic.main") if m in sys.modules))
    yield None
workers.early = early
commands._cores = lambda: 2
code = commands.main(["compare", "--model", "no-such-model", "--hw", "mixed-lab"])
print(code, seen)
"""


@FORK
def test_compare_forks_its_workers_before_typer_imports_pydantic():
    """The early workers are forked before typer's flag parsing imports pydantic (~0.05 CPU s that
    a worker forked after it waited for, and needs none of)."""
    out = subprocess.run([sys.executable, "-c", _FORKED_WHEN], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2 [[]]"


def test_scatter_lets_a_released_pool_go_while_another_pools_call_runs():
    """A pool in ``release`` with nothing left to run is shut down while the other pool's last call
    still runs (its workers exit meanwhile); a pool not in ``release`` stays open for its caller."""
    kept, released = ThreadPoolExecutor(1, "kept"), ThreadPoolExecutor(1, "released")

    def refuses(executor: ThreadPoolExecutor) -> bool:
        try:
            executor.submit(int).result()
        except RuntimeError:  # cannot schedule new futures after shutdown
            return True
        return False

    def long_call() -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if refuses(released):
                return True
            time.sleep(0.005)
        return False

    try:
        seen = workers.scatter([(kept, 1), (released, 1)], [(long_call, ()), (int, ())], release=[released])
        assert seen == [True, 0]
        assert not refuses(kept)
    finally:
        kept.shutdown()
        released.shutdown()


_FORKED_WITH = """
import sys
from contextlib import contextmanager
from hetsim import workers
from hetsim.cli import commands
seen = []
@contextmanager
def early(n, modules):
    seen.append((n, list(modules), "hetsim.api" in sys.modules))
    yield None
workers.early = early
commands._cores = lambda: 2
commands.main(["compare", "--model", "no-such-model", "--hw", "mixed-lab", *sys.argv[1:]])
print(seen)
"""


@FORK
@pytest.mark.parametrize(
    ("args", "flexgen"),
    [([], True), (["--strategies", "flexgen,gpu-only"], True), (["--strategies", "hetegen,gpu-only"], False)],
)
def test_the_parent_imports_the_search_before_the_fork_and_the_early_worker_flexgens_lp(args, flexgen):
    """The parent imports ``hetsim.api`` once, before forking (it needs it before the first job
    anyway; a worker would import it again); where FlexGen is searched the early worker imports its
    LP solver too, before FlexGen's job, the first, arrives."""
    from hetsim.cli.commands import FLEXGEN_MODULES

    out = subprocess.run(
        [sys.executable, "-c", _FORKED_WITH, *args], capture_output=True, text=True, check=True
    ).stdout
    modules = [*SEARCH_MODULES, *(FLEXGEN_MODULES if flexgen else ())]
    assert out.strip() == repr([(1, modules, True)])


@pytest.mark.parametrize("released", [True, False])
@pytest.mark.parametrize("long_first", [True, False])
def test_scatter_calls_meanwhile_once_a_worker_is_idle_while_the_last_call_runs(released, long_first):
    """``meanwhile`` (the caller's own work: the CLI imports rich's tables) runs once, here, as soon
    as a worker has nothing left to run while another's last call still runs: its core is free,
    whichever pool it is in and whether or not that pool is let go (it was called only when a
    released pool was done first: never where the caller's own pool, FlexGen's, finished first)."""
    first, second = ThreadPoolExecutor(1, "first"), ThreadPoolExecutor(1, "second")
    called = threading.Event()
    calls = []

    def meanwhile() -> None:
        calls.append(threading.current_thread() is threading.main_thread())
        called.set()

    long, short = (called.wait, (10,)), (int, ())
    try:
        results = workers.scatter(
            [(first, 1), (second, 1)],
            [long, short] if long_first else [short, long],
            release=[first, second] if released else [],
            meanwhile=meanwhile,
        )
    finally:
        first.shutdown()
        second.shutdown()
    assert results == ([True, 0] if long_first else [0, True])  # the long call saw it called
    assert calls == [True]


def test_scatter_does_not_call_meanwhile_where_no_worker_idles_before_the_end():
    one, calls = ThreadPoolExecutor(1, "one"), []
    try:
        results = workers.scatter([(one, 1)], [(int, ()), (int, ())], meanwhile=lambda: calls.append(1))
    finally:
        one.shutdown()
    assert (results, calls) == ([0, 0], [])


_EXIT_WITH_SLOW_MANAGERS = """
import sys, time
import concurrent.futures.process as cfp
from hetsim.cli import commands
joined = cfp._ExecutorManagerThread.join_executor_internals
def join_slowly(self):  # a pool's manager thread, descheduled for a while (a loaded machine)
    time.sleep(0.3)
    joined(self)
cfp._ExecutorManagerThread.join_executor_internals = join_slowly
commands._cores = lambda: 2
code = commands.main(["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--batch", "1", "--prompt-len",
                      "16", "--gen-len", "2", "--format", "json", "--strategies",
                      "gpu-only,accelerate,layer-offload"])
print(code, any(t.is_alive() for t in list(cfp._threads_wakeups)))
"""


@FORK
def test_a_compare_returns_with_its_released_pools_workers_joined():
    """Pools let go without waiting (the late one in ``scatter``, the early one after ``compare``)
    are still waited for before the command returns (their workers exit meanwhile): left to the
    interpreter's exit, CPython 3.11's ``_python_exit`` wakes each live manager thread without its
    lock, racing the thread closing that pipe ("OSError: [Errno 9] Bad file descriptor" at exit)."""
    out = subprocess.run(
        [sys.executable, "-c", _EXIT_WITH_SLOW_MANAGERS], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.splitlines()[-1] == "0 False", out.stderr
    assert out.stderr == ""
