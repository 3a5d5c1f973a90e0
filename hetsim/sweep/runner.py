"""Run sweep points: one point = one ``hetsim.api.best_result`` call on the overridden rig.

Points go to a local process pool (default) or a Dask distributed cluster. Finished rows are
written to the store in small batches (and on any exit), so an interrupted sweep keeps what it
finished; a point that raises becomes a row with ``feasible=False`` and its ``error``.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hetsim.sweep.grid import _DERIVED, apply_hardware, canonical, gpu_mem_budget, override_plan, plan_knobs
from hetsim.sweep.spec import HW_KNOBS

RESULT_COLUMNS = (
    "feasible",
    "reason",
    "error",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "throughput_tok_s",
    "cost_usd_per_mtok",
    "bottleneck",
    "weakest_grade",
    "plan",
    "ignored_knobs",
    "lossy",
)


# How long to wait for a remote Dask scheduler before saying it cannot be reached.
DASK_CONNECT_S = 20
# Local processes (or LocalCluster workers) a sweep may start: more than cores only contend, and a
# pool's queues are sized by the count (a C int: ~2e9 raised OverflowError inside the pool).
MAX_WORKERS = 1024


class PointTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float | None):
    """SIGALRM limit; only in a process's main thread (pool workers), a no-op elsewhere (Dask threads)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise PointTimeout(f"point took longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_point(config: Mapping[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """One point -> one flat row (config columns + result columns). Never raises."""
    import json

    row: dict[str, Any] = dict(config)
    try:
        with _time_limit(timeout_s):
            result, ignored = _evaluate(config)
        d = result.to_dict()
        row.update(
            feasible=bool(d["feasible"]),
            reason=d["reason"],
            error="",
            ttft_s=d["ttft_s"],
            tpot_s=d["tpot_s"],
            e2e_s=d["e2e_s"],
            throughput_tok_s=d["throughput_tok_s"],
            cost_usd_per_mtok=d["cost_usd_per_mtok"],
            bottleneck=d["bottleneck"],
            weakest_grade=d["weakest_grade"],
            plan=json.dumps(d["plan"], sort_keys=True),
            ignored_knobs=",".join(ignored),
            lossy=d["lossy"],
        )
    except Exception as exc:  # a failing point is recorded, never fatal to the sweep
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
        return error_row(config, f"{type(exc).__name__}: {exc}{where}")
    return _floats(row)


def error_row(config: Mapping[str, Any], message: str) -> dict[str, Any]:
    row = {**config, **dict.fromkeys(RESULT_COLUMNS)}
    row.update(
        feasible=False,
        reason="error",
        error=message,
        bottleneck="",
        weakest_grade="",
        plan="{}",
        ignored_knobs="",
        lossy="",
    )
    return _floats(row)


def _floats(row: dict[str, Any]) -> dict[str, Any]:
    for k in ("ttft_s", "tpot_s", "e2e_s", "throughput_tok_s", "cost_usd_per_mtok"):
        v = row.get(k)
        row[k] = math.nan if v is None else float(v)
    return row


# The rigs of the points run in this process: a point's rig is a pure function of its rig file and
# hardware knobs, so the strategies of one configuration run on one Rig object and share what is
# cached by its identity (routes, op costs) instead of loading and overriding the rig again per
# point. Keyed by the file's path, modification time and size too: a Dask worker outlives a sweep
# (``execute`` empties only its own process's cache), and a rig file may change between sweeps.
_RIGS: dict[Any, Any] = {}
_RIGS_MAX = 256


def _point_rig(config: Mapping[str, Any]) -> Any:
    from hetsim.hardware.loader import load_rig, rig_path

    path = rig_path(config["rig"])
    stat = path.stat()
    file = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    key = (file, canonical({"rig": config["rig"], **{k: config.get(k) for k in HW_KNOBS}}))
    rig = _RIGS.get(key)
    if rig is None:
        if len(_RIGS) >= _RIGS_MAX:
            _RIGS.clear()
        base = _RIGS.get(file)  # the file loaded once
        if base is None:
            base = _RIGS[file] = load_rig(config["rig"])
        rig = _RIGS[key] = apply_hardware(base, config)
    return rig


# Answers of the points run in this process, by what a point is besides its rig (its configuration
# without the hardware knobs that act only through the rig; ``gpu_mem_gb`` stays: it is also the
# plans' memory budget), each with its rig, its model as read then (a config.json may change) and
# what it read of the rig's links (``rig.reading``). A point whose rig answers those reads as that rig
# did (``agrees``: the same devices, nodes and disks, the same links and routes where read) has the
# same answer: a one-GPU strategy's points that differ only in the network, or in a PCIe generation
# whose numbers equal the rig's, are run once.
# ``REMEMBER_ANSWERS = False`` switches this off (every point run afresh; same rows, slower).
REMEMBER_ANSWERS = True
_ANSWERS: dict[str, list[tuple[Any, Any, Any, Any]]] = {}  # key -> [(rig, model, read log, answer)]
_ANSWERS_MAX = 4096
# Each answer holds its rig (~0.2 MB with its routes on the 58-GPU rig): all are forgotten when they
# hold this many rigs, so a grid of thousands of hardware variants does not keep thousands of rigs.
_ANSWER_RIGS: dict[int, Any] = {}
_ANSWER_RIGS_MAX = 256
_RIG_ONLY_KNOBS = tuple(k for k in HW_KNOBS if k != "gpu_mem_gb")


def answer_key(config: Mapping[str, Any]) -> str:
    return canonical({k: v for k, v in config.items() if k != "point_id" and k not in _RIG_ONLY_KNOBS})


def _evaluate(config: Mapping[str, Any]):
    from hetsim.hardware.rig import agrees, reading
    from hetsim.models.registry import get_model

    rig = _point_rig(config)
    # the model as read now: a config.json path's contents may change between two sweeps that a
    # Dask worker (and its remembered answers) outlives
    model = get_model(config["model"])
    if not REMEMBER_ANSWERS:
        return _evaluate_on(config, rig, model)
    key = answer_key(config)
    known = _ANSWERS.get(key, [])
    for then, spec, log, answer in known:
        if spec == model and agrees(log, then, rig):
            return answer
    with reading() as log:
        answer = _evaluate_on(config, rig, model)
    if sum(map(len, _ANSWERS.values())) >= _ANSWERS_MAX or len(_ANSWER_RIGS) >= _ANSWER_RIGS_MAX:
        _ANSWERS.clear()
        _ANSWER_RIGS.clear()
    _ANSWERS.setdefault(key, []).append((rig, model, log, answer))
    _ANSWER_RIGS[id(rig)] = rig
    return answer


def _evaluate_on(config: Mapping[str, Any], rig: Any, model: Any = None):
    from hetsim import api
    from hetsim.models.hf_config import weight_dtype_for
    from hetsim.models.registry import get_model
    from hetsim.strategies.base import get_strategy
    from hetsim.workload import Workload

    model = model if model is not None else get_model(config["model"])
    p = api.Problem(
        model,
        config["model"],
        rig,
        config["rig"],
        Workload(
            int(config["batch"]),
            int(config["prompt_len"]),
            int(config["gen_len"]),
            weight_dtype_for(model, config.get("dtype"), "dtype", config["model"]),  # a checkpoint's own
            config.get("kv_dtype"),
        ),
    )
    budget = gpu_mem_budget(config)
    knobs, ignored = plan_knobs(config), []
    strategy = get_strategy(config["strategy"])
    if strategy.name == "flexgen":  # a sweep's points repeat LPs (rigs differing where an LP does not look)
        from hetsim.planner.flexgen_lp import remember_optima

        remember_optima()

    def adjust(plan: Any) -> Any:  # the point's plan knobs on the searched (or default) plan
        fixed, ignored[:] = override_plan(plan, knobs, budget)
        if fixed is not plan:  # checked as a plan file is: batch_per_pass > batch ran silently
            strategy.check_plan(fixed, p.rig, p.model, p.workload)
        return fixed

    result = api.best_result(
        strategy,
        p,
        config["objective"],
        search=bool(config.get("search", True)),
        adjust=adjust,
        allow_lossy=bool(config.get("allow_compression", False)),
    )
    return result, ignored


def _run_local(points: list[dict[str, Any]], workers: int, timeout_s: float | None) -> Iterable[dict]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, wait

    # A task is a group of points (``answer_groups``); each row comes back through ``rows`` as its
    # point finishes, so an interrupted sweep keeps every finished point of a group it stops.
    rows = _context(mp).SimpleQueue()
    try:
        with stoppable_pool(workers, _worker_init, (rows,)) as (pool, deliver):
            futures: dict[Any, list[dict[str, Any]]] = {}
            seen: set[str] = set()
            for g in answer_groups(points, workers):
                futures[pool.submit(_run_group, g, timeout_s)] = g
                deliver()
            pending = set(futures)
            while pending:
                deliver()
                done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
                while not rows.empty():  # rows may come as fast as they are taken: deliver between
                    deliver()
                    row = rows.get()
                    seen.add(row["point_id"])
                    yield row
                for fut in done:
                    exc = fut.exception()
                    if exc is not None:  # the worker process died: its group's unfinished points
                        for p in futures[fut]:
                            if p["point_id"] not in seen:
                                deliver()  # a signal that killed it stops the sweep: not crashes
                                yield _crashed(p, exc)
    finally:
        rows.close()


def _context(mp: Any) -> Any:
    """fork where there is one (cheap, inherits the imported strategies), else the default (spawn)."""
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


@contextmanager
def stoppable_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[tuple[Any, Callable[[], None]]]:
    """A process pool (and ``deliver``, see ``_signals_at_safe_points``) whose workers leave Ctrl-C
    to this process (``_worker_signals``, before ``initializer``). Left by an exception (an
    interrupt delivered), queued tasks are dropped and running workers terminated, not waited for."""
    import multiprocessing as mp

    from hetsim.workers import JoinedPool

    with _signals_at_safe_points() as deliver:
        pool = JoinedPool(
            max_workers=workers,
            mp_context=_context(mp),
            initializer=_start_worker,
            initargs=(initializer, initargs),
        )
        finished = False
        try:
            yield pool, deliver
            finished = True
        finally:
            # Take the workers before shutdown, which sets the pool's private _processes to None.
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=finished, cancel_futures=True)
            if not finished:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.join(timeout=5)
                # and its manager thread, not left to the interpreter's exit (``JoinedPool``)
                pool.join_manager(timeout=5)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    _worker_signals()
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def _signals_at_safe_points():
    """Hold SIGINT/SIGTERM's Python handlers (the CLI's raises KeyboardInterrupt) while the pool is
    run, and run them only where ``deliver()`` is called. A handler that raises at any bytecode can
    stop ``concurrent.futures.wait`` half-way through taking its futures' locks (``_AcquireFutures``
    takes them one by one in a Python loop), or ``submit`` before the pool is shut down: the pool's
    manager thread then blocks on a lock or a result forever, and the interpreter's exit joins that
    thread with no timeout, so the sweep said "interrupted" and hung. Nothing changes outside the main
    thread (no handlers run there) or for a signal whose handler is not a Python function. A signal
    held when the pool is done is delivered on the way out."""
    held: list[tuple[int, Any]] = []
    old: dict[int, Any] = {}
    delivered: set[int] = set()
    home = os.getpid()

    def hold(signum: int, frame: Any) -> None:
        if os.getpid() != home:  # a pool worker forked before its initializer set its own handlers
            if signum == signal.SIGTERM:  # die as ``_worker_signals`` would have it
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        held.append((signum, frame))

    def deliver() -> None:
        if held:
            signum, frame = held[0]
            held.clear()
            if signum not in delivered:  # once per signal, as if it had not been held
                delivered.add(signum)
                old[signum](signum, frame)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if callable(signal.getsignal(sig)):
                old[sig] = signal.signal(sig, hold)
    try:
        yield deliver
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        deliver()


_ROWS: Any = None  # a pool worker's queue of finished rows (``_worker_init``)


def _worker_init(rows: Any) -> None:
    global _ROWS
    _ROWS = rows


def _run_group(points: list[dict[str, Any]], timeout_s: float | None) -> None:
    """A pool task: ``run_point`` for each point in this worker, each row sent as it is made."""
    for p in points:
        _ROWS.put(run_point(p, timeout_s))


def answer_groups(points: list[dict[str, Any]], workers: int = 1) -> list[list[dict[str, Any]]]:
    """The points as the pool's tasks: those that may share an answer (one ``answer_key``) together,
    in one worker, where ``_evaluate`` can reuse it; larger groups first, so that the workers end
    on small ones. A group larger than a worker's share of the points (a grid of hardware variants
    of one configuration is one group) is halved until it is not, or it would keep one worker busy
    while the others idle; each half then shares answers within itself."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(answer_key(p), []).append(p)
    tasks = sorted(groups.values(), key=len, reverse=True)
    share = math.ceil(len(points) / max(1, workers))
    while tasks and len(tasks[0]) > max(1, share):
        big = tasks.pop(0)
        half = (len(big) + 1) // 2
        tasks = sorted([*tasks, big[:half], big[half:]], key=len, reverse=True)
    return tasks


def _worker_signals() -> None:
    """Pool workers leave Ctrl-C (sent to the whole process group) to the parent, which stops them;
    SIGTERM gets its default action (the parent's handler is inherited through fork)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def check_dask_address(address: str) -> None:
    """'local', or a scheduler address such as tcp://host:8786 or host:8786; else an InputError.
    Also refuses --dask when the optional ``dist`` extra (dask.distributed) is not installed."""
    from hetsim.errors import InputError

    try:
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError:
        raise InputError(
            "needs dask.distributed: pip install 'hetsim[dist]' (or run without --dask)", field="--dask"
        ) from None
    if address == "local":
        return
    try:
        scheme, loc = parse_address(address)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(loc)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"not a scheduler address ({exc}); use 'local' or e.g. tcp://10.0.0.5:8786", field="--dask"
        ) from None


def _run_dask(points: list[dict[str, Any]], address: str, workers: int) -> Iterable[dict]:
    from distributed import Client, LocalCluster, as_completed

    from hetsim.errors import InputError

    cluster = None
    if address == "local":
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=DASK_CONNECT_S)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the scheduler at {address}: {exc}", field="--dask") from None
    try:
        futures = client.map(run_point, points, key=[f"hetsim-point-{p['point_id']}" for p in points])
        by_key = {f.key: p for f, p in zip(futures, points, strict=True)}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as exc:
                yield _crashed(by_key[fut.key], exc)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _crashed(config: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    return error_row(config, f"worker crashed: {type(exc).__name__}: {exc}")


def run_order(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points in the order they are handed out: the strategies of one configuration one after
    the other (they share its rig, see ``_point_rig``), configurations in first-seen order. The
    store sorts rows by point id, so the order changes no output."""
    first: dict[str, int] = {}
    for p in points:
        first.setdefault(_config_key(p), len(first))
    return sorted(points, key=lambda p: first[_config_key(p)])


def _config_key(point: Mapping[str, Any]) -> str:
    return canonical({k: v for k, v in point.items() if k not in ("strategy", "point_id")})


def execute(
    points: list[dict[str, Any]],
    *,
    dask: str | None = None,
    workers: int = 2,
    timeout_s: float | None = None,
    on_row: Callable[[dict[str, Any]], None],
    stop_after: int | None = None,
) -> int:
    """Run ``points``; ``on_row`` gets each finished row. ``stop_after`` (tests) stops after k rows."""
    if not points:
        return 0
    _RIGS.clear()  # this run's rig files, read afresh (forked workers inherit the empty cache)
    _ANSWERS.clear()
    _ANSWER_RIGS.clear()
    _DERIVED.clear()
    points = run_order(points)
    if dask:
        rows = _run_dask(points, dask, workers)
    elif workers <= 1:
        rows = (run_point(p, timeout_s) for p in points)
    else:
        rows = _run_local(points, workers, timeout_s)
    n = 0
    start = time.monotonic()
    try:
        for row in rows:
            on_row(row)
            n += 1
            if stop_after is not None and n >= stop_after:
                raise KeyboardInterrupt(f"stopped after {n} points ({time.monotonic() - start:.1f} s)")
    finally:
        close = getattr(rows, "close", None)
        if close:
            close()
    return n
