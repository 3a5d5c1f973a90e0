"""FlexGen's free-batch search bounds a member's LP from its memory rows alone before it builds the
member's whole cost model (``flexgen_lp._weights_bound``): the block lasts at least its weight loads
(``_weights_form``: every slot's first form is its ``w`` plus terms >= 0), a form the same for every
gbs and nb of the flags, and the weights that the GPU row leaves off the GPU must load. Checked here:
those premises on random LPs, the bound below every optimum, that the lazy search still reads the
eager search's candidates, and that the headline builds fewer cost models for it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp
from hetsim.planner.flexgen_lp import (
    GBS_CHOICES,
    NB_CHOICES,
    _memory,
    _solved,
    _weights_bound,
    _weights_form,
    candidate_flags,
    cost_model,
    lp_candidates_free,
    lp_candidates_lazy,
)
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload

RIGS = ["flexgen-t4", "mixed-lab", "hetegen-a10", "a40-measured", "a100-80g-measured", "hexgen-half-budget"]
# dense (MHA, GQA) and MoE (few and many experts, MLA): the weights' split and copies differ by shape
MODELS = ["opt-6.7b", "opt-30b", "opt-175b", "llama2-13b", "llama2-70b", "mixtral-8x7b"]
MODELS += ["llama3-70b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3"]


def _nonneg(form: dict[str, float]) -> bool:
    return all(c >= 0.0 for c in form.values())


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    hw=st.sampled_from(RIGS),
    name=st.sampled_from(MODELS),
    prompt=st.sampled_from([1, 64, 512, 2048]),
    gen=st.sampled_from([1, 2, 32, 3584]),
    sizes=st.lists(
        st.tuples(st.sampled_from(GBS_CHOICES), st.sampled_from(NB_CHOICES)), min_size=2, max_size=2
    ),
    fl_index=st.integers(0, 7),
    unpinned=st.booleans(),
    budget=st.one_of(st.none(), st.floats(2e9, 8e10)),
    host=st.sampled_from([None, 32e9, 128e9]),
)
def test_the_weights_bound_is_below_every_optimum(
    hw, name, prompt, gen, sizes, fl_index, unpinned, budget, host
):
    """Two members of one flags share ``_weights_form`` (the search takes it from whichever it built
    first); each slot's first form is its ``w`` plus terms >= 0 (so the slot lasts at least ``w``);
    and ``_weights_bound`` from the member's ``_memory`` is at most its LP optimum. ``host``: the CPU's
    memory (``None``: the rig's), which decides which LPs fit and the --pin-weight 0 relays' pressure."""
    rig, model = load_rig(hw), get_model(name)
    ends = endpoints(rig)
    if host is not None:
        cpu = rig.devices[ends[1]]
        rig = replace(rig, devices={**rig.devices, ends[1]: replace(cpu, mem_bytes=host)})
    flags = candidate_flags(bool(ends[2]), True)
    fl = replace(flags[fl_index % len(flags)], pin_weight=not unpinned)
    cms = [cost_model(rig, model, Workload(g * nb, prompt, gen), g, nb, fl, ends, budget) for g, nb in sizes]
    assert _weights_form(cms[0]) == _weights_form(cms[1])
    for cm in cms:
        for (_, slot), forms in zip(cm.slots, cm.forms, strict=True):
            (k, w), *rest = forms[0]
            assert k == 1.0 and w is slot.w
            assert all(k >= 0.0 and _nonneg(f) for k, f in rest)
        memory = _memory(rig, model, Workload(cm.gbs * cm.nb, prompt, gen), cm.gbs, cm.nb, fl, ends, budget)
        assert memory == (cm.memory, cm.bounds)
        bound = _weights_bound(_weights_form(cm), memory)
        optimum = _solved(cm)[0]
        if optimum is not None:
            assert bound <= optimum[0] * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("hw,name", [("mixed-lab", "llama2-70b"), ("flexgen-t4", "opt-30b")])
def test_the_bound_is_the_optimum_where_weight_loads_are_all(hw, name):
    """One sequence, 16 + 2 tokens: the block is its weight loads (the rest is ~1e-5 of it), so the
    bound prices the GPU row right (the weights that do not fit, loaded): within 1e-3 of the optimum,
    and not above it. Left out, the row bounds nothing (0: all weights on the GPU)."""
    rig, model = load_rig(hw), get_model(name)
    ends = endpoints(rig)
    for fl in candidate_flags(True)[:2]:
        cm = cost_model(rig, model, Workload(1, 16, 2), 1, 1, fl, ends)
        form, optimum = _weights_form(cm), _solved(cm)[0][0]
        assert optimum * (1 - 1e-3) < _weights_bound(form, (cm.memory, cm.bounds)) <= optimum * (1 + 1e-9)
        assert _weights_bound(form, (((({}, 0.0)),), cm.bounds)) == 0.0


def test_the_lazy_search_with_the_bound_reads_the_eager_candidates():
    """OPT-30B on flexgen-t4 (weights over the T4's 16 GB): every candidate, in order, as the eager
    search lists them, with members left unbuilt on the weights bound alone."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    wl = Workload(1, 512, 32)
    eager, _ = lp_candidates_free(rig, model, wl, ends)
    assert list(lp_candidates_lazy(rig, model, wl, ends)) == eager


def test_the_headline_builds_fewer_cost_models(monkeypatch):
    """llama2-70b on mixed-lab, 512 + 32: the first 40 candidates are the eager search's, and the
    search builds fewer LPs' cost models than members it bounds (462 before the weights bound)."""
    rig, model = load_rig("mixed-lab"), get_model("llama2-70b")
    ends = endpoints(rig)
    wl = Workload(1, 512, 32)
    eager, _ = lp_candidates_free(rig, model, wl, ends)
    built = []
    real = flexgen_lp.cost_model
    monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
    monkeypatch.setattr(flexgen_lp, "cost_model", lambda *a, **k: built.append(a[3:5]) or real(*a, **k))
    it = lp_candidates_lazy(rig, model, wl, ends)
    assert [next(it) for _ in range(40)] == eager[:40]
    assert len(built) < 380, len(built)
