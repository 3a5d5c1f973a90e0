"""FlexGen's per-layer weight tables (``layer_weight_split``, ``layer_disk_copies``,
``layer_disk_packed``, ``fractions``' weight totals) work each distinct scheduling layer out once
(``flexgen_policy._each_layer``): the same values, in the same order, as working every one of the
2l + 2 layers out, so the sums over them are the same to the bit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.models.registry import get_model
from hetsim.strategies import flexgen_policy as fp
from hetsim.strategies.flexgen_policy import FlexGenPlan

MODELS = ("llama2-70b", "opt-30b", "llama3-8b", "mixtral-8x7b")


def _every_layer(model, plan):
    """The tables as they were worked out before, layer by layer (the reference)."""
    wg, wc, dtype, placement = fp._split_key(plan)
    layers = fp.scheduling_layer_tensors(model)
    split = tuple(fp._split(t, wg, wc, dtype, placement) for t in layers)
    copies = tuple(fp._disk_copies(t, wg, wc, dtype, placement) for t in layers)
    packed = tuple(tuple(k for _, k in fp._disk_copy_kinds(t, wg, wc, dtype, placement)) for t in layers)
    host = [fp._host_allocations(t, wg, wc, dtype, placement) for t in layers]
    temps = max(fp.packed_temporaries(fp._disk_copy_kinds(t, wg, wc, dtype, placement)) for t in layers)
    classes: dict[float, int] = {}
    for _, _, relay in host:
        for size, k in relay:
            classes[size] = max(classes.get(size, 0), k)
    totals = (
        sum(s[0] for s in split),
        sum(s[1] for s in split),
        sum(s[2] for s in split),
        max(s[1] + s[2] for s in split),
        sum(h[0] for h in host),
        sum(h[1] for h in host),
        sum(size * k for size, k in classes.items()),
        temps,
    )
    return split, copies, packed, totals


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
    split, copies, packed, totals = _every_layer(model, plan)
    assert fp.layer_weight_split(model, plan) == split
    assert fp.layer_disk_copies(model, plan) == copies
    assert fp.layer_disk_packed(model, plan) == packed
    assert fp._weight_totals(model, *fp._split_key(plan)) == totals  # bit for bit: == on floats
    f = fp.fractions(model, plan)
    assert (f.w_gpu, f.w_cpu, f.w_disk, f.w_off_gpu_max) == totals[:4]


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
