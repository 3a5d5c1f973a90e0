"""``flexgen_lp.build_lp`` writes its model as a protobuf and loads it in one call; it must hand GLOP
the very model that OR-Tools' natural API (``solver.Add(t >= w + nb * c)``, the LP's earlier form,
kept below as the reference) builds: the same variables, rows, coefficients to the bit and their
order, hence the same optimum. Only the names differ (the loader drops them; GLOP does not read
them): the models are compared without names, and their optima to the bit."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ortools.linear_solver import pywraplp

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner.flexgen_lp import (
    GBS_CHOICES,
    NB_CHOICES,
    _Slot,
    build_lp,
    candidate_flags,
    cost_model,
    solve_lp,
)
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload


def natural_api_lp(cm):
    """The LP as solve_lp built it before build_lp (session 6's main), through the natural API."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    x = {v: solver.NumVar(lo, hi, v) for v, (lo, hi) in cm.bounds.items()}
    for tier in "wch":
        solver.Add(sum(x[tier + t] for t in "gcd") == 1.0)
    for coefs, rhs in cm.memory:
        solver.Add(sum(c * x[v] for v, c in coefs.items()) <= rhs)

    def lin(form):
        return form.get("const", 0.0) + sum(coef * x[v] for v, coef in form.items() if v != "const")

    terms = []
    nbf = float(cm.nb)
    for mult, slot in cm.slots:
        t = solver.NumVar(0.0, solver.infinity(), "t")
        if slot.c0 or slot.cl:  # a GPU-attention KV load: its own first and last sub-steps
            # an empty store (q, q_prev) is under the thread's option: left out
            firsts = [lin(slot.w) + lin(slot.c0 or slot.c), *([lin(slot.m0)] if slot.m0 else [])]
            firsts += [lin(slot.p0 or slot.p), *([lin(slot.q_prev)] if slot.q_prev else [])]
            firsts += [lin(slot.dk0)] if slot.dk0 else []  # the KV's disk share
            firsts += [lin(slot.wr)] if slot.wr else []  # the weights' disk read, then hop
            firsts += [lin(slot.dw0)] if slot.dw0 else []  # ... then the KV's reads, V's hop
            stored = [lin(slot.q)] if slot.q else []
            mids = [lin(slot.c), lin(slot.p), *stored, *([lin(slot.dkm)] if slot.dkm else [])]
            lasts = [lin(slot.cl or slot.c), lin(slot.pl or slot.p), *stored]
            lasts += [lin(slot.dkl)] if slot.dkl else []
            for a in firsts:
                if nbf == 1:
                    solver.Add(t >= a)
                elif nbf == 2:
                    for b in lasts:
                        solver.Add(t >= a + b)
                else:
                    for m in mids:
                        for b in lasts:
                            solver.Add(t >= a + (nbf - 2) * m + b)
            for lane in (slot.d2h, slot.dread, slot.dwrite):
                solver.Add(t >= lin(lane))
            terms.append(mult * cm.layers * t)
            continue
        w, c, p = lin(slot.w), lin(slot.c), lin(slot.p)
        p0 = lin(slot.p0) if slot.p0 else p  # the first sub-step's thread, where it differs
        solver.Add(t >= w + nbf * c)
        solver.Add(t >= w + c + (nbf - 1) * p)
        solver.Add(t >= p0 + (nbf - 1) * c)
        solver.Add(t >= ((p0 + (nbf - 1) * p) if slot.p0 else nbf * p))
        if slot.q_prev:
            qp = lin(slot.q_prev)
            for rest in (c, p, *([lin(slot.q)] if slot.q else [])):
                solver.Add(t >= qp + (nbf - 1) * rest)
        if slot.q:
            q = lin(slot.q)
            solver.Add(t >= w + c + (nbf - 1) * q)
            solver.Add(t >= p0 + (nbf - 1) * q)
        if slot.kr or slot.kr0:  # CPU attention's disk reads: each with every other option
            firsts = [w + c, p0, *([lin(slot.q_prev)] if slot.q_prev else [])]
            others = [c, p, *([lin(slot.q)] if slot.q else [])]
            reads = [lin(f) for f in (slot.kr, slot.vr) if f]
            for a in firsts:
                for b in reads:
                    solver.Add(t >= a + (nbf - 1) * b)
            for f in (slot.kr0, slot.vr0, slot.dr0):
                for b in (*others, *reads) if f else ():
                    solver.Add(t >= lin(f) + (nbf - 1) * b)
        if slot.wr:  # the weights' disk read then hop, with every other (non-empty) option
            rest = [slot.c, slot.p, slot.q, slot.kr, slot.vr] if nbf > 1 else [{}]
            for b in rest:
                if b or nbf == 1:
                    solver.Add(t >= lin(slot.wr) + (nbf - 1) * lin(b))
        for lane in (slot.d2h, slot.dread, slot.dwrite):
            solver.Add(t >= lin(lane))
        terms.append(mult * cm.layers * t)
    solver.Minimize(sum(terms))
    return solver, x


def proto(solver) -> bytes:
    from ortools.linear_solver import linear_solver_pb2

    out = linear_solver_pb2.MPModelProto()
    solver.ExportModelToProto(out)
    for item in (*out.variable, *out.constraint):
        item.ClearField("name")
    return out.SerializeToString(deterministic=True)


def same_model(cm) -> None:
    (a, xa), (b, xb) = natural_api_lp(cm), build_lp(cm)
    assert proto(a) == proto(b)
    sa, sb = a.Solve(), b.Solve()
    assert sa == sb
    if sa == pywraplp.Solver.OPTIMAL:
        assert a.Objective().Value() == b.Objective().Value()
        assert [xa[v].solution_value() for v in xa] == [xb[v].solution_value() for v in xb]


CASES = [
    ("flexgen-t4", "opt-30b", 512, 32),
    ("mixed-lab", "llama2-70b", 512, 32),
    ("hetegen-a10", "opt-13b", 64, 2),
    ("mixed-lab", "llama2-7b", 128, 1),  # gen 1: the decode slots' multiplicity is 0
]


@pytest.mark.parametrize(("hw", "name", "prompt", "gen"), CASES)
def test_build_lp_is_the_natural_api_model_on_every_candidate(hw, name, prompt, gen):
    rig, model = load_rig(hw), get_model(name)
    ends = endpoints(rig)
    for gbs in GBS_CHOICES[:9]:
        for nb in (1, 2, 3, 8, 32):
            for fl in candidate_flags(bool(ends[2]), True):
                same_model(cost_model(rig, model, Workload(gbs * nb, prompt, gen), gbs, nb, fl, ends))


def test_build_lp_with_a_budget_that_leaves_no_room_and_empty_rows():
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    fl = candidate_flags(True)[0]
    cm = cost_model(rig, model, Workload(64, 512, 32), 16, 4, fl, ends, gpu_budget=1e8)
    same_model(cm)
    # rows a future cost term may produce: an empty memory row (satisfied and not), empty lanes
    empty = replace(cm, memory=((({}, 1.0)), ({}, -1.0), *cm.memory))
    same_model(empty)
    bare = _Slot(cm.slots[0][1].w, {}, {"const": 0.0}, {}, {}, {})
    same_model(replace(cm, slots=((1.0, bare), *cm.slots)))


def test_a_model_the_loader_refuses_is_built_call_by_call(monkeypatch):
    """MPSolver's proto loader refuses a NaN that the API's calls took: build_lp then makes those
    calls, so GLOP gets what it got before (and judges it as before)."""
    from hetsim.planner import flexgen_lp

    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    cm = cost_model(rig, model, Workload(64, 512, 32), 16, 4, candidate_flags(True)[0], ends)
    called = []
    load = flexgen_lp._load_by_calls
    monkeypatch.setattr(flexgen_lp, "_load_by_calls", lambda p: called.append(1) or load(p))
    bad = replace(cm, memory=(({"wg": float("nan")}, 1.0), *cm.memory))
    (a, _), (b, _) = natural_api_lp(bad), build_lp(bad)
    assert called and proto(a) == proto(b)
    assert a.Solve() == b.Solve()
    called.clear()
    same_model(cm)
    assert not called


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    gbs=st.sampled_from(GBS_CHOICES),
    nb=st.sampled_from(NB_CHOICES),
    prompt=st.integers(1, 2048),
    gen=st.integers(1, 512),
    case=st.sampled_from(
        [("flexgen-t4", "opt-6.7b"), ("mixed-lab", "llama2-13b"), ("hetegen-a10", "opt-30b")]
    ),
    flag=st.integers(0, 4),
    budget=st.one_of(st.none(), st.floats(1e8, 8e10)),
)
def test_build_lp_equals_the_natural_api_on_random_shapes(gbs, nb, prompt, gen, case, flag, budget):
    rig, model = load_rig(case[0]), get_model(case[1])
    ends = endpoints(rig)
    flags = candidate_flags(bool(ends[2]), True)
    fl = flags[flag % len(flags)]
    same_model(cost_model(rig, model, Workload(gbs * nb, prompt, gen), gbs, nb, fl, ends, budget))


def test_solve_lp_still_solves():
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    sol = solve_lp(rig, model, Workload(96, 512, 32), 48, 2, candidate_flags(True)[0], ends)
    assert sol is not None and sol.block_time_s > 0


def test_lps_with_one_key_are_one_model_and_a_remembered_optimum_is_the_fresh_one(monkeypatch):
    """``solve_lp`` remembers GLOP's optima by ``_lp_key``: every LP of a few rigs' searches (rigs that
    differ in the NIC, so many LPs repeat) with one key exports one model, and the optimum remembered
    for it is the one a fresh solve finds."""
    from hetsim.planner import flexgen_lp
    from hetsim.sweep.grid import apply_hardware

    base = load_rig("mixed-lab")
    rigs = [
        base,
        *(apply_hardware(base, k) for k in ({"net_gbps": 10}, {"pcie": "pcie3-x16"}, {"cpu_sockets": 1})),
    ]
    model = get_model("llama2-13b")
    memo: dict = {}
    by_key: dict[tuple, bytes] = {}
    repeats = 0
    for rig in rigs:
        ends = endpoints(rig)
        for gbs, nb in ((1, 1), (4, 2), (16, 3), (48, 8)):
            for fl in candidate_flags(bool(ends[2]), True):
                cm = cost_model(rig, model, Workload(gbs * nb, 256, 16), gbs, nb, fl, ends)
                key, model_bytes = flexgen_lp._lp_key(cm), proto(build_lp(cm)[0])
                repeats += key in by_key
                assert by_key.setdefault(key, model_bytes) == model_bytes
                monkeypatch.setattr(flexgen_lp, "_OPTIMA", memo)
                remembered = flexgen_lp._optimum(cm)
                monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
                assert flexgen_lp._optimum(cm) == remembered
    assert repeats > 0


def test_lp_key_covers_every_form_of_a_slot():
    """A cost model that differs from another only in one form of one slot (here the KV store's ``q``,
    a field added after the key was written) has another key: the memo never answers it with the
    other's optimum."""
    from dataclasses import fields, replace

    from hetsim.planner import flexgen_lp

    rig = load_rig("mixed-lab")
    cm = cost_model(
        rig, get_model("llama2-13b"), Workload(32, 256, 16), 16, 2, candidate_flags(True)[0], endpoints(rig)
    )
    mult, slot = cm.slots[0]
    for f in fields(slot):
        form = dict(getattr(slot, f.name))
        form["wg"] = form.get("wg", 0.0) + 1.0
        other = replace(cm, slots=((mult, replace(slot, **{f.name: form})), *cm.slots[1:]))
        assert flexgen_lp._lp_key(other) != flexgen_lp._lp_key(cm), f.name
