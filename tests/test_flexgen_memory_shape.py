"""``memory_plan`` (its shape terms worked out once per shape, ``shape_memory``, then ``memory_at``) at
six points that reach each of its branches: numbers, tags and order, recorded at 94e08e9 where they
equalled the formula worked out whole each call (session 21's check of the split); a change to the
formula moves them, and says so. ``flexgen_lp._mem`` gives ``memory_plan``'s tier totals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp as fl
from hetsim.strategies import flexgen_policy as fp
from hetsim.strategies.flexgen_policy import Fractions, Shape

MODELS = ("llama2-70b", "opt-30b", "llama3-8b", "mixtral-8x7b", "opt-6.7b")
# weights: 10 GB on the GPU, 20 on the CPU (25 pinned, 20 pageable, 1 of relay), 30 on disk, a 4 GB
# largest layer off the GPU; KV 0.2 / 0.3 / 0.5 and hidden states 0.1 / 0.6 / 0.3 on GPU / CPU / disk
F = Fractions(1e10, 2e10, 3e10, 4e9, 2.5e10, 2e10, 1e9, 0.2, 0.3, 0.5, 0.1, 0.6, 0.3, w_packed_temps=5e8)
# Shape(gbs, nb, prompt_len, kv_slots, cpu_attention, compress_cache, compress_weight, pin_weight, kv_home).
# By hand, the first: Llama-2-70B's KV is 2 x 8 KV heads x 128 x 2 B = 4,096 B a token a layer, so its
# cache is 24 sequences x 543 slots x 80 layers x 4,096 B = 4.27 GB, 0.2 of it 854,065,152 B on the GPU.
POINTS = [
    (  # GPU attention, pinned weights, a split cache
        "llama2-70b",
        Shape(8, 3, 512, 543, False, False, False, True, ""),
        {
            "gpu": {
                "weights": 10000000000.0,
                "weight_buffers": 8000000000.0,
                "kv_cache": 854065152.0,
                "hidden": 20132659.200000003,
                "working": 908333058.0,
            },
            "cpu": {
                "weights": 25000000000.0,
                "kv_cache": 1281097728.0,
                "hidden": 120795955.19999999,
                "copy_relays": 8589934592.0,
            },
            "disk": {"weights": 30000000000.0, "kv_cache": 2135162880.0, "hidden": 60397977.599999994},
        },
    ),
    (  # CPU attention, pageable weights and their relay
        "opt-30b",
        Shape(48, 2, 128, 1055, True, False, False, False, ""),
        {
            "gpu": {
                "weights": 10000000000.0,
                "weight_buffers": 8000000000.0,
                "kv_cache": 27877441536.0,
                "hidden": 17616076.8,
                "working": 1057768448.0,
            },
            "cpu": {
                "weights": 20000000000.0,
                "kv_cache": 41816162304.0,
                "hidden": 161061273.6,
                "weight_relay": 1000000000.0,
                "attention_workspace": 2903900160.0,
                "attention_temporaries": 24062976.0,
                "copy_relays": 8589934592.0,
            },
            "disk": {"weights": 30000000000.0, "kv_cache": 69693603840.0, "hidden": 52848230.4},
        },
    ),
    (  # CPU attention, a 4-bit cache on disk: its pinned copies
        "opt-30b",
        Shape(48, 2, 128, 1055, True, True, False, True, "d"),
        {
            "gpu": {
                "weights": 10000000000.0,
                "weight_buffers": 8000000000.0,
                "kv_cache": 7840530432.0,
                "hidden": 17616076.8,
                "working": 931152896.0,
            },
            "cpu": {
                "weights": 25000000000.0,
                "kv_cache": 11760795648.0,
                "hidden": 161061273.6,
                "attention_workspace": 2903900160.0,
                "attention_temporaries": 181493760.0,
                "kv_copies": 1207959552.0,
                "copy_relays": 8589934592.0,
                "packed_temporaries": 500000000.0,
            },
            "disk": {"weights": 30000000000.0, "kv_cache": 19601326080.0, "hidden": 52848230.4},
        },
    ),
    (  # 4-bit weights and cache, the cache on disk
        "opt-6.7b",
        Shape(1, 1, 1, 8, False, True, True, True, "d"),
        {
            "gpu": {
                "weights": 10000000000.0,
                "weight_buffers": 8000000000.0,
                "kv_cache": 235929.6,
                "hidden": 819.2,
                "working": 515166212.0,
            },
            "cpu": {
                "weights": 25000000000.0,
                "kv_cache": 353894.39999999997,
                "hidden": 4915.2,
                "copy_relays": 8589934592.0,
                "packed_temporaries": 500016384.0,
            },
            "disk": {"weights": 30000000000.0, "kv_cache": 589824.0, "hidden": 2457.6},
        },
    ),
    (  # CPU attention, a 4-bit cache at home on the CPU
        "mixtral-8x7b",
        Shape(512, 12, 1024, 4096, True, True, False, True, "c"),
        {
            "gpu": {
                "weights": 10000000000.0,
                "weight_buffers": 8000000000.0,
                "kv_cache": 185542587187.2,
                "hidden": 5153960755.200001,
                "working": 93483704322.0,
            },
            "cpu": {
                "weights": 25000000000.0,
                "kv_cache": 278313880780.8,
                "hidden": 30923764531.199997,
                "attention_workspace": 17179869184.0,
                "attention_temporaries": 1073741824.0,
                "copy_relays": 8589934592.0,
                "packed_temporaries": 500000000.0,
            },
            "disk": {"weights": 30000000000.0, "kv_cache": 463856467968.0, "hidden": 15461882265.599998},
        },
    ),
    (  # GPU attention, a 4-bit cache on the GPU, pageable weights
        "llama3-8b",
        Shape(2, 1, 512, 1055, False, True, False, False, "g"),
        {
            "gpu": {
                "weights": 10000000000.0,
                "weight_buffers": 8000000000.0,
                "kv_cache": 15556608.0,
                "hidden": 838860.8,
                "working": 287834128.0,
            },
            "cpu": {
                "weights": 20000000000.0,
                "kv_cache": 23334912.0,
                "hidden": 5033164.8,
                "weight_relay": 1000000000.0,
                "copy_relays": 8589934592.0,
                "packed_temporaries": 501080320.0,
            },
            "disk": {"weights": 30000000000.0, "kv_cache": 38891520.0, "hidden": 2516582.4},
        },
    ),
]


@pytest.mark.parametrize(("name", "shape", "want"), POINTS)
def test_memory_plan_at_points_reaching_each_branch(name, shape, want):
    got = fp.memory_plan(get_model(name), shape, F)
    assert {tier: list(tags) for tier, tags in got.items()} == {t: list(tags) for t, tags in want.items()}
    assert got == {tier: pytest.approx(tags, rel=1e-12) for tier, tags in want.items()}


shapes = st.builds(
    Shape,
    st.sampled_from((1, 2, 8, 48, 512)),
    st.sampled_from((1, 2, 3, 12)),
    st.sampled_from((1, 128, 512, 1024)),
    st.sampled_from((8, 543, 1055, 4096)),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(("", "g", "c", "d")),
)
share = st.floats(0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(MODELS), shapes, st.sampled_from((None, *fl.VARS)))
def test_the_lps_memory_points_are_memory_plans(name, shape, var):
    """``flexgen_lp._mem`` (a ``Fractions`` built without its ``__init__``, the shape's terms read once)
    gives ``memory_plan``'s tier totals at the same point."""
    model = get_model(name)
    x = {} if var is None else {var: 1.0}
    whole = fl._whole_weights(model, shape.compress_weight)
    wtot, wmax, host, temps = whole
    wc, wd = x.get("wc", 0.0), x.get("wd", 0.0)
    f = Fractions(
        x.get("wg", 0.0) * wtot,
        wc * wtot,
        wd * wtot,
        (wc + wd) * wmax,
        wc * host[0],
        wc * host[1],
        wc * host[2],
        *(x.get(v, 0.0) for v in ("cg", "cc", "cd", "hg", "hc", "hd")),
        w_packed_temps=wd * temps,
    )
    want = {tier: sum(tags.values()) for tier, tags in fp.memory_plan(model, shape, f).items()}
    assert fl._mem(fp.shape_memory(model, shape), shape, x, whole) == want
