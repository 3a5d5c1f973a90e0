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
