"""FlexGen's search with more memory never picks a slower plan: the plan it picked with less still fits.

Along a few GPU budgets (``--gpu-mem-budget``) and host-memory sizes on flexgen-t4 (FlexGen's own
T4 VM, arXiv 2303.06865 Sec. 6) and hetegen-a10, the search's pick is compared between neighbours in
two currencies:

- its six-step estimate (``hetsim.planner.ranking.estimate``), what the search maximises: the smaller
  budget's pick fits the larger one, so any drop is a plan the search failed to consider (a miss of
  the LP's candidates, their rounding to released steps, or ``_confirmable``), with no tolerance;
- the full run's throughput, which can drop by as much as the estimate errs more on one pick than on
  the other: ``ESTIMATE_SPREAD``.

Every pair here is non-decreasing in both. At 10cd767 OPT-30B on the T4 fell from 8 to 8.5 GB,
7.5429 -> 7.5198 tok/s (estimate 7.6277 -> 7.6083), an LP optimum dropped for its activations
(below); of 85 neighbouring pairs swept (the 91 picks below) it was the only drop. The fgs review's
OPT-30B 14 -> 15 GB drop, 8.478 -> 8.345 tok/s, was two rigs: its 15 GB run read a variant T4 with
``matmul_half_rows: 90`` (8.310 at 14 GB, 8.345 at 15 GB); the shipped T4 gives 8.515 at 15 GB.
``tests/test_flexgen_lp.py::test_flexgen_search_is_not_slower_with_more_gpu_memory`` holds the T4's
whole GB 8..16 by the full run, to 0.5 % (the 8.5 GB drop, 0.31 %, passed it).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from itertools import pairwise

import pytest

from hetsim import api
from hetsim.planner.flexgen_lp import _runnable, endpoints, lp_candidates_lazy, to_plan
from hetsim.planner.ranking import estimate
from hetsim.sim.run import fits
from hetsim.strategies.base import get_strategy

pytestmark = pytest.mark.slow

FLEXGEN = get_strategy("flexgen")
T4 = "hardware_profiles/rigs/flexgen-t4.yaml"
A10 = "hardware_profiles/rigs/hetegen-a10.yaml"
GB = 1e9

# The six-step estimate of a pick against its full run over 91 picks (OPT-6.7B/13B/30B on the T4 at
# 8..16 GB by 0.5, OPT-13B/30B 128 + 32 on the A10 at 10..24 GB, OPT-30B on the T4 at 110..200 GB of host):
# +0.33 % to +6.91 %; the largest gap between neighbours' errors is 4.22 % (OPT-13B on the A10, 20 ->
# 22 GB: 256 x 2 at +6.48 %, 192 x 1 at +2.26 %). A full run may then fall by that much though the
# search ranked rightly; 5 % also covers the 5.2 % miss on a plan with its KV split GPU/CPU (opt-13b
# on hexgen-homogeneous, tests/test_estimate_passes.py's xfail).
ESTIMATE_SPREAD = 0.05

# (model, rig, prompt, gen, axis, sizes in GB): neighbours pick different plans, but for 8 and 8.5 GB on
# the T4 (a drop before ``_runnable`` tried the activations on their other tier)
SWEEPS = {
    "opt-30b-t4-gpu": ("opt-30b", T4, 512, 32, "gpu", (8.0, 8.5, 9.0, 14.0, 15.0, 16.0)),
    "opt-13b-a10-gpu": ("opt-13b", A10, 128, 32, "gpu", (20.0, 22.0, 24.0)),
    "opt-30b-t4-host": ("opt-30b", T4, 512, 32, "cpu", (140.0, 160.0, 208.0)),
    "opt-30b-a10-host": ("opt-30b", A10, 128, 32, "cpu", (100.0, 110.0, 128.0)),
}


@functools.cache
def pick(model: str, hw: str, prompt: int, gen: int, axis: str, size_gb: float) -> tuple[float, float, dict]:
    """The search's pick with the ``axis`` devices' memory capped at ``size_gb``: its full run's and its
    estimate's throughput (tok/s) and its plan."""
    p = api.problem(model, hw, None, prompt, gen)
    cap = size_gb * GB
    devices = {
        n: replace(d, mem_bytes=min(d.mem_bytes, cap)) if d.kind == axis else d
        for n, d in p.rig.devices.items()
    }
    p = replace(p, rig=replace(p.rig, devices=devices))
    r = api.best_result(FLEXGEN, p, "throughput")
    assert r.feasible, (model, hw, axis, size_gb, r.reason)
    plan = FLEXGEN.plan_from_dict(r.plan)
    est = estimate(FLEXGEN, plan, p.rig, p.model, replace(p.workload, batch=r.batch))
    return r.throughput_tok_s, est.throughput_tok_s, r.plan


def _pairs(name: str) -> list[tuple[tuple, float, float]]:
    *case, sizes = SWEEPS[name]
    return [(tuple(case), a, b) for a, b in pairwise(sizes)]


@pytest.mark.parametrize("name", SWEEPS)
def test_more_memory_never_lowers_the_searchs_estimate_of_its_pick(name):
    for case, small, large in _pairs(name):
        (_, est_s, plan_s), (_, est_l, plan_l) = pick(*case, small), pick(*case, large)
        assert est_l >= est_s * (1 - 1e-9), (name, small, large, est_s, est_l, plan_s, plan_l)


@pytest.mark.parametrize("name", SWEEPS)
def test_more_memory_never_lowers_the_picks_throughput_beyond_the_estimates_spread(name):
    for case, small, large in _pairs(name):
        (run_s, _, plan_s), (run_l, _, plan_l) = pick(*case, small), pick(*case, large)
        assert run_l >= run_s * (1 - ESTIMATE_SPREAD), (name, small, large, run_s, run_l, plan_s, plan_l)


def test_an_lp_optimum_whose_activations_do_not_fit_on_their_larger_tier_runs_them_on_the_other():
    """OPT-30B 512 + 32 on flexgen-t4 at 8.5 GB: the LP's best optimum, 48 x 3 with CPU attention,
    puts 81 % of the activations on the GPU (33 % at 8 GB); the runtime keeps them on one tier and
    ``to_plan`` takes the larger, where 48 x 3 does not fit (it needs 8.70 GB). With them on the CPU
    it fits, and it is 8 GB's pick (7.5429 tok/s). Before, ``_runnable`` dropped the optimum and the
    search picked 48 x 2 at 7.5198: less than with 0.5 GB less memory."""
    p = api.problem("opt-30b", T4, None, 512, 32, 8.5 * GB)
    ends = endpoints(p.rig)
    sol = next(s for s in lp_candidates_lazy(p.rig, p.model, p.workload, ends) if (s.gbs, s.nb) == (48, 3))
    assert sol.flags.cpu_attention and 0.5 < sol.x["hg"] < 0.9, sol.x
    plan = to_plan(sol, p.model, ends[0], None)
    wl = replace(p.workload, batch=plan.block_size)
    assert plan.hg == 100.0 and not fits(FLEXGEN, plan, p.rig, p.model, wl)
    run = _runnable(sol, plan, p.rig, p.model, ends, None, lambda q: replace(p.workload, batch=q.block_size))
    assert run is not None and (run.hg, run.hc) == (0.0, 100.0) and (run.cg, run.cc) == (0, 100)
