"""``memory_plan`` with its shape terms worked out once per shape (``_shape_memory``) gives the numbers,
tags and order, bit for bit, of the formula worked out whole each call (the reference below, the
formula as it was); ``gpu_weight_bytes`` is ``fractions``' GPU total."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.pinned import pinned_bytes
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp as fl
from hetsim.strategies import flexgen_policy as fp
from hetsim.strategies.flexgen_policy import (
    COPY_RELAY_BYTES,
    Fractions,
    Shape,
    copy_parts,
    cpu_attention_host,
    kv_load_copies,
    kv_token_bytes,
    layer_peaks,
    packed_parts,
    packed_temporaries,
)

MODELS = ("llama2-70b", "opt-30b", "llama3-8b", "mixtral-8x7b", "opt-6.7b")


def _reference(model, shape, f):
    """``memory_plan`` as it was: every term worked out at each call."""
    h, s, slots = model.hidden, shape.prompt_len, shape.kv_slots
    bls, gbs = shape.gbs * shape.nb, shape.gbs
    kvb = kv_token_bytes(model, shape.compress_cache)
    kv_total = bls * slots * model.layers * kvb
    hidden = bls * s * h * 2.0
    prefill = layer_peaks(model, gbs, s, s, shape.cpu_attention, shape.compress_weight)
    decode = layer_peaks(
        model, gbs, 1, slots, shape.cpu_attention, shape.compress_weight, shape.compress_cache
    )
    # the prefill's new K and V of the batch before wait in cache_write_buf for their store, which the
    # loop issues after the next compute: the next batch's attention (flex_opt.py:1052-1053), or, one
    # GPU batch, this layer's MLP (:1025-1026); with --compress-cache mha returns them compressed
    # (pytorch_backend.py:358-360: 4-bit data and scales, tools/flexgen_peak.py's ``kv_out_bytes``)
    kv_pending = gbs * s * kv_token_bytes(model, shape.compress_cache)
    prefill["mlp"] += kv_pending
    if shape.nb > 1:
        prefill["attention"] += kv_pending
    # load_cache's copies of one batch's K and V, prompt_len + i slots (all of them at the last step)
    where, at_attention, before = kv_load_copies(shape)
    copy = gbs * slots * kvb
    on_gpu = copy if where == "gpu" else 0.0
    decode["attention"] += at_attention * on_gpu
    decode["mlp"] += before * on_gpu
    decode["input_embed"] += before * on_gpu
    # attention and MLP are separate layers in the released loop: their peaks do not coexist
    act_ws = max(*prefill.values(), *decode.values())
    hid_ws = 2 * gbs * s * h * 2.0  # a batch's input (loaded) and output (to be stored)
    gpu = {
        "weights": f.w_gpu,
        "weight_buffers": 2 * f.w_off_gpu_max,
        "kv_cache": f.cg * kv_total,
        "hidden": f.hg * hidden,
        "working": act_ws + hid_ws,
    }
    # host memory as torch allocates it (``pinned_bytes``): the weights per tensor (``Fractions``), a
    # CPU hidden state one pinned allocation per GPU batch (pytorch_backend.py:184-190, pin_memory None
    # on the CPU); the KV cache is not pinned (:292-293)
    cpu = {
        "weights": f.w_cpu_pinned if shape.pin_weight else f.w_cpu_unpinned,
        "kv_cache": f.cc * kv_total,
        "hidden": f.hc * shape.nb * pinned_bytes(gbs * s * h * 2.0),
    }
    if not shape.pin_weight and f.w_cpu_relay:
        cpu["weight_relay"] = f.w_cpu_relay
    if shape.cpu_attention:
        cpu.update(cpu_attention_host(model, gbs, slots, shape.compress_cache))
    if where == "cpu":
        # a compressed copy made on the CPU is pinned (TorchDevice.allocate's default, pytorch_backend.py:
        # 180-183): K's and V's data and scales, each an allocation of its own (``copy_parts``)
        parts = sum(pinned_bytes(copy / 2 * k) for k in copy_parts(True))
        cpu["kv_copies"] = at_attention * 2 * parts
    cpu["copy_relays"] = COPY_RELAY_BYTES
    # the copy threads' pageable uint8 temporaries of packed parts bound for the GPU (``_via_host``): a
    # layer's 4-bit weights on disk, and a 4-bit cache on disk that GPU attention loads (K's and V's
    # data of one batch; with CPU attention it goes to the CPU, no relay); transient, at their peak
    if shape.compress_weight or shape.compress_cache:
        kv = zip(copy_parts(True), packed_parts(True), strict=True)
        kv_parts = () if shape.cpu_attention else tuple((copy * f.cd / 2 * k, p) for k, p in kv) * 2
        cpu["packed_temporaries"] = f.w_packed_temps + packed_temporaries(kv_parts)
    disk = {"weights": f.w_disk, "kv_cache": f.cd * kv_total, "hidden": f.hd * hidden}
    return {"gpu": gpu, "cpu": cpu, "disk": disk}


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


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MODELS), shapes, st.lists(share, min_size=14, max_size=14))
def test_memory_plan_is_the_formula_worked_out_whole(name, shape, xs):
    model = get_model(name)
    f = Fractions(*(x * 1e10 for x in xs[:7]), *xs[7:13], w_packed_temps=xs[13] * 1e8)
    got, want = fp.memory_plan(model, shape, f), _reference(model, shape, f)
    assert got == want
    assert [list(t.items()) for t in got.values()] == [list(t.items()) for t in want.values()]  # order too


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
