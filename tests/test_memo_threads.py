"""The search's and runs' memos (``hetsim.sim.run.ScopedMemo``: runs, HexGen's replica speeds and
holds, the ranking's estimates and HexGen's shapes) are per thread: a Dask worker runs sweep points
in threads, each inside its own ``reading()`` of the rig, and a point must record what it read."""

from __future__ import annotations

import threading

from hetsim.hardware import load_rig
from hetsim.hardware.rig import reading
from hetsim.models import get_model
from hetsim.sim.run import remembered_cost, remembering_runs
from hetsim.strategies.base import get_strategy
from hetsim.strategies.hexgen import replica_speed
from hetsim.workload import Workload


def _in_two_threads(body):
    """Run ``body(i, barrier)`` in two threads at once; return what each returned."""
    barrier = threading.Barrier(2, timeout=60)
    out: list = [None, None]
    errors: list = []

    def run(i):
        try:
            out[i] = body(i, barrier)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def test_a_thread_does_not_read_another_threads_entries():
    """Two blocks open at once in two threads, on one rig object: each computes its own answer (a
    shared memo gave the second thread the first's, made under the first's reading)."""
    rig = load_rig("hexgen-full-budget")
    made: list[int] = []

    def body(i, barrier):
        with remembering_runs():
            if i == 0:
                remembered_cost(rig, ("q",), lambda: made.append(0) or "first")
            barrier.wait()  # thread 0's entry exists, both blocks are open
            if i == 1:
                got = remembered_cost(rig, ("q",), lambda: made.append(1) or "second")
            barrier.wait()
            return got if i == 1 else None

    assert _in_two_threads(body)[1] == "second"
    assert sorted(made) == [0, 1]


def test_one_threads_block_ending_leaves_the_others_memo():
    """Thread 1's block opens inside thread 0's and outlives it: its entries stay (a shared memo
    ended with the block that made it, and thread 1 computed the same cost again)."""
    rig = load_rig("hexgen-full-budget")
    made: list[int] = []

    def body(i, barrier):
        if i == 0:
            with remembering_runs():
                barrier.wait()  # open before thread 1's
                barrier.wait()  # thread 1 has asked
            barrier.wait()  # ended
            return None
        barrier.wait()
        with remembering_runs():
            remembered_cost(rig, ("q",), lambda: made.append(1))
            barrier.wait()
            barrier.wait()
            remembered_cost(rig, ("q",), lambda: made.append(2))  # still remembered
        return None

    _in_two_threads(body)
    assert made == [1]


def test_each_threads_point_records_the_rig_it_read():
    """A HexGen replica's speed asked in two threads' points on one rig object: both points' reading
    logs hold the routes its pipeline hops read (the second found no entry to take unrecorded)."""
    rig = load_rig("hexgen-full-budget")
    model = get_model("llama2-70b")
    hexgen = get_strategy("hexgen")
    plan = hexgen.default_plan(rig, model, Workload(8, 512, 32))
    replica = max(plan.replicas, key=lambda r: len(r.stages))
    assert len({rig.devices[d].node for d in replica.devices}) > 1  # a pipeline across machines

    def body(i, barrier):
        with reading() as log, remembering_runs():
            if i == 1:
                barrier.wait()  # thread 0 has asked
            replica_speed(rig, model, replica, Workload(8, 512, 32), plan)
            if i == 0:
                barrier.wait()
            barrier.wait()
            return dict(log.routes)

    first, second = _in_two_threads(body)
    assert first and second == first
