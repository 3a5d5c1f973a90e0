"""The FlexGen search's memos change no number: ``_cost``'s op-block costs (kept across LPs) and the
placed cost model ``_confirmable`` shares between ``released_time_per_seq`` and ``_repinned``."""

from __future__ import annotations

import pytest

from hetsim.costs.op_cost import block_cost
from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp as fl
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload


@pytest.fixture(scope="module")
def headline():
    rig, model = load_rig("mixed-lab"), get_model("llama2-70b")
    wl = Workload(batch=96, prompt_len=512, gen_len=32)
    return rig, model, wl, endpoints(rig)


def test_t_memo_gives_block_costs_time_and_a_cold_cost_model_equals_a_warm_one(headline):
    rig, model, wl, ends = headline
    fl._T_MEMO.clear()
    fl._BY_ID.clear()
    for fl_ in fl.candidate_flags(bool(ends[2])):
        cold = fl._lp_key(fl.cost_model(rig, model, wl, 32, 3, fl_, ends))
        assert fl._T_MEMO and fl._BY_ID  # filled
        for (_, ops), (dev, cost) in fl._T_MEMO.items():
            assert cost == block_cost(dev, ops)
        for (i, j), (dev, ops, cost) in fl._BY_ID.items():  # by identity: the same costs
            assert (i, j) == (id(dev), id(ops)) and cost == block_cost(dev, ops)
        warm = fl._lp_key(fl.cost_model(rig, model, wl, 32, 3, fl_, ends))
        assert warm == cold


def test_a_shared_placed_cost_model_gives_the_same_times(headline):
    rig, model, wl, ends = headline
    sols, _ = fl.lp_candidates(rig, model, wl, ends)
    assert sols
    for sol in sols[:6]:
        plan = fl.to_plan(sol, model, ends[0], None)
        cm = fl.cost_model(rig, model, wl, sol.gbs, sol.nb, sol.flags, ends, None, plan)
        args = (sol, plan, rig, model, wl, ends, None)
        assert fl.released_time_per_seq(*args, cm) == fl.released_time_per_seq(*args)
        assert fl._repinned(*args, cm) == fl._repinned(*args)


def test_links_are_worked_out_once_per_rig_and_tell_reading_what_they_read(headline):
    from dataclasses import replace

    from hetsim.hardware.rig import reading

    rig, _, _, ends = headline
    fl._LINKS.clear()
    with reading() as first:
        got = fl.links(rig, *ends)
    assert got == fl._links(rig, *ends)
    assert first.routes  # the routes it asked for
    with reading() as again:  # a hit: the same object, the same reads told
        assert fl.links(rig, *ends) is got
    assert again.routes == first.routes and again.links == first.links
    other = replace(rig)  # another rig object: worked out for it
    assert fl.links(other, *ends) == got and fl.links(other, *ends) is not got
