"""FlexGen allocates its KV cache up front for every slot of the run, prompt_len + gen_len - 1
(pytorch_backend.py:287-296). ``memory_plan`` reads that one number (``Shape.kv_slots``, from
``Workload.kv_slots``): a short run standing for a longer one (``Workload.head``: the fast-forward's
head sample, the planner's proxy) holds the longer run's cache, as its steps already read it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan, shape_of
from hetsim.workload import Workload

RIG = load_rig("flexgen-t4")
OPT = get_model("opt-6.7b")


@settings(max_examples=30, deadline=None)
@given(
    gbs=st.integers(1, 16),
    nb=st.integers(1, 4),
    prompt=st.integers(1, 1024),
    gen=st.integers(7, 256),
    short=st.integers(1, 6),
    cpu_attention=st.booleans(),
    compress_cache=st.booleans(),
    kv=st.sampled_from([(100, 0), (0, 100), (0, 0), (30, 50)]),
)
def test_a_head_holds_the_whole_runs_memory(gbs, nb, prompt, gen, short, cpu_attention, compress_cache, kv):
    """Every tier's every tag of a head of the run is the run's own (before, the head's KV cache, its
    copies and CPU attention's workspace were sized for the head's own s + g - 1 slots)."""
    if compress_cache and kv == (30, 50):
        kv = (0, 100)
    plan = FlexGenPlan(
        gbs,
        nb,
        0,
        100,
        *kv,
        100,
        0,
        cpu_attention=cpu_attention,
        compress_cache=compress_cache,
        gpu=endpoints(RIG)[0],
    )
    wl = Workload(gbs * nb, prompt, gen)
    flexgen = get_strategy("flexgen")
    assert flexgen.footprint(plan, RIG, OPT, wl.head(short)) == flexgen.footprint(plan, RIG, OPT, wl)
    assert shape_of(plan, wl.head(short)).kv_slots == wl.kv_slots == prompt + gen - 1
