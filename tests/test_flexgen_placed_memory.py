"""FlexGen's free-batch search places the LP optima it confirms (``_confirmable``'s placed cost models:
the weights at the runtime's per-tensor split). A placed model's memory rows and the fractions' bounds
are its LP member's (``_memory`` does not read a placement), so it takes them from the member the
search built (``_Memo.memory``) instead of working them out again (~67 ``_memory`` calls on the
headline). Checked here: every model given rows (a member, a pinned twin's LP, a placed model; with
4-bit flags and with weights on disk too) has what ``_memory`` gives it, no ``_memory`` is worked
out twice in a search, and the plans found are the same as with every model's rows made afresh."""

from __future__ import annotations

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp
from hetsim.workload import Workload

CASES = [  # (name, rig, prompt, gen, 4-bit allowed)
    ("llama2-70b", "mixed-lab", 512, 32, False),
    ("opt-30b", "flexgen-t4", 512, 32, True),
    ("llama2-13b", "mixed-lab", 256, 128, False),
    ("mixtral-8x7b", "hetegen-a10", 128, 16, False),
    ("opt-175b", "flexgen-t4", 512, 32, False),  # weights on disk (350 GB, a 208 GB host)
]


@pytest.mark.parametrize(("name", "hw", "prompt", "gen", "lossy"), CASES)
def test_placed_models_read_their_members_memory_rows(monkeypatch, name, hw, prompt, gen, lossy):
    rig, model = load_rig(hw), get_model(name)
    wl = Workload(batch=1, prompt_len=prompt, gen_len=gen)
    fresh = flexgen_lp._memory
    asked: list[tuple] = []
    placed: list[tuple] = []
    handed: list[tuple] = []  # every model given rows (a member, a pinned twin's LP, a placed one)

    def memory(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget=None):
        asked.append((gbs, nb, fl, wl_, gpu_budget))
        return fresh(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget)

    made = flexgen_lp.cost_model

    def cost_model(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget=None, placed_plan=None, memory=None, **k):
        cm = made(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget, placed_plan, memory=memory, **k)
        if placed_plan is not None or memory is not None:
            rows = placed if placed_plan is not None else handed
            rows.append((cm, fresh(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget)))
        return cm

    monkeypatch.setattr(flexgen_lp, "_memory", memory)
    monkeypatch.setattr(flexgen_lp, "cost_model", cost_model)
    monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
    found = flexgen_lp.search_free(rig, model, wl, "throughput", allow_lossy=lossy)
    assert placed, "no optimum was placed: the case tests nothing"
    for cm, (rows, bounds) in placed + handed:  # the rows a model was given are _memory's, exactly
        assert cm.memory == rows and cm.bounds == bounds
    assert len(asked) == len(set(asked)), "a member's memory rows were worked out again"

    # the same plan with every model's rows made afresh (no rows handed on)
    monkeypatch.setattr(flexgen_lp, "_memory", fresh)
    monkeypatch.setattr(flexgen_lp, "cost_model", lambda *a, memory=None, **k: made(*a, **k))
    monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
    assert flexgen_lp.search_free(rig, model, wl, "throughput", allow_lossy=lossy) == found
