"""FlexGen's free-batch search places the LP optima it confirms (``_confirmable``'s placed cost models:
the weights at the runtime's per-tensor split). A placed model's memory rows and the fractions' bounds
are its LP member's (``_memory`` does not read a placement), so it takes them from the member the
search built (``_Memo.memory``) instead of working them out again (~67 ``_memory`` calls on the
headline). Checked here: no ``_memory`` is worked out twice in a search, every placed model's rows
are what ``_memory`` gives, and the plans found are the same as with every model's rows made afresh."""

from __future__ import annotations

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp
from hetsim.workload import Workload

CASES = [
    ("llama2-70b", "mixed-lab", 512, 32),
    ("opt-30b", "flexgen-t4", 512, 32),
    ("llama2-13b", "mixed-lab", 256, 128),
    ("mixtral-8x7b", "hetegen-a10", 128, 16),
]


@pytest.mark.parametrize(("name", "hw", "prompt", "gen"), CASES)
def test_placed_models_read_their_members_memory_rows(monkeypatch, name, hw, prompt, gen):
    rig, model = load_rig(hw), get_model(name)
    wl = Workload(batch=1, prompt_len=prompt, gen_len=gen)
    fresh = flexgen_lp._memory
    asked: list[tuple] = []
    placed: list[tuple] = []

    def memory(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget=None):
        asked.append((gbs, nb, fl, wl_, gpu_budget))
        return fresh(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget)

    made = flexgen_lp.cost_model

    def cost_model(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget=None, placed_plan=None, memory=None):
        cm = made(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget, placed_plan, memory=memory)
        if placed_plan is not None:
            placed.append((cm, fresh(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget)))
        return cm

    monkeypatch.setattr(flexgen_lp, "_memory", memory)
    monkeypatch.setattr(flexgen_lp, "cost_model", cost_model)
    flexgen_lp._OPTIMA.clear()
    found = flexgen_lp.search_free(rig, model, wl, "throughput")
    assert placed, "no optimum was placed: the case tests nothing"
    assert len(asked) == len(set(asked)), "a member's memory rows were worked out again"
    for cm, (rows, bounds) in placed:  # the rows a placed model read are _memory's, exactly
        assert cm.memory == rows and cm.bounds == bounds

    # the same plan with every model's rows made afresh (no rows handed on)
    monkeypatch.setattr(flexgen_lp, "_memory", fresh)
    monkeypatch.setattr(flexgen_lp, "cost_model", lambda *a, memory=None, **k: made(*a, **k))
    flexgen_lp._OPTIMA.clear()
    assert flexgen_lp.search_free(rig, model, wl, "throughput") == found
