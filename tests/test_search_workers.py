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
    """In a fresh interpreter: the worker forked by ``early`` has the search imported (and frozen,
    as a parent's heap is at a fork), and not networkx (routes need none); the parent, meanwhile,
    imported none of it."""
    code = (
        "import gc, sys\n"
        "from hetsim import workers\n"
        "from hetsim.cli.commands import SEARCH_MODULES\n"
        "def seen():\n"
        "    return [n in sys.modules for n in (*SEARCH_MODULES, 'networkx')], gc.get_freeze_count() > 0\n"
        "with workers.early(1, SEARCH_MODULES) as pool:\n"
        "    here = [n in sys.modules for n in ('hetsim.api', 'networkx')]\n"
        "    print(pool.submit(seen).result(), here)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "([True, True, False], True) [False, False]"


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
sys.exit(commands.main(["compare", "--model", "no-such-model", "--hw", "mixed-lab"]))
"""


@FORK
def test_bad_input_does_not_wait_for_the_early_workers_imports(tmp_path):
    """A compare whose input is bad ends with its one line and exit 2 without waiting for the early
    worker still importing the search (shutting its pool down waited for those imports: here they
    never end, so the command hung), and leaves no worker behind."""
    (tmp_path / "r20p_stuck_import.py").write_text(_STUCK_IMPORT)
    pid_file = tmp_path / "worker.pid"
    env = {**os.environ, "STUCK_PID": str(pid_file)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _BAD_INPUT_WHILE_IMPORTING],
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
    assert done.stderr.startswith("error: --model: unknown model 'no-such-model'")
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
