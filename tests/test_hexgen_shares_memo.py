"""A batch ladder's rungs ask ``offline_candidates`` again at nearby batches: inside ``remembering``
the layer caps, shapes and outer solves of a share already laid out are not solved again."""

from __future__ import annotations

from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.planner import hexgen_cpsat
from hetsim.planner.ranking import remembering
from hetsim.workload import Workload


def test_a_rung_near_one_already_searched_reuses_its_outer_solves(monkeypatch):
    rig, model = load_rig("hexgen-full-budget"), get_model("llama2-70b")
    calls, real = [], hexgen_cpsat.outer_cpsat
    monkeypatch.setattr(hexgen_cpsat, "outer_cpsat", lambda *a: calls.append(a[2]) or real(*a))
    with remembering():
        first = hexgen_cpsat.offline_candidates(rig, model, Workload(120, 512, 32))
        solved = len(calls)
        again = hexgen_cpsat.offline_candidates(rig, model, Workload(120, 512, 32))
    assert solved > 0
    assert len(calls) == solved  # the same rung asked again: every outer solve remembered
    assert [c.plan for c in again] == [c.plan for c in first]
