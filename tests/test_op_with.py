"""``op_with``: ``dataclasses.replace`` of an ``Op`` by copying its fields, the same op every time."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.models import get_model
from hetsim.models.layer_ops import decoder_layer_ops
from hetsim.models.spec import Op, OpKind, op_with

FLOATS = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30)
NUMERIC = ["flops", "weight_bytes", "act_in_bytes", "act_out_bytes", "kv_read_bytes", "kv_write_bytes",
           "rows", "weight_row_bytes", "dequant_ops"]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(NUMERIC), FLOATS), st.integers(-1, 200), st.integers(1, 9))
def test_the_same_op_as_replace(changes, layer, kernels):
    ops = decoder_layer_ops(get_model("llama2-7b"), "decode", 4, 1, 300)
    for op in ops:
        want = dataclasses.replace(op, layer=layer, kernels=kernels, **changes)
        got = op_with(op, layer=layer, kernels=kernels, **changes)
        assert got == want and hash(got) == hash(want) and type(got) is Op
        assert dataclasses.astuple(got) == dataclasses.astuple(want)
    assert op_with(ops[0]) == ops[0] and op_with(ops[0]) is not ops[0]


def test_an_unknown_field_is_refused_as_replace_refuses_it():
    op = Op("x", OpKind.MATMUL, 0, 1.0, 2.0, 3.0, 4.0)
    with pytest.raises(TypeError):
        dataclasses.replace(op, flop=1.0)
    with pytest.raises(TypeError, match="flop"):
        op_with(op, flop=1.0)


def test_a_subclass_goes_through_replace():
    @dataclasses.dataclass(frozen=True)
    class Doubled(Op):
        def __post_init__(self) -> None:
            object.__setattr__(self, "flops", self.flops * 2)

    op = Doubled("x", OpKind.MATMUL, 0, 1.0, 2.0, 3.0, 4.0)
    got = op_with(op, flops=5.0)
    assert type(got) is Doubled and got.flops == 10.0 == dataclasses.replace(op, flops=5.0).flops


def test_op_is_still_a_dataclass_op_with_may_copy():
    # op_with skips Op's __init__: were Op to gain a __post_init__ (validation), an init=False field,
    # slots or a cached_property (a cached value in __dict__ would be copied stale), replace would
    # differ; this fails first, where the field-by-field comparison above may not.
    assert "__post_init__" not in vars(Op) and not hasattr(Op, "__slots__")
    assert all(f.init for f in dataclasses.fields(Op))
    assert not [n for n, v in vars(Op).items() if isinstance(v, functools.cached_property)]
