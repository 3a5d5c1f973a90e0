"""FlexGen's ``--pin-weight 0`` second pass (``search_free``) reuses what the first pass worked out,
and gets what working it out again gives: ``_confirmable``'s work per LP optimum (``_Placings``)."""

from __future__ import annotations

import random

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp
from hetsim.planner.flexgen_lp import _confirmable, _Placings, lp_candidates_lazy
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload


@pytest.fixture(scope="module")
def headline():
    """The headline's first 60 candidates with --pin-weight 0 chains in them (pinned and unpinned)."""
    rig, model = load_rig("mixed-lab"), get_model("llama2-70b")
    ends = endpoints(rig)
    wl = Workload(1, 512, 32)
    it = lp_candidates_lazy(rig, model, wl, ends, None, False, (False,))
    sols = [s for _, s in zip(range(60), it, strict=False)]
    assert {s.flags.pin_weight for s in sols} == {True, False}
    return rig, model, wl, ends, sols


def confirm(headline, sols, placings=None):
    rig, model, _, ends, _ = headline
    return _confirmable(sols, model, ends, None, lambda p: Workload(p.block_size, 512, 32), rig, placings)


def test_a_second_confirmable_over_the_same_optima_gives_the_same_plans_and_works_nothing_out(
    headline, monkeypatch
):
    sols = headline[4]
    placings = _Placings()
    first = confirm(headline, sols, placings)
    assert len(first) >= 3
    calls = []
    for name in ("to_plan", "_runnable", "cost_model", "released_time_per_seq", "_repinned", "fits"):
        real = getattr(flexgen_lp, name)
        monkeypatch.setattr(
            flexgen_lp, name, lambda *a, _f=real, _n=name, **k: calls.append(_n) or _f(*a, **k)
        )
    assert confirm(headline, sols, placings) == first
    assert calls == []


@pytest.mark.parametrize("seed", range(4))
def test_reused_work_gives_what_fresh_work_gives_in_any_order(headline, seed):
    """Each optimum's answers are its own: another order or subset (a second pass merges its
    candidates into the first's ranking) read with the first's work equals a fresh read."""
    sols = list(headline[4])
    placings = _Placings()
    confirm(headline, sols, placings)
    rnd = random.Random(seed)
    again = rnd.sample(sols, len(sols) - 10)
    again.sort(key=lambda s: (round(s.time_per_seq_s, 2), rnd.random()))  # near-ties reordered
    assert confirm(headline, again, placings) == confirm(headline, again)


def test_each_optimum_reads_back_its_own_placement(headline):
    """Optima alike but for their flags (a pinned one and its --pin-weight 0 twin: the same gbs, nb
    and time order) each get their own plan back, not the other's."""
    _, model, _, ends, sols = headline
    placings = _Placings()
    confirm(headline, sols, placings)
    read = [s for s in sols if (id(s), "plan") in placings.done]
    assert {s.flags.pin_weight for s in read} == {True, False}

    def unexpected():
        raise AssertionError("worked out again")

    for sol in read:
        plan = flexgen_lp.to_plan(sol, model, ends[0], None)
        assert placings.once(sol, "plan", unexpected) == plan
        assert plan.pin_weight == sol.flags.pin_weight
