"""Kernels per costed op (hetsim.models.kernels) against the aten ops the validate decoder dispatches:
every dispatched op that writes memory (a new tensor or an in-place write) is one GPU kernel in eager
PyTorch; views, slices and a ``.to`` that changes nothing are none."""

import pytest
from tiny_decoder import step_under, tiny

from hetsim.models import get_model
from hetsim.models.kernels import eager_kernels, op_kernels
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks

torch = pytest.importorskip("torch")


def _dispatched_kernels(spec, batch: int) -> int:
    """Aten ops one decode step of validate's decoder dispatches that write memory."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ins = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            results = out if isinstance(out, (tuple, list)) else (out,)
            outs = [t for t in results if isinstance(t, torch.Tensor)]
            storages = {t.untyped_storage().data_ptr() for t in ins}
            if func._schema.is_mutable or any(t.untyped_storage().data_ptr() not in storages for t in outs):
                self.kernels += 1
            return out

    count = Count()
    step_under(
        count, spec, batch, 4, "decode"
    )  # fp16, as the GPU runs: the fp32 cast of the logits is a kernel
    return count.kernels


@pytest.mark.parametrize("model", ["llama2-7b", "llama3-8b", "opt-6.7b", "qwen-72b"])
@pytest.mark.parametrize("batch", [1, 3])
def test_kernel_counts_are_the_validate_decoders_aten_ops(model, batch):
    one, two = (_dispatched_kernels(tiny(model, n), batch) for n in (1, 2))
    spec = tiny(model, 1)
    layer = layer_blocks(spec, "decode", batch, 1, 5).whole
    outside = (*embed_ops(spec, batch, 1), *head_ops(spec, "decode", batch, 1))
    assert two - one == op_kernels(spec, layer)
    assert one - (two - one) == op_kernels(spec, outside)


def test_a_llama2_7b_decode_step_launches_838_kernels_by_torchs_own_ops():
    """26 a layer and 6 outside; the H200 measured 1030 (batch 1) and 998 (batch 32): the rest are
    the libraries' own kernels (module docstring)."""
    spec = get_model("llama2-7b")
    layer = layer_blocks(spec, "decode", 1, 1, 513).whole
    assert op_kernels(spec, layer) == 26
    assert op_kernels(spec, (*embed_ops(spec, 1, 1), *layer * 32, *head_ops(spec, "decode", 1, 1))) == 838
    opt = get_model("opt-6.7b")
    assert op_kernels(opt, layer_blocks(opt, "decode", 4, 1, 257).whole) == 16


def test_an_op_the_decoder_does_not_run_is_refused_by_name():
    with pytest.raises(ValueError, match="router"):
        eager_kernels(get_model("llama2-7b"), "router")
