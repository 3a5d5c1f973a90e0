"""HeteGen's alpha bisection runs only the midpoints it cannot infer, and ends exactly where the
bisection that runs every midpoint ends (on synthetic crossings and on the engine's own)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.api import problem
from hetsim.planner import hetegen_knapsack as hk
from hetsim.strategies.hetegen import measure_split, module_ops


def _every_midpoint(gap, steps=hk._BISECT_STEPS):
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if gap(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _counting(gap):
    calls = []

    def counted(x):
        calls.append(x)
        return gap(x)

    return counted, calls


@settings(max_examples=300, deadline=None)
@given(
    root=st.floats(-0.2, 1.2),
    left=st.floats(1e-6, 1e3),
    right=st.floats(1e-6, 1e3),
    flat=st.floats(0.0, 0.3),
    curve=st.floats(0.0, 3.0),
    steps=st.integers(1, 40),
)
def test_bisect_crossing_equals_running_every_midpoint(root, left, right, flat, curve, steps):
    """Non-increasing gaps: linear or curved on either side, with a stretch of exact zeros past the
    crossing (as the engine's), or no crossing in [0, 1] at all."""

    def gap(x):
        if x < root:
            return left * (root - x) * (1 + curve * (root - x))
        if x <= root + flat:
            return 0.0
        return -right * (x - root - flat) * (1 + curve * (x - root))

    assert hk.bisect_crossing(gap, steps) == _every_midpoint(gap, steps)


@settings(max_examples=100, deadline=None)
@given(edges=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6), steps=st.integers(1, 30))
def test_bisect_crossing_equals_running_every_midpoint_on_steps(edges, steps):
    """A staircase (a cost table's steps) down through zero."""
    edges = sorted(edges)

    def gap(x):
        return len(edges) / 2 - sum(x >= e for e in edges)

    assert hk.bisect_crossing(gap, steps) == _every_midpoint(gap, steps)


CASES = [
    ("llama2-70b", "mixed-lab", "prefill", 1, 512),
    ("llama2-70b", "mixed-lab", "decode", 1, 1),
    ("llama2-7b", "mixed-lab", "decode", 16, 1),
    ("opt-13b", "hetegen-a10", "decode", 1, 1),
    ("opt-30b", "flexgen-t4", "prefill", 4, 128),
]


@pytest.mark.parametrize(("model", "hw", "phase", "batch", "seq"), CASES)
def test_balanced_alpha_is_the_full_bisection_in_a_third_of_the_runs(model, hw, phase, batch, seq):
    p = problem(model, hw)
    runs = full_runs = 0
    for g in p.rig.gpus():
        cpu = p.rig.host_cpu(g.name)
        for op in module_ops(p.model, phase, batch, seq).values():

            def gap(alpha, g=g, cpu=cpu, op=op):
                _, cpu_end, gpu_end = measure_split(p.rig, g.name, cpu, op, alpha)
                return cpu_end - gpu_end

            counted, calls = _counting(gap)
            assert hk.bisect_crossing(counted) == _every_midpoint(gap)
            assert hk.balanced_alpha(p.rig, g.name, cpu, op) == _every_midpoint(gap)
            runs += len(calls)
            full_runs += hk._BISECT_STEPS
    assert runs <= full_runs / 3
