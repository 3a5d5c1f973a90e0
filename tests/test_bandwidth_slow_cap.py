"""A flow capped below 1 B/s (an absurd calibrated rate) still books; it ran off the timeline's end
(IndexError) when the cap, not the free capacity, was compared with the saturation threshold."""

import pytest

from hetsim.sim.bandwidth import BandwidthTimeline


@pytest.mark.parametrize("booked_first", [False, True])
def test_a_flow_capped_below_one_byte_per_second_books(booked_first):
    tl = BandwidthTimeline("dram", 40e9)
    if booked_first:  # the slow flow starts inside a saturated segment (to 0.1 s): the long way round
        tl.book(0.0, 0.0, 4e9, 40e9)
    end = tl.book(0.0, 0.01, 1.0, 0.5)
    assert end == pytest.approx((0.1 if booked_first else 0.01) + 1.0 / 0.5)
    assert tl.bytes_moved == pytest.approx((4e9 if booked_first else 0) + 1.0)


@pytest.mark.parametrize("cap", [0.0, -1.0, float("nan")])
@pytest.mark.parametrize("booked_first", [False, True])
def test_a_flow_that_never_moves_is_refused(cap, booked_first):
    """Judging saturation on the free capacity let a zero, negative or NaN cap through: an end before
    the start (-1 B/s), NaN, or a ZeroDivisionError; now one ValueError naming the timeline."""
    tl = BandwidthTimeline("dram", 40e9)
    if booked_first:
        tl.book(0.0, 0.0, 4e9, 40e9)
    with pytest.raises(ValueError, match="dram: a flow capped at"):
        tl.book(0.0, 0.01, 1e6, cap)
    assert tl.bytes_moved == (4e9 if booked_first else 0)
