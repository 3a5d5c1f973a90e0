"""FlexGen's per-layer weight tables (``layer_weight_split``, ``layer_disk_copies``,
``layer_disk_packed``, ``fractions``' weight totals) work each distinct scheduling layer out once
(``flexgen_policy._each_layer``): the same values, in the same order, as working every one of the
2l + 2 layers out, so the sums over them are the same to the bit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.models.registry import get_model
from hetsim.strategies import flexgen_policy as fp
from hetsim.strategies.flexgen_policy import FlexGenPlan

MODELS = ("llama2-70b", "opt-30b", "llama3-8b", "mixtral-8x7b")


def _every_layer(f, model, *key):
    """``_each_layer`` as the tables were worked out before: all 2l + 2 layers (the reference)."""
    return [f(t, *key) for t in fp.scheduling_layer_tensors(model)]


def _tables(model, plan):
    key = fp._split_key(plan)
    for cached in (fp._layer_split, fp._weight_totals):
        cached.cache_clear()
    f = fp.fractions(model, plan)
    return (
        fp.layer_weight_split(model, plan),
        fp.layer_disk_copies(model, plan),
        fp.layer_disk_packed(model, plan),
        fp._weight_totals(model, *key),
        (f.w_gpu, f.w_cpu, f.w_disk, f.w_off_gpu_max),
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(MODELS),
    wg=st.integers(0, 100),
    wc_share=st.floats(0.0, 1.0),
    compress=st.booleans(),
    placement=st.sampled_from(("released", "continuous")),
)
def test_tables_equal_every_layer_worked_out(name, wg, wc_share, compress, placement):
    model = get_model(name)
    plan = FlexGenPlan(
        wg=wg, wc=round((100 - wg) * wc_share, 1), compress_weight=compress, placement=placement
    )
    ours = _tables(model, plan)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fp, "_each_layer", _every_layer)
        reference = _tables(model, plan)
    assert ours == reference  # bit for bit: == on floats


def test_each_layer_works_each_distinct_layer_out_once():
    model = get_model("llama2-70b")
    calls: list[object] = []

    def f(t, k):
        calls.append(t)
        return len(t) * k

    out = fp._each_layer(f, model, 3)
    layers = fp.scheduling_layer_tensors(model)
    assert out == [len(t) * 3 for t in layers]
    assert len(layers) == 2 * model.layers + 2
    assert len(calls) == len({id(t) for t in layers}) == 4  # embedding, attention, MLP, output


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MODELS), st.integers(0, 100), st.integers(0, 100), st.booleans(), st.booleans())
def test_gpu_weight_bytes_is_fractions_gpu_total(name, wg, wc, compressed, released):
    wc = min(wc, 100 - wg)
    plan = FlexGenPlan(
        wg=wg, wc=wc, compress_weight=compressed, placement="released" if released else "continuous"
    )
    model = get_model(name)
    assert fp.gpu_weight_bytes(model, plan) == fp.fractions(model, plan).w_gpu


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MODELS), st.integers(0, 100), st.integers(0, 100), st.booleans(), st.booleans())
def test_layer_disk_copy_kinds_zips_the_copies_and_their_packing(name, wg, wc, compressed, released):
    wc = min(wc, 100 - wg)
    plan = FlexGenPlan(
        wg=wg, wc=wc, compress_weight=compressed, placement="released" if released else "continuous"
    )
    model = get_model(name)
    want = tuple(
        tuple(zip(b, k, strict=True))
        for b, k in zip(fp.layer_disk_copies(model, plan), fp.layer_disk_packed(model, plan), strict=True)
    )
    assert fp.layer_disk_copy_kinds(model, plan) == want
