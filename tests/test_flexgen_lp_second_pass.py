"""The LP's optimum where it splits a GPU-attention cache between the CPU and the disk: K's disk read
slows V's pin on host DRAM (``_kv_load``), no linear form in cc and cd, so the LP's own objective left
it out and its optimum ran under the engine (hexgen-homogeneous, 16 GB/s disk). ``_second_pass`` times
the optimum with the delay's tangent there and solves once more with it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import Flags, _optimum, _time_at, cost_model, solve_lp, to_plan
from hetsim.sim.run import fits, simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload

RIG = load_rig("hexgen-homogeneous")
ENDS = endpoints(RIG)
GPU_ATTENTION = Flags(False, False)


@pytest.mark.parametrize(
    ("model", "gbs", "nb", "prompt", "gen", "before"),
    [("opt-30b", 32, 16, 512, 32, -3.42), ("opt-13b", 96, 16, 512, 32, -3.27)],
)
def test_the_lps_optimum_follows_the_engine_where_it_splits_the_cache(model, gbs, nb, prompt, gen, before):
    """The optimum's own time against the engine running it (its percents, the weights spread as the
    LP spreads them: ``placement="continuous"``): within 1 % (``before``: % without the second pass)."""
    m, wl = get_model(model), Workload(gbs * nb, prompt, gen)
    sol = solve_lp(RIG, m, wl, gbs, nb, GPU_ATTENTION, ENDS)
    assert sol is not None and sol.x["cc"] > 0.1 and sol.x["cd"] > 0.1, sol
    plan = replace(to_plan(sol, m, ENDS[0], None), placement="continuous")
    assert fits(get_strategy("flexgen"), plan, RIG, m, wl)
    err = sol.block_time_s / simulate(get_strategy("flexgen"), plan, RIG, m, wl).e2e_s - 1
    assert abs(err) < 0.01, (err, before)


@settings(max_examples=12, deadline=None)
@given(
    model=st.sampled_from(["opt-13b", "llama2-13b", "opt-30b"]),
    gbs=st.sampled_from([8, 16, 32, 64, 96]),
    nb=st.sampled_from([1, 2, 4, 8, 16]),
    prompt=st.sampled_from([256, 512, 1024]),
)
@example(model="opt-30b", gbs=32, nb=16, prompt=512)  # splits the cache 8/46/46
def test_the_second_pass_never_times_an_optimum_below_the_lp(model, gbs, nb, prompt):
    """The answer's time is at least the first LP's objective (the search's lower bounds, from its
    duals, stay bounds), equal to it where the cache is not split, and where it is, the time of its own
    fractions with the delay's tangent there (exact at them)."""
    m, wl = get_model(model), Workload(gbs * nb, prompt, 16)
    cm = cost_model(RIG, m, wl, gbs, nb, GPU_ATTENTION, ENDS)
    first = _optimum(cm)
    sol = solve_lp(RIG, m, wl, gbs, nb, GPU_ATTENTION, ENDS)
    if first is None:
        assert sol is None
        return
    assert sol is not None
    x = sol.x
    if x["cc"] > 1e-9 and x["cd"] > 1e-9:
        assert sol.block_time_s >= first[0] * (1 - 1e-9)
        at = {v: x[v] for v in ("cg", "cc", "cd")}
        tangent = cost_model(RIG, m, wl, gbs, nb, GPU_ATTENTION, ENDS, pin_at=at)
        assert sol.block_time_s == pytest.approx(_time_at(tangent, x), rel=1e-12)
    elif dict(first[1])["cd"] <= 1e-9 or dict(first[1])["cc"] <= 1e-9:
        assert sol.block_time_s == first[0]
