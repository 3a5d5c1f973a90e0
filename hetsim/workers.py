"""Forked search workers: pools started before the caller has its problem, fed one job at a time.

A compare's search worker needs the simulator, the strategies and networkx (routes) imported, ~0.2
CPU s; the parent alone reads the rig (its schema: pydantic models, YAML) and the model. ``early``
forks workers before either, so they import their part while the parent reads the problem: two
cores busy where one was, and the first job starts that much sooner. ``scatter`` hands each pool
one job per idle worker, the next when one finishes (costliest first: the longest job starts
first and the short ones fill in), so a pool forked later only adds workers; results come back
in the order of the jobs, whichever worker ran them. A pool its caller lets go (``release``) is shut
down as soon as nothing is left for it, not waited for: its workers exit (the kernel frees their
heap, ~10 ms each on the headline compare) while the last job still runs in another pool.

Standard library only at import: the CLI imports this before anything heavy.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from importlib import import_module
from typing import Any

# Net container objects a search worker creates before a young collection (CPython's default: 700).
# A search keeps a few hundred thousand objects alive (remembered runs, op and split caches), and
# every collection costs ~1 us per object it visits: at the default, ~0.4 of the headline compare's
# ~3 CPU s went to collecting; at this threshold its workers never collect, and cyclic garbage
# stays bounded (max RSS 94 -> 122 MB on the headline; `--exact` at gen 3584 with no collection at
# all: 359 -> 458 MB). Collecting never changes a result.
WORKER_GC_THRESHOLD = 1_000_000

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _start(modules: Sequence[str]) -> None:
    """A worker's start: young collections rare (``WORKER_GC_THRESHOLD``), ``modules`` imported and
    frozen (as the parent's heap was at the fork: collections never traverse them)."""
    gc.set_threshold(WORKER_GC_THRESHOLD, *gc.get_threshold()[1:])
    if modules:
        for name in modules:
            import_module(name)
        gc.freeze()


class JoinedPool(ProcessPoolExecutor):
    """A process pool whose ``shutdown(wait=False)`` (a pool let go: ``scatter``'s ``release``) lets
    its workers exit while the caller goes on, and whose later ``shutdown()`` (its ``with`` block's
    end) still waits for them. The standard one forgets its manager thread at the first and leaves
    it to the interpreter's exit, whose wakeup of a live manager thread (CPython 3.11's
    ``_python_exit``, without the pool's lock) races the thread closing that pipe: "OSError: [Errno
    9] Bad file descriptor" printed at exit."""

    _going: threading.Thread | None = None  # the manager thread of a pool shut down without waiting

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # the manager thread is private: the standard library has no public way to wait for it later
        going = getattr(self, "_executor_manager_thread", None) or self._going
        super().shutdown(wait, cancel_futures=cancel_futures)
        self._going = going
        if wait:
            self.join_manager()

    def join_manager(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` s) for the manager thread of a pool shut down without waiting."""
        if self._going is not None:
            self._going.join(timeout)
            if not self._going.is_alive():
                self._going = None


def pool(workers: int, modules: Sequence[str] = ()) -> ProcessPoolExecutor:
    """``workers`` forked processes (forked at the first submit, all of them) that import ``modules``."""
    ctx = multiprocessing.get_context("fork")  # children inherit the loaded modules
    return JoinedPool(workers, mp_context=ctx, initializer=_start, initargs=(tuple(modules),))


@contextmanager
def early(workers: int, modules: Sequence[str]) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` processes forked now, importing ``modules`` while the block goes on (None where
    processes cannot be forked, or ``workers`` < 1); shut down when the block ends. Leave the parent
    a core: the point is that each of them has one while it imports."""
    if workers < 1 or not can_fork():
        yield None
        return
    with frozen_heap(), pool(workers, modules) as executor:
        executor.submit(int)  # forks them all now (a forking pool starts its workers at the first job)
        try:
            yield executor
        except BaseException:
            # the block failed (bad input, an interrupt): the workers hold nothing it needs, so
            # they are not waited for (shutting down would wait out their imports, ~0.2 s)
            _kill(executor)
            raise


def _kill(executor: ProcessPoolExecutor) -> None:
    """SIGKILL ``executor``'s worker processes (its shutdown then finds the pool broken at once).
    ``_processes`` is the executor's own pid -> process map: the standard library (before 3.14's
    ``terminate_workers``) has no public way to end a pool's workers without waiting for them."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(ProcessLookupError):
            process.kill()


_held = False  # a freeze of frozen_heap's is in force (this process's)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """The heap frozen while workers are forked: their collections then never traverse what they
    inherit, nor copy the pages it sits on (a collection writes to every object it visits). Inside
    one of its own, what was made since is frozen too, and the outer one releases it all. Left as it
    is when the caller froze objects of its own (unfreezing would release theirs too)."""
    global _held
    if _held:
        gc.freeze()
        yield
        return
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    _held = True
    try:
        yield
    finally:
        _held = False
        gc.unfreeze()  # the parent collects as before


def scatter(
    pools: Sequence[tuple[ProcessPoolExecutor, int]],
    calls: Sequence[Call],
    keep: Callable[[int, Any], None] | None = None,
    release: Collection[Executor] = (),
    meanwhile: Callable[[], None] | None = None,
) -> list[Any]:
    """Each call's result, in the order of ``calls``: run over ``pools`` (each with its number of
    workers), the next call to the first pool with an idle worker. A pool gets no more than its idle
    workers (none waits queued in one pool while another's worker is idle), so list the pool whose
    workers are ready first, and the calls costliest first. ``keep(i, result)`` is called here as each
    call's result arrives (what an interrupted caller keeps). A call's exception is raised here
    (``BrokenProcessPool`` when a worker died). The pools in ``release`` are shut down once every
    call has started and theirs have finished (``shutdown(wait=False)``: their workers exit
    meanwhile; a later ``shutdown`` of a ``pool``, as its ``with`` block ends, waits for them).
    ``meanwhile()`` is called here once, as soon as a worker has nothing left to run while calls
    still run: its core is free for the caller's own work (where none is, it is not called)."""
    results: list[Any] = [None] * len(calls)
    idle = [n for _, n in pools]
    running: dict[Future[Any], tuple[int, int]] = {}  # -> (index of the call, index of its pool)
    todo = list(enumerate(calls))[::-1]  # the next call last

    def fill() -> None:
        for k, (executor, workers) in enumerate(pools):
            while idle[k] and todo:
                i, (fn, args) = todo.pop()
                running[executor.submit(fn, *args)] = (i, k)
                idle[k] -= 1
            if not todo and idle[k] == workers and executor in release:
                executor.shutdown(wait=False)  # a repeated call does nothing

    fill()
    while running:
        if meanwhile is not None and not todo and any(idle):
            meanwhile, now = None, meanwhile
            now()
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            i, k = running.pop(future)
            results[i] = future.result()
            idle[k] += 1
            if keep is not None:
                keep(i, results[i])
        fill()
    return results
