"""``combine``'s one-pass loop gives, to the bit (signed zeros, NaN and infinities included), what its
definition gives written with Python's ``sum()`` and ``max()`` (``_by_builtins``); and, by hand, the
numbers of a small block."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.op_cost import OpCost, combine, paced


def _by_builtins(costs):
    """An independent oracle: the block's definition, each field one ``sum()`` over the ops (busy time
    of each op's ``max(compute, memory)``; where any op is issued by the host, time the summed issue and
    device times' ``paced``), not the code's loop. What it pins is that loop's arithmetic: one
    accumulator per field from 0, in order, and a max that keeps the first of two equal values."""
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


def test_a_block_of_two_ops_by_hand():
    # a memory-bound op (3 s of memory traffic in its 3.5 s) and a compute-bound one the host issues
    a = OpCost(3.5, 1.0, 3.0, 0.5, 600.0, 200.0, memory_bound_s=3.5)
    b = OpCost(2.0, 2.0, 0.5, 0.0, 100.0, 200.0, issue_s=2.5, device_s=2.0)
    got = combine([a, b])
    # busy 3 + 2 s, 700 B over it; issue 2.5 s paces nothing: the device takes 3.5 + 2.0 s
    assert got == OpCost(5.5, 5.0, 3.5, 0.5, 700.0, 140.0, memory_bound_s=3.5, issue_s=2.5, device_s=5.5)
    slow = OpCost(2.0, 2.0, 0.5, 0.0, 100.0, 200.0, issue_s=9.0, device_s=2.0)
    assert combine([a, slow]).time_s == 9.0  # the host's 9 s of issue paces the block


_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1.0, 0]),
    st.integers(-(10**6), 10**6),
)
_cost = st.builds(OpCost, *(_number for _ in range(9)))


@settings(max_examples=400, deadline=None)
@given(st.lists(_cost, max_size=14))
def test_combine_is_its_sums_to_the_bit(costs):
    assert repr(combine(costs)) == repr(_by_builtins(costs))
    assert repr(combine(tuple(costs))) == repr(_by_builtins(costs))
