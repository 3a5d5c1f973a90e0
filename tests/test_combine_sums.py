"""``combine``'s sums in one pass are ``sum()``'s and ``max()``'s, to the bit (signed zeros, NaN and
infinities included): the reference below is its form before (43ba457)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.op_cost import OpCost, combine, paced


def _reference(costs):
    busy = sum(max(c.compute_s, c.memory_s) for c in costs)
    nbytes = sum(c.memory_bytes for c in costs)
    time_s = sum(c.time_s for c in costs)
    issue = device = 0.0
    if any(c.issue_s for c in costs):
        issue = sum(c.issue_s for c in costs)
        device = sum(c.device_s if c.issue_s else c.time_s for c in costs)
        time_s = paced(issue, device)
    return OpCost(
        time_s=time_s,
        compute_s=busy,
        memory_s=sum(c.memory_s for c in costs),
        overhead_s=sum(c.overhead_s for c in costs),
        memory_bytes=nbytes,
        achieved_mem_bw=nbytes / busy if busy > 0 else float("inf"),
        memory_bound_s=sum(c.memory_bound_s for c in costs),
        issue_s=issue,
        device_s=device,
    )


_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1.0, 0]),
    st.integers(-(10**6), 10**6),
)
_cost = st.builds(OpCost, *(_number for _ in range(9)))


@settings(max_examples=400, deadline=None)
@given(st.lists(_cost, max_size=14))
def test_combine_is_its_sums_to_the_bit(costs):
    assert repr(combine(costs)) == repr(_reference(costs))
    assert repr(combine(tuple(costs))) == repr(_reference(costs))
