"""FlexGen's ``--pin-weight 0`` cost models take their slots from their pinned twin's: pinning reaches
the slots only through ``_relayed`` (each position's next layer's weights copied to pinned memory
first, ``_weight_pin``), applied after the lanes' pass, whose fields it does not touch. The free-batch
search keeps each unplaced pinned model's slots (``_Memo.slots``) and relays them for the unpinned
member of the same (gbs, nb, flags, workload) instead of working ``_slots`` out again (91 of the
headline's 417). Checked here: relayed slots equal ``_slots`` and ``_other_slots`` worked out with the
unpinned flags, on random models, rigs (disk tiers too), lengths and flags; and in whole searches
every relayed model equals one built afresh, the unpinned models with a built twin are all relayed,
and the plans are those found with every model built afresh."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp
from hetsim.planner.flexgen_lp import GBS_CHOICES, NB_CHOICES, Flags, cost_model, endpoints
from hetsim.workload import Workload

RIGS = ("mixed-lab", "flexgen-t4", "hetegen-a10")  # flexgen-t4: weights and KV may go to disk
MODELS = ("opt-13b", "opt-30b", "llama2-70b", "mixtral-8x7b")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hw=st.sampled_from(RIGS),
    name=st.sampled_from(MODELS),
    gbs=st.sampled_from(GBS_CHOICES),
    nb=st.sampled_from(NB_CHOICES),
    prompt=st.sampled_from((1, 64, 512, 2048)),
    gen=st.sampled_from((1, 2, 32, 3584)),
    cpu_attention=st.booleans(),
    kv=st.sampled_from(("", "g", "c", "d")),  # "": uncompressed KV; else 4-bit KV on that tier
    compress_weight=st.booleans(),
)
def test_relayed_pinned_slots_are_the_unpinned_slots(
    hw, name, gbs, nb, prompt, gen, cpu_attention, kv, compress_weight
):
    rig, model = load_rig(hw), get_model(name)
    ends = endpoints(rig)
    wl = Workload(batch=gbs * nb, prompt_len=prompt, gen_len=gen)
    unpinned = Flags(cpu_attention, bool(kv), kv, compress_weight, pin_weight=False)
    pinned = cost_model(rig, model, wl, gbs, nb, replace(unpinned, pin_weight=True), ends)
    fresh = cost_model(rig, model, wl, gbs, nb, unpinned, ends)
    relayed = cost_model(rig, model, wl, gbs, nb, unpinned, ends, pinned=pinned.slots[:-1])
    assert relayed.slots == fresh.slots  # every field of every slot, to the bit
    assert relayed.forms == fresh.forms
    assert relayed.slots != pinned.slots  # the relay did something: the test can tell them apart


CASES = [  # (name, rig, prompt, gen, host bytes or None, 4-bit allowed)
    ("llama2-70b", "mixed-lab", 512, 32, None, False),  # the headline: 93 unpinned models
    ("opt-66b", "flexgen-t4", 512, 32, 96e9, False),  # weights on disk, the host binding
    ("opt-30b", "mixed-lab", 256, 128, 48e9, True),
]


@pytest.mark.parametrize(("name", "hw", "prompt", "gen", "host", "lossy"), CASES)
def test_searches_relay_their_pinned_twins_slots(monkeypatch, name, hw, prompt, gen, host, lossy):
    rig, model = load_rig(hw), get_model(name)
    if host is not None:
        cpu = endpoints(rig)[1]
        rig.devices[cpu] = replace(rig.devices[cpu], mem_bytes=host)
    wl = Workload(batch=1, prompt_len=prompt, gen_len=gen)
    made = flexgen_lp.cost_model
    relayed: list[tuple] = []
    built: set[tuple] = set()  # (gbs, nb, pinned flags, workload) of the unplaced pinned models built
    again: list[tuple] = []  # unplaced unpinned models built afresh though their pinned twin was built

    def checked(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget=None, placed=None, **k):
        cm = made(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget, placed, **k)
        if placed is None and k.get("pin_at") is None:  # (_second_pass's tangent models: their own)
            key = (gbs, nb, replace(fl, pin_weight=True), wl_)
            if fl.pin_weight:
                built.add(key)
            elif k.get("pinned") is not None:
                k.pop("pinned")
                relayed.append((cm, made(rig_, model_, wl_, gbs, nb, fl, ends, gpu_budget, None, **k)))
            elif key in built:
                again.append(key)
        return cm

    monkeypatch.setattr(flexgen_lp, "cost_model", checked)
    monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
    found = flexgen_lp.search_free(rig, model, wl, "throughput", allow_lossy=lossy)
    assert relayed, "no unpinned model was relayed: the case tests nothing"
    for cm, fresh in relayed:
        assert cm == fresh and cm.forms == fresh.forms
    assert not again, f"{len(again)} unpinned models worked their slots out again"

    # the same plan with every model's slots worked out afresh
    monkeypatch.setattr(flexgen_lp, "cost_model", lambda *a, pinned=None, **k: made(*a, **k))
    monkeypatch.setattr(flexgen_lp, "_OPTIMA", {})
    assert flexgen_lp.search_free(rig, model, wl, "throughput", allow_lossy=lossy) == found
