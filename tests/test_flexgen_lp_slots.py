"""The FlexGen LP's slots are rebuilt with ``flexgen_lp._with`` where ``dataclasses.replace`` was:
the same slot, field for field, so the same LPs to the bit."""

from __future__ import annotations

import pickle
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp
from hetsim.planner.flexgen_lp import _lp_key, _Slot, _with, candidate_flags, cost_model
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload

NAMES = [f.name for f in fields(_Slot)]
forms = st.dictionaries(st.sampled_from(["const", "wc", "wd", "cc", "hg"]), st.floats(-1e3, 1e3), max_size=3)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    base=st.fixed_dictionaries({}, optional={n: forms for n in NAMES}),
    changes=st.dictionaries(st.sampled_from(NAMES), forms),
)
def test_with_is_replace(base, changes):
    slot = _Slot(**{n: {} for n in NAMES[:6]} | base)
    made, built = _with(slot, **changes), replace(slot, **changes)
    assert type(made) is _Slot
    assert made == built
    assert list(vars(made).items()) == list(vars(built).items())  # field order: what vars() copies
    assert pickle.loads(pickle.dumps(made)) == built


def test_with_refuses_unknown_fields():
    with pytest.raises(TypeError, match="no field"):
        _with(_Slot({}, {}, {}, {}, {}, {}), nope={})


def test_cost_models_built_with_replace_are_the_same_lps(monkeypatch):
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    flags = candidate_flags(True, True, None, (False, True))
    assert any(not fl.pin_weight for fl in flags)  # _relayed's slots too

    def keys():
        return [
            _lp_key(cost_model(rig, model, Workload(gbs * nb, 512, 64), gbs, nb, fl, ends))
            for fl in flags
            for gbs, nb in ((8, 1), (32, 3), (64, 8))
        ]

    ours = keys()
    monkeypatch.setattr(flexgen_lp, "_with", replace)
    assert ours == keys()
