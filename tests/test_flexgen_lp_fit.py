"""Whether a GPU batch size exists in FlexGen's free-batch search (some flags' first LP fits) is
learnt from a larger one's first LP where that one's memory rows dominate the smaller's
(``flexgen_lp._dominated``): a smaller gbs at the same nb and flags needs no more memory, so the
lazy search need not solve the smaller first LPs only to learn that they fit. Checked here: the
premise on the shipped rigs and models, the rule itself, that the search stays the eager one where
the premise fails, and that those LPs are no longer solved."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp
from hetsim.planner.flexgen_lp import (
    GBS_CHOICES,
    _dominated,
    _optimum,
    candidate_flags,
    cost_model,
    lp_candidates_free,
    lp_candidates_lazy,
)
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    hw=st.sampled_from(["flexgen-t4", "mixed-lab", "hetegen-a10", "a40-measured", "ktransformers-1s"]),
    name=st.sampled_from(["opt-13b", "opt-30b", "opt-175b", "llama2-70b", "mixtral-8x7b"]),
    prompt=st.sampled_from([1, 64, 512, 2048]),
    gen=st.sampled_from([1, 32, 3584]),
    levels=st.lists(st.integers(0, len(GBS_CHOICES) - 1), min_size=2, max_size=2, unique=True),
    fl_index=st.integers(0, 7),
    unpinned=st.booleans(),
    budget=st.one_of(st.none(), st.floats(2e9, 8e10)),
)
def test_a_smaller_gpu_batch_needs_no_more_memory(hw, name, prompt, gen, levels, fl_index, unpinned, budget):
    """The premise: a smaller gbs's first LP (nb 1) is dominated, so where the larger fits it fits."""
    rig, model = load_rig(hw), get_model(name)
    ends = endpoints(rig)
    flags = candidate_flags(bool(ends[2]), True)
    fl = replace(flags[fl_index % len(flags)], pin_weight=not unpinned)
    small, large = (GBS_CHOICES[j] for j in sorted(levels))
    cms = [cost_model(rig, model, Workload(g, prompt, gen), g, 1, fl, ends, budget) for g in (small, large)]
    assert _dominated(*cms)
    if _optimum(cms[1]) is not None:
        assert _optimum(cms[0]) is not None


@pytest.fixture(scope="module")
def cm():
    rig = load_rig("flexgen-t4")
    fl = candidate_flags(True)[0]
    return cost_model(rig, get_model("opt-30b"), Workload(8, 512, 32), 8, 1, fl, endpoints(rig))


def rows(cm, i, coefs=None, rhs=None):
    memory = list(cm.memory)
    c, b = memory[i]
    memory[i] = (c if coefs is None else coefs, b if rhs is None else rhs)
    return replace(cm, memory=tuple(memory))


def test_the_rule_holds_only_where_every_row_is_dominated(cm):
    assert _dominated(cm, cm)
    c, b = cm.memory[1]
    v = next(iter(c))
    assert _dominated(rows(cm, 1, rhs=b + 1.0), cm)
    assert not _dominated(rows(cm, 1, rhs=b - 1.0), cm)  # less room
    assert _dominated(rows(cm, 1, coefs={**c, v: c[v] / 2}), cm)
    assert not _dominated(rows(cm, 1, coefs={**c, v: c[v] * 2}), cm)  # more per fraction
    # a coefficient the larger has (negative: it frees memory) and the smaller does not
    assert not _dominated(cm, rows(cm, 1, coefs={**c, "hd": -1.0}))
    assert not _dominated(cm, replace(cm, bounds={**cm.bounds, "wg": (0.0, 0.5)}))


def test_a_row_it_cannot_compare_proves_nothing(cm):
    """A NaN in either row (unordered: every comparison false) is no proof that the smaller fits."""
    c = cm.memory[1][0]
    v = next(iter(c))
    assert not _dominated(rows(cm, 1, rhs=math.nan), cm)
    assert not _dominated(cm, rows(cm, 1, rhs=math.nan))
    assert not _dominated(rows(cm, 1, coefs={**c, v: math.nan}), cm)
    assert not _dominated(cm, rows(cm, 1, coefs={**c, v: math.nan}))


def test_where_a_smaller_gpu_batch_needs_more_memory_the_search_solves_it(monkeypatch):
    """A memory model where gbs 8 alone has no room (against the premise): the eager search stops
    there (a larger gbs is tried only if a smaller one fitted); so must the lazy one, which learns it
    only by solving gbs 8 (``_dominated`` false), not from a larger gbs that fits."""
    real = flexgen_lp.cost_model

    def squeezed(rig, model, wl, gbs, *a, **k):
        out = real(rig, model, wl, gbs, *a, **k)
        if gbs == 8:
            out = replace(out, memory=tuple((c, -1.0) for c, _ in out.memory))
        return out

    monkeypatch.setattr(flexgen_lp, "cost_model", squeezed)
    rig, model = load_rig("mixed-lab"), get_model("llama2-70b")
    ends = endpoints(rig)
    wl = Workload(1, 512, 32)
    eager, _ = lp_candidates_free(rig, model, wl, ends)
    assert eager and max(s.gbs for s in eager) == 4
    assert list(lp_candidates_lazy(rig, model, wl, ends)) == eager


def test_a_larger_first_lp_that_does_not_fit_proves_nothing_about_the_smaller(monkeypatch):
    """gbs 8 has no room for any flags, and gbs 16 up none for the first flags, whose rows still
    dominate the smaller gbs's (less room at every level): the eager search stops at gbs 4. The lazy
    one may solve a first-flags first LP above gbs 8 before gbs 8's, to learn whether the smaller
    gbs exist (``_dominated``); that it does not fit proves nothing about them, and they must not be
    marked as fitting (which would offer the other flags' gbs 16-512, past where the eager one
    stops)."""
    real = flexgen_lp.cost_model
    rig, model = load_rig("mixed-lab"), get_model("llama2-70b")
    ends = endpoints(rig)
    first = candidate_flags(bool(ends[2]))[0]

    def squeezed(rig, model, wl, gbs, nb, fl, *a, **k):
        out = real(rig, model, wl, gbs, nb, fl, *a, **k)
        if gbs == 8 or (gbs > 8 and fl == first):
            out = replace(out, memory=tuple((c, -2.0 if gbs == 8 else -3.0) for c, _ in out.memory))
        return out

    monkeypatch.setattr(flexgen_lp, "cost_model", squeezed)
    monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
    wl = Workload(1, 512, 32)
    eager, _ = lp_candidates_free(rig, model, wl, ends)
    assert eager and max(s.gbs for s in eager) == 4
    assert list(lp_candidates_lazy(rig, model, wl, ends)) == eager


def test_the_headline_solves_no_first_lp_only_to_learn_that_its_gpu_batch_fits(monkeypatch):
    """llama2-70b on mixed-lab, 512 + 32: the best candidates are at gbs 384-512; the first LPs of the
    gbs below that the search never reads (2-32: their bounds rank them after its cut-off) are not
    solved only to learn that they fit; the candidates read are the eager search's, in order."""
    rig, model = load_rig("mixed-lab"), get_model("llama2-70b")
    ends = endpoints(rig)
    wl = Workload(1, 512, 32)
    eager, _ = lp_candidates_free(rig, model, wl, ends)
    solved = []
    real = flexgen_lp._solved
    monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
    monkeypatch.setattr(flexgen_lp, "_solved", lambda cm: solved.append((cm.gbs, cm.nb)) or real(cm))
    again, second_pass = [], flexgen_lp._second_pass

    def second(*args):  # the second passes' LPs (``_second_pass``) apart
        n = len(solved)
        out = second_pass(*args)
        again.extend(solved[n:])
        del solved[n:]
        return out

    monkeypatch.setattr(flexgen_lp, "_second_pass", second)
    it = lp_candidates_lazy(rig, model, wl, ends)
    assert [next(it) for _ in range(40)] == eager[:40]
    # a chain there whose bound falls below the head goes on past its first LP (its own candidacy:
    # with ``_weights_bound``, gbs 16 with GPU attention, nb 1-3; 92 LPs in all, 95 before)
    firsts = {gbs for gbs, nb in solved if 2 <= gbs <= 32} - {gbs for gbs, nb in solved if nb > 1}
    assert not firsts, sorted(solved)
    assert len(solved) <= 95
    # ... and none in the second passes (``_second_pass`` times a split cache's optimum again, 12 here)
    assert not again, again
