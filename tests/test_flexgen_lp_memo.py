"""The FlexGen search's memos change no number: its op-block costs (the engine's memo, kept across
LPs) and the placed cost model ``_confirmable`` shares between ``released_time_per_seq`` and
``_repinned``."""

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


def test_lp_op_costs_are_the_engines_and_a_cold_cost_model_equals_a_warm_one(headline, monkeypatch):
    """The LP's op-block costs come from the engine's memo (``rig_cost``): each is ``block_cost``, an
    engine on the rig finds it there (the same object), and a warm cost model is the cold one."""
    from hetsim.sim import engine as engine_mod
    from hetsim.sim.engine import Engine

    rig, model, wl, ends = headline
    monkeypatch.setattr(engine_mod, "_RIG_COSTS", {})
    monkeypatch.setattr(engine_mod, "_DEVICE_COSTS", {})
    for fl_ in fl.candidate_flags(bool(ends[2])):
        cold = fl._lp_key(fl.cost_model(rig, model, wl, 32, 3, fl_, ends))
        by_value, by_id, _ = engine_mod._rig_costs(rig)
        assert by_value and by_id  # filled
        blocks = [(dev, ops, cost) for (dev, ops), cost in by_value.items() if isinstance(ops, tuple)]
        assert blocks
        for dev, ops, cost in blocks:
            assert cost == block_cost(rig.devices[dev], ops)
        for (dev, i), (ops, cost) in by_id.items():  # by identity: the same costs
            assert i == id(ops) and cost == block_cost(rig.devices[dev], ops)
        engine = Engine(rig)
        assert all(engine.cost_of(dev, ops) is cost for dev, ops, cost in blocks)
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


def test_a_search_keys_no_lp_unless_its_process_remembers_optima(headline, monkeypatch):
    """A compare's LPs seldom repeat: a search outside a sweep neither keys (``_lp_key``) nor keeps its
    optima; after ``remember_optima`` it keeps each, and asks the memo first."""
    rig, model, _, _ = headline
    monkeypatch.setattr(fl, "_OPTIMA", None)
    keyed = []
    real_key = fl._lp_key
    monkeypatch.setattr(fl, "_lp_key", lambda cm: keyed.append(cm) or real_key(cm))
    wl = Workload(8, 128, 8)
    cold = fl.search_policy(rig, model, wl).plan
    assert not keyed and fl._OPTIMA is None
    fl.remember_optima()
    assert fl._OPTIMA == {}
    warm = fl.search_policy(rig, model, wl).plan
    assert warm == cold and keyed and len(fl._OPTIMA) == len({real_key(cm) for cm in keyed})


def test_a_sweeps_flexgen_point_remembers_optima_and_a_repeated_one_solves_no_lp(monkeypatch):
    """``run_point`` of a FlexGen point turns ``remember_optima`` on; the same point again (the sweep's
    own answers switched off, so only the optima serve it) builds no LP."""
    from hetsim.sweep import runner

    monkeypatch.setattr(fl, "_OPTIMA", None)
    monkeypatch.setattr(runner, "REMEMBER_ANSWERS", False)
    point = {"model": "llama2-7b", "rig": "mixed-lab", "strategy": "flexgen", "batch": 8,
             "prompt_len": 64, "gen_len": 4, "objective": "throughput", "search": True}  # fmt: skip
    first = runner.run_point(point)
    assert first["feasible"] and not first["error"] and fl._OPTIMA
    built = []
    real = fl.build_lp
    monkeypatch.setattr(fl, "build_lp", lambda cm: built.append(cm) or real(cm))
    again = runner.run_point(point)
    assert again == first and not built
