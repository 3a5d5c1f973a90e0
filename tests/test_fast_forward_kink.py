"""A decode step is the longest of its lanes' chains, each growing linearly with the KV length: convex
and piecewise linear in it. Where one lane takes over between the fast-forward's two samples, the
chord between them runs above the steps; the samples' own growth per step gives each one's line, and
with one bend between them the steps are the larger of the two (``run._kinked``). With two bends, or
growth that falls again, a middle sample where the two lines cross gives a third line (``run._bent``)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.sim.run import _crossing, _run_end, simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload


def _stream(step, first: int, rounds: int, start: float = 0.0) -> list[tuple[float, int]]:
    """Token times of one sequence: round r + 1 ``step(first + r)`` after round r (round 1 at ``start``)."""
    t, out = start, [(start, 1)]
    for r in range(1, rounds):
        t += step(first + r)
        out.append((t, 1))
    return out


@settings(max_examples=50, deadline=None)
@given(
    st.floats(1e-3, 1e-1),
    st.floats(1e-5, 1e-3),
    st.floats(2.0, 6.0),
    st.floats(0.1, 0.9),
    st.sampled_from([(16, 200), (16, 100), (6, 30)]),
)
def test_one_bend_between_the_samples_is_followed_exactly(base, slope, steeper, at, gn):
    """Steps max(a + s i, c + k s i) with the bend between the samples: the run's end as every step's."""
    g, n = gn
    h = min(g // 2, g - 4)
    bend = g + at * (n - 2 * g)  # a step index between the samples
    lo = lambda i: base + slope * i  # noqa: E731
    hi = lambda i: lo(bend) + steeper * slope * (i - bend)  # noqa: E731
    step = lambda i: max(lo(i), hi(i))  # noqa: E731
    every = sum(step(i) for i in range(1, n))  # round 1 at 0, round n after n - 1 steps
    head, tail = _stream(step, 0, g), _stream(step, n - g, g)
    end = _run_end({0: head}, {0: tail}, g, n, h, 1)
    assert end == pytest.approx(every, rel=1e-9)
    k = _crossing({0: head}, {0: tail}, g, n, h)  # and with the middle sample fast_forward takes
    if k is not None:
        mid = _stream(step, k, g)
        assert _run_end({0: head}, {0: tail}, g, n, h, 1, (k, {0: mid})) == pytest.approx(every, rel=1e-9)


def test_straight_steps_keep_the_chord():
    """Steps growing evenly: the lines coincide and the chord is kept, to the bit."""
    step = lambda i: 0.02 + 1e-5 * i  # noqa: E731
    g, n, h = 16, 200, 8
    head, tail = _stream(step, 0, g), _stream(step, n - g, g)
    assert _run_end({0: head}, {0: tail}, g, n, h, 1) == pytest.approx(sum(step(i) for i in range(1, n)))


def test_fast_forward_over_a_4bit_disk_cache_matches_every_step():
    """flexgen-t4 OPT-6.7B 8 x 4, 4-bit weights 30/0/70, a 4-bit KV cache on disk, 256 + 64: the disk
    lane's KV reads take over from ~KV 284 (a round grew 0.64 ms per token before, 2.11 after). The
    chord ran +0.022 % above every step's run; now within 1e-5."""
    rig = load_rig("flexgen-t4")
    plan = FlexGenPlan(
        8, 4, 30, 0, 0, 0, 100, 0, cpu_attention=False, compress_cache=True, compress_weight=True,
        gpu=endpoints(rig)[0],
    )  # fmt: skip
    wl, m, fg = Workload(32, 256, 64), get_model("opt-6.7b"), get_strategy("flexgen")
    fast, exact = simulate(fg, plan, rig, m, wl), simulate(fg, plan, rig, m, wl, exact=True)
    assert "fast_forward_sample" in fast.extras
    assert fast.e2e_s == pytest.approx(exact.e2e_s, rel=1e-5)


@pytest.mark.parametrize(
    ("rig_name", "model", "plan_args", "compress_weight"),
    [
        # round growth 1.65 ms -> 7.84 ms (KV ~283) -> 10.0 ms (KV ~526) per token: -1.82 % (chord +0.79 %)
        ("flexgen-t4", "opt-30b", (8, 4, 50, 50, 0, 60), True),
        # 0.53 -> 0.72 -> 0.60 ms per token (not convex): -0.55 % (chord -0.03 %)
        ("hexgen-homogeneous", "llama2-7b", (32, 1, 0, 50, 20, 60), False),
    ],
)
def test_more_than_one_bend_between_the_samples_is_followed(rig_name, model, plan_args, compress_weight):
    """256 + 300: fast-forward against every step within 0.5 % (the two samples' larger line ran
    -1.82 % and -0.55 % under; the middle sample gives -0.0003 % and -0.13 %)."""
    rig = load_rig(rig_name)
    plan = FlexGenPlan(
        *plan_args, 100, 0, cpu_attention=False, compress_weight=compress_weight, gpu=endpoints(rig)[0]
    )
    gbs, nb = plan_args[:2]
    wl, m, fg = Workload(gbs * nb, 256, 300), get_model(model), get_strategy("flexgen")
    fast, exact = simulate(fg, plan, rig, m, wl), simulate(fg, plan, rig, m, wl, exact=True)
    assert "fast_forward_sample" in fast.extras
    assert fast.e2e_s == pytest.approx(exact.e2e_s, rel=5e-3)


@settings(max_examples=50, deadline=None)
@given(
    st.floats(1e-3, 1e-1),
    st.floats(1e-5, 1e-3),
    st.floats(1.5, 4.0),
    st.floats(1.5, 4.0),
    st.floats(0.05, 0.4),
    st.floats(0.6, 0.95),
)
def test_two_bends_between_the_samples_are_followed_exactly(base, slope, up1, up2, at1, at2):
    """Convex steps max(a + s i, b + k1 s i, c + k1 k2 s i), both bends between the samples and the
    middle line longer than a sample: the head's and the tail's lines cross on it, so the middle
    sample taken there (``_crossing``) reads it, and the run's end is every step's."""
    g, n, h = 16, 300, 8
    b1, b2 = g + at1 * (n - 2 * g), g + at2 * (n - 2 * g)
    one = lambda i: base + slope * i  # noqa: E731
    two = lambda i: one(b1) + up1 * slope * (i - b1)  # noqa: E731
    three = lambda i: two(b2) + up1 * up2 * slope * (i - b2)  # noqa: E731
    step = lambda i: max(one(i), two(i), three(i))  # noqa: E731
    head, tail = _stream(step, 0, g), _stream(step, n - g, g)
    k = _crossing({0: head}, {0: tail}, g, n, h)
    assert k is not None
    assume(b1 + 1 < k + h and k + g - 1 < b2 - 1)  # the middle sample's steps on the middle line
    mid = _stream(step, k, g)
    end = _run_end({0: head}, {0: tail}, g, n, h, 1, (k, {0: mid}))
    assert end == pytest.approx(sum(step(i) for i in range(1, n)), rel=1e-9)
