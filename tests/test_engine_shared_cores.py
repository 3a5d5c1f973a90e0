"""The host's cores shared by the issuing thread's CPU work and the copy threads' conversions beside
it (``Engine.share_cores``). Torch's intra-op work in two threads at once (FlexGen 0.1.8: the issuing
thread's CPU attention, pytorch_backend.py ``mha_gen`` on the CPU; a copy thread's ``copy_`` in
``copy_worker_func``, pytorch_backend.py:878-906) runs as two OpenMP teams of torch's thread count on
the same cores, which the OS time-shares: the stream's work holds at least half of them while it runs,
all it computes with if more; the conversions get the rest, and never slow the stream."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.op_cost import OpCost
from hetsim.hardware.loader import load_rig
from hetsim.sim.engine import Engine
from hetsim.strategies.flexgen import endpoints

RIG = load_rig("flexgen-t4")
CPU = endpoints(RIG)[1]


def _work(seconds: float, compute: float) -> OpCost:
    """CPU work of ``seconds`` with ``compute`` of it on the cores (no DRAM traffic: the cores alone)."""
    return OpCost(seconds, compute, seconds - compute, 0.0, 0.0, 1.0)


def _book(shared: bool, stream: OpCost, beside: OpCost, beside_first: bool = False) -> tuple[float, float]:
    """(when the stream's work ends, when the work beside it ends), both issued at 0."""
    e = Engine(RIG)
    if shared:
        e.share_cores(CPU)
    if beside_first:
        b = e.book_beside(CPU, beside)
        return e.book_execute(CPU, stream), b
    s = e.book_execute(CPU, stream)
    return s, e.book_beside(CPU, beside)


def test_a_conversion_beside_memory_bound_work_gets_half_the_cores():
    """10 ms of memory-bound work (1 ms of compute) holds half the cores: a 2 ms conversion beside it
    takes 4 ms (0.5 of the cores), not 2 ms as before."""
    stream, conv = _work(10e-3, 1e-3), _work(2e-3, 2e-3)
    assert _book(False, stream, conv) == pytest.approx((10e-3, 2e-3))
    assert _book(True, stream, conv) == pytest.approx((10e-3, 4e-3))


def test_a_conversion_beside_compute_bound_work_waits_for_the_cores():
    """10 ms of compute-bound work holds every core: the 2 ms conversion runs after it (12 ms); a 30 ms
    one gets half the cores for the first 10 ms when the stream's work computes 5 of them."""
    assert _book(True, _work(10e-3, 10e-3), _work(2e-3, 2e-3)) == pytest.approx((10e-3, 12e-3))
    assert _book(True, _work(10e-3, 5e-3), _work(30e-3, 30e-3)) == pytest.approx((10e-3, 35e-3))


def test_a_conversion_booked_first_takes_the_cores_the_stream_leaves_nothing():
    """The stream is never slowed by the conversions (the issuing thread first, as a later DRAM flow
    never slows an earlier one): booked after a conversion, it ends as alone."""
    assert _book(True, _work(10e-3, 10e-3), _work(2e-3, 2e-3), beside_first=True) == pytest.approx(
        (10e-3, 2e-3)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.floats(1e-4, 1e-1),
    st.floats(0.0, 1.0),
    st.floats(1e-4, 1e-1),
    st.booleans(),
)
def test_sharing_never_speeds_anything_up_nor_slows_the_stream(stream_s, share, conv_s, first):
    """Whatever the two works: the stream's ends as without sharing, the conversion no earlier, and
    no later than after both works one after the other (the cores are work-conserving)."""
    stream, conv = _work(stream_s, stream_s * share), _work(conv_s, conv_s)
    alone = [_book(False, stream, conv, first)]
    got = _book(True, stream, conv, first)
    assert got[0] == alone[0][0]
    assert alone[0][1] - 1e-12 <= got[1] <= stream_s + conv_s + 1e-12


@pytest.mark.parametrize(
    ("compress_weight", "wd", "shared"), [(True, 50, True), (True, 0, False), (False, 50, False)]
)
def test_flexgen_shares_the_cores_where_its_copy_threads_convert(monkeypatch, compress_weight, wd, shared):
    """FlexGen's runner shares its host's cores where packed parts come from disk (the copy threads
    convert them: ``_via_host``); elsewhere nothing is converted beside the thread and the engine
    books as before."""
    from hetsim.models import get_model
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan
    from hetsim.workload import Workload

    seen = []
    monkeypatch.setattr(Engine, "share_cores", lambda self, device: seen.append(device))
    gpu = endpoints(RIG)[0]
    plan = FlexGenPlan(
        8, 1, 0, 100 - wd, 0, 100, 100, 0, cpu_attention=True, compress_weight=compress_weight, gpu=gpu
    )
    r = simulate(get_strategy("flexgen"), plan, RIG, get_model("opt-6.7b"), Workload(8, 64, 2))
    assert r.feasible, r.reason
    assert set(seen) == ({CPU} if shared else set())
