"""Alpha-beta collectives: the closed forms on hand-computed numbers, and their monotonicity."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.collectives import CollectiveCost, allgather_time, allreduce_time, send_time

PROPS = settings(max_examples=50, deadline=None)

ranks_st = st.integers(min_value=1, max_value=256)
# real messages: nothing, or at least a byte (sizes like 1e-311 B only test float underflow)
bytes_st = st.one_of(
    st.just(0.0), st.floats(min_value=1.0, max_value=1e12, allow_nan=False, allow_infinity=False)
)
alpha_st = st.floats(min_value=0.0, max_value=1e-1, allow_nan=False, allow_infinity=False)
beta_st = st.floats(min_value=1e6, max_value=1e13, allow_nan=False, allow_infinity=False)
factor_st = st.floats(min_value=1.0, max_value=1e3, allow_nan=False, allow_infinity=False)


def ring(p: int, m: float, a: float, b: float) -> float:
    return 2 * (p - 1) * (a + m / (p * b))


def doubling(p: int, m: float, a: float, b: float) -> float:
    return math.ceil(math.log2(p)) * (a + m / b)


# ---- closed forms on numbers worked out by hand --------------------------------------------------
def test_two_ranks_take_recursive_doubling_when_latency_dominates():
    # ring: 2 x 1 x (1 ms + 1 GB / (2 x 1 GB/s)) = 1.002 s; doubling: 1 x (1 ms + 1 s) = 1.001 s
    c = allreduce_time(2, 1e9, 1e-3, 1e9)
    assert c == CollectiveCost(pytest.approx(1.001, rel=1e-12), "recursive-doubling")


def test_four_ranks_large_message_take_the_ring():
    # ring: 2 x 3 x (1 GB / 4 GB/s) = 1.5 s; doubling: 2 x 1 s = 2 s
    c = allreduce_time(4, 1e9, 0.0, 1e9)
    assert c.algorithm == "ring"
    assert c.time_s == pytest.approx(1.5, rel=1e-12)


def test_eight_ranks_small_message_take_recursive_doubling():
    # ring: 14 x (10 us + 1 KB / 80 GB/s) = 140.175 us; doubling: 3 x (10 us + 0.1 us) = 30.3 us
    c = allreduce_time(8, 1e3, 1e-5, 1e10)
    assert c.algorithm == "recursive-doubling"
    assert c.time_s == pytest.approx(30.3e-6, rel=1e-12)
    assert ring(8, 1e3, 1e-5, 1e10) == pytest.approx(140.175e-6, rel=1e-12)


def test_non_power_of_two_rounds_the_doubling_steps_up():
    # 3 ranks: ceil(log2 3) = 2 steps of 3 s = 6 s; the ring is 2 x 2 x (3 GB / 3 GB/s) = 4 s
    c = allreduce_time(3, 3e9, 0.0, 1e9)
    assert c == CollectiveCost(pytest.approx(4.0, rel=1e-12), "ring")
    # with 1 s of latency per message: ring 4 x 2 = 8 s, doubling 2 x 4 = 8 s: a tie
    tie = allreduce_time(3, 3e9, 1.0, 1e9)
    assert tie.time_s == pytest.approx(8.0, rel=1e-12)


def test_a_tie_goes_to_recursive_doubling():
    # two ranks, no latency: both are m / beta exactly
    c = allreduce_time(2, 4e9, 0.0, 2e9)
    assert c == CollectiveCost(2.0, "recursive-doubling")


def test_allgather_is_p_minus_one_ring_steps():
    c = allgather_time(4, 1e6, 1e-5, 1e9)
    assert c.algorithm == "ring"
    assert c.time_s == pytest.approx(3 * (1e-5 + 1e-3), rel=1e-12)


def test_send_is_alpha_plus_bytes_over_beta():
    c = send_time(2.5e9, 2e-3, 1e9)
    assert c == CollectiveCost(pytest.approx(2.502, rel=1e-12), "p2p")


@pytest.mark.parametrize("ranks", [0, 1])
def test_a_world_of_one_costs_nothing(ranks):
    assert allreduce_time(ranks, 1e9, 1e-3, 1e9) == CollectiveCost(0.0, "none")
    assert allgather_time(ranks, 1e9, 1e-3, 1e9) == CollectiveCost(0.0, "none")


@pytest.mark.parametrize("nbytes", [0.0, -1.0])
def test_no_bytes_cost_nothing(nbytes):
    assert allreduce_time(8, nbytes, 1e-3, 1e9) == CollectiveCost(0.0, "none")
    assert allgather_time(8, nbytes, 1e-3, 1e9) == CollectiveCost(0.0, "none")
    assert send_time(nbytes, 1e-3, 1e9) == CollectiveCost(0.0, "none")


# ---- properties ---------------------------------------------------------------------------------
@PROPS
@given(p=st.integers(min_value=2, max_value=256), m=bytes_st.filter(lambda x: x > 0), a=alpha_st, b=beta_st)
def test_allreduce_is_the_cheaper_of_ring_and_doubling(p, m, a, b):
    c = allreduce_time(p, m, a, b)
    r, d = ring(p, m, a, b), doubling(p, m, a, b)
    assert c.time_s == min(r, d)
    assert c.algorithm == ("recursive-doubling" if d <= r else "ring")
    # at least one message's latency
    assert c.time_s >= a


@PROPS
@given(p=ranks_st, m1=bytes_st, m2=bytes_st, a=alpha_st, b=beta_st)
def test_more_bytes_never_cost_less(p, m1, m2, a, b):
    lo, hi = sorted((m1, m2))
    assert allreduce_time(p, lo, a, b).time_s <= allreduce_time(p, hi, a, b).time_s
    assert allgather_time(p, lo, a, b).time_s <= allgather_time(p, hi, a, b).time_s
    assert send_time(lo, a, b).time_s <= send_time(hi, a, b).time_s


@PROPS
@given(p=ranks_st, m=bytes_st, a=alpha_st, b=beta_st, k=factor_st)
def test_more_bandwidth_is_never_slower(p, m, a, b, k):
    assert allreduce_time(p, m, a, b * k).time_s <= allreduce_time(p, m, a, b).time_s
    assert allgather_time(p, m, a, b * k).time_s <= allgather_time(p, m, a, b).time_s
    assert send_time(m, a, b * k).time_s <= send_time(m, a, b).time_s


@PROPS
@given(p=ranks_st, m=bytes_st, a=alpha_st, extra=alpha_st, b=beta_st)
def test_more_latency_is_never_faster(p, m, a, extra, b):
    assert allreduce_time(p, m, a + extra, b).time_s >= allreduce_time(p, m, a, b).time_s
    assert allgather_time(p, m, a + extra, b).time_s >= allgather_time(p, m, a, b).time_s
    assert send_time(m, a + extra, b).time_s >= send_time(m, a, b).time_s


@PROPS
@given(p=ranks_st, q=ranks_st, m=bytes_st, a=alpha_st, b=beta_st)
def test_more_ranks_are_never_faster(p, q, m, a, b):
    lo, hi = sorted((p, q))
    assert allreduce_time(lo, m, a, b).time_s <= allreduce_time(hi, m, a, b).time_s
    assert allgather_time(lo, m, a, b).time_s <= allgather_time(hi, m, a, b).time_s


def test_a_measured_allreduce_line_replaces_the_ring_formula():
    """A link's measured line (latency + bytes / bandwidth) is what the all-reduce costs; without
    one the alpha-beta ring / recursive doubling is unchanged."""
    from hetsim.costs.collectives import allreduce_time

    plain = allreduce_time(4, 16384.0, 1e-6, 300e9)
    assert plain.algorithm in ("ring", "recursive-doubling")
    measured = allreduce_time(4, 16384.0, 1e-6, 300e9, (40e-6, 200e9))
    assert measured.algorithm == "measured"
    assert measured.time_s == pytest.approx(40e-6 + 16384.0 / 200e9)
    assert allreduce_time(1, 16384.0, 1e-6, 300e9, (40e-6, 200e9)).time_s == 0.0
