"""HeteGen's floors of a whole run (``FloorParts``: split, resident and GPU-only bookings) and of
any plan its search returns (``search_floor``) are lower bounds of what the engine gives, and the
batch ladder that leaves out a neighbour rung by them picks the batch and plan it picks without."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.api import problem
from hetsim.planner import hetegen_knapsack
from hetsim.planner.hetegen_knapsack import plan_hetegen, search_floor
from hetsim.planner.ranking import estimate, evaluator, remembering
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.hetegen import e2e_floor

HETEGEN = get_strategy("hetegen")
ladder = importlib.import_module("hetsim.planner.search")  # the module (``planner.search`` is a function)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    batch=st.sampled_from([1, 3, 16, 64, 157]),
    prompt=st.sampled_from([64, 512, 1024]),
    gen=st.sampled_from([1, 2, 6, 7, 33]),
    budget=st.sampled_from([None, 6.25e9, 20e9]),
)
def test_floors_are_below_the_estimate_and_the_run(a10, lab, batch, prompt, gen, budget):
    """Every GPU kind's plan on two rigs: the estimate is at least the floor of its own resident set
    (``run_floors`` through ``Estimator.floor``), that at least the floor over every resident set
    (``_Candidate.estimate_floor``), and ``search_floor`` at most the estimate of the plan ``search``
    returns; the plan's floor is at least ``e2e_floor`` (split modules alone) less a part in 1e9."""
    for p in (a10, lab):
        wl = replace(p.workload, batch=batch, prompt_len=prompt, gen_len=gen)
        evaluate = evaluator(HETEGEN, p.rig, p.model, wl)
        for c in hetegen_knapsack._candidates(p.rig, p.model, wl):
            c.budget = budget or c.budget
            plan = plan_hetegen(p.rig, p.model, wl, c.gpu, c.budget)
            floor = evaluate.floor(plan)
            assert c.estimate_floor() <= floor * (1 + 1e-12)
            assert floor >= e2e_floor(plan, p.rig, p.model, wl) * (1 - 2e-9)
            r = estimate(HETEGEN, plan, p.rig, p.model, wl)
            if r.feasible:
                assert r.e2e_s >= floor
            if gen <= 6:  # the estimate is the run itself
                assert simulate(HETEGEN, plan, p.rig, p.model, wl).e2e_s == r.e2e_s or not r.feasible
        got = hetegen_knapsack.search(p.rig, p.model, wl, "throughput", evaluate)
        if got is not None and (r := evaluate(got)).feasible:
            assert r.e2e_s >= search_floor(p.rig, p.model, wl)


def test_the_floor_is_within_a_percent_of_the_headline_neighbour(lab):
    """llama2-70b on mixed-lab at batch 165 (the headline ladder's neighbour of 330): the bound is
    113.20 s, the searched plan's estimate 113.68 s (the run's; at 156 of 312 before session 23's binary
    GPU capacities: 110.91 and 111.39); a GPU-only bound (split modules alone) is lower."""
    wl = replace(lab.workload, batch=165)
    floor = search_floor(lab.rig, lab.model, wl)
    plan = hetegen_knapsack.search(
        lab.rig, lab.model, wl, "throughput", evaluator(HETEGEN, lab.rig, lab.model, wl)
    )
    e2e = estimate(HETEGEN, plan, lab.rig, lab.model, wl).e2e_s
    assert floor == pytest.approx(113.198, abs=1e-3) and e2e == pytest.approx(113.678, abs=1e-3)
    assert e2e_floor(plan, lab.rig, lab.model, wl) < 0.85 * floor


def _searched(monkeypatch) -> list[int]:
    batches: list[int] = []
    search = ladder.search

    def spy(strategy, rig, model, workload, *a, **k):
        batches.append(workload.batch)
        return search(strategy, rig, model, workload, *a, **k)

    monkeypatch.setattr(ladder, "search", spy)
    return batches


def test_the_headline_ladder_leaves_out_the_neighbour_rung(lab, monkeypatch):
    """The headline compare's HeteGen ladder (gen 32): rungs 1..256 and the largest batch, 330, are
    searched; the neighbour 165 is not (its bound, 113.20 s, is above the 103.31 s in which its
    tokens come at 330's rate), and 330 is chosen as before; 350, a sixteenth past the default plan's
    cap, is searched to see whether the searched plan holds more (it does not). (312, 156 and 313
    before session 23's binary GPU capacities; the probe was one batch past the cap before its
    climb fix.)"""
    searched = _searched(monkeypatch)
    wl = replace(lab.workload, gen_len=32)
    with remembering():
        got = ladder.best_batch(HETEGEN, lab.rig, lab.model, wl, "throughput")
    assert got == 330
    assert searched == [1, 4, 16, 64, 256, 330, 350]


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    case=st.sampled_from(
        [
            ("opt-30b", "hetegen-a10"),
            ("opt-13b", "hetegen-a10"),
            ("llama2-70b", "mixed-lab"),
            ("llama2-13b", "mixed-lab"),
        ]
    ),
    prompt=st.sampled_from([64, 512, 2048]),
    gen=st.sampled_from([2, 8, 32, 200]),
)
def test_the_pruned_ladder_picks_what_the_full_ladder_picks(case, prompt, gen):
    """With and without ``SEARCH_FLOORS``: the same batch and plan, and every rung left out ranks
    below the winner when searched after all."""
    p = problem(case[0], case[1], batch=None, prompt_len=prompt, gen_len=gen)
    args = (HETEGEN, p.rig, p.model, p.workload, "throughput")
    with remembering():
        pruned = ladder._Ladder(*args, False)
        best = pruned.best()
        plan = pruned.searched(best)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ladder, "SEARCH_FLOORS", {})
        with remembering():
            full = ladder._Ladder(*args, False)
            assert full.best() == best
            assert full.searched(best) == plan
    for b in set(full.scores) - set(pruned.scores):
        assert full.scores[b] > full.scores[best]
