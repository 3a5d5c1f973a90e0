"""DRAM bytes per costed op in eager PyTorch (hetsim.models.kernel_bytes) against the aten ops the
validate decoder dispatches: every dispatched op that computes reads its tensor inputs and writes its
new outputs (or the tensor it writes in place); views move nothing. A gather reads the rows it returns."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_decoder import step_under, tiny

from hetsim.costs.op_cost import block_cost, op_cost
from hetsim.hardware.types import Efficiency
from hetsim.models import get_model
from hetsim.models.fusion import fuse
from hetsim.models.kernel_bytes import eager_bytes
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks

torch = pytest.importorskip("torch")


def _tensors(values) -> list:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += _tensors(v)
    return out


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def _dispatched_bytes(spec, batch: int, seq: int, phase: str) -> int:
    """Bytes the aten ops of one step of validate's decoder read and write (fp16, as the GPU runs)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            kwargs = kwargs or {}
            values = [
                args[i] if i < len(args) else kwargs.get(a.name) for i, a in enumerate(func._schema.arguments)
            ]
            written = [
                v
                for v, a in zip(values, func._schema.arguments, strict=True)
                if isinstance(v, torch.Tensor) and a.alias_info is not None and a.alias_info.is_write
            ]
            ins = [t for t in _tensors((*args, *kwargs.values())) if all(t is not w for w in written)]
            outs = _tensors(out if isinstance(out, (tuple, list)) else (out,))
            storages = {t.untyped_storage().data_ptr() for t in _tensors((*args, *kwargs.values()))}
            new = [t for t in outs if t.untyped_storage().data_ptr() not in storages]
            if not written and not new:
                return out  # a view
            if func is torch.ops.aten.index.Tensor:  # the gather reads its rows, not the table
                ins = [out, *_tensors(args[1])]
            self.bytes += sum(map(_nbytes, ins)) + sum(map(_nbytes, written)) + sum(map(_nbytes, new))
            return out

    count = Count()
    step_under(count, spec, batch, seq, phase)
    return count.bytes


def _eager(ops) -> float:
    return sum(eager_bytes(o).total for o in ops)


@pytest.mark.parametrize("model", ["llama2-7b", "llama3-8b", "opt-6.7b", "qwen-72b"])
@pytest.mark.parametrize(("phase", "batch", "seq"), [("prefill", 1, 6), ("prefill", 3, 5), ("decode", 3, 4)])
def test_eager_bytes_are_the_validate_decoders_aten_bytes(model, phase, batch, seq):
    one, two = (_dispatched_bytes(tiny(model, n), batch, seq, phase) for n in (1, 2))
    spec = tiny(model, 1)
    q_len, kv_len = (seq, seq) if phase == "prefill" else (1, seq + 1)
    layer = layer_blocks(spec, phase, batch, q_len, kv_len).whole
    # Known and sized in kernel_bytes' docstring: the two rotary multiplies read cos and sin rows
    # (q_len x head_dim, 2 B) on q and on k; in decode, hetsim counts the new K and V in attention's
    # act_in and in kv_read, where SDPA reads them once, from the cache.
    rotary = 0 if spec.family == "opt" else 2 * 2 * q_len * spec.head_dim * 2
    attention = next(o for o in layer if o.name == "attention")
    decode_kv = attention.kv_write_bytes if phase == "decode" else 0.0
    assert two - one == pytest.approx(_eager(layer) + rotary - decode_kv, abs=0.5)

    embed, head = embed_ops(spec, batch, q_len), head_ops(spec, phase, batch, q_len)
    # hetsim's embedding reads a learned-position row per token and the ids once per table; the decoder
    # adds the q_len rows broadcast over the batch and reads the ids once.
    tokens, h = batch * q_len, spec.hidden
    positions = (tokens - q_len) * h * 2 + tokens * 8 if spec.learned_positions else 0
    assert one - (two - one) == pytest.approx(_eager(embed) + _eager(head) - positions, abs=0.5)


def test_a_llama2_7b_prefill_layer_moves_the_rotary_silu_and_cache_passes():
    """32 x 512 tokens: rotary 10 passes over q and k (134 MB each), SiLU's multiply 3 over 16384 x
    11008, the K and V cache copies 2 x 268 MB."""
    spec = get_model("llama2-7b")
    layer = {o.name: o for o in layer_blocks(spec, "prefill", 32, 512, 512).whole}
    tokens = 32 * 512
    q = tokens * 4096 * 2
    assert eager_bytes(layer["q_proj"]).passes == 10 * q
    assert eager_bytes(layer["k_proj"]).passes == 10 * q
    assert eager_bytes(layer["act"]).passes == 3 * tokens * 11008 * 2
    assert eager_bytes(layer["act"]).total == 5 * tokens * 11008 * 2
    assert eager_bytes(layer["attention"]).passes == 2 * 2 * q
    assert eager_bytes(layer["attention"]).total == layer["attention"].mem_bytes + 2 * q
    for name in ("norm1", "v_proj", "gate_proj", "down_proj", "residual1"):
        assert eager_bytes(layer[name]).total == layer[name].mem_bytes
    opt = {o.name: o for o in layer_blocks(get_model("opt-6.7b"), "prefill", 4, 256, 256).whole}
    assert eager_bytes(opt["q_proj"]).passes == 0  # learned positions: no rotary
    assert eager_bytes(opt["act"]).passes == 0  # ReLU, one kernel
    assert eager_bytes(opt["fc2"]).passes == 2 * 4 * 256 * 4096 * 2  # the bias added after


def _gpu(issue_s: float):
    from hetsim.hardware.types import ComputeDevice

    eff = Efficiency(compute={"matmul": 0.8}, memory=0.8, overhead_s=5e-6, kernel_issue_s=issue_s)
    return ComputeDevice(
        name="gpu", model="h200", kind="gpu", node="n0", mem_bytes=141e9, mem_bw=4.8e12,
        peak_flops={"fp16": 989e12}, efficiency=eff,
    )  # fmt: skip


def test_eager_passes_add_to_the_roofline_only_where_the_device_runs_eager_pytorch():
    """A compute-bound q_proj pays its rotary passes after the GEMM: 10 x 134 MB at 0.8 x 4.8 TB/s."""
    spec = get_model("llama2-7b")
    q = next(o for o in layer_blocks(spec, "prefill", 32, 512, 512).whole if o.name == "q_proj")
    eager, fused = op_cost(_gpu(1e-6), q), op_cost(_gpu(0.0), q)
    gemm = q.flops / (989e12 * 0.8)
    assert fused.time_s == pytest.approx(gemm + fused.overhead_s)
    assert eager.time_s == pytest.approx(gemm + 10 * q.act_out_bytes / (4.8e12 * 0.8))
    assert eager.memory_bytes == q.mem_bytes + 10 * q.act_out_bytes
    assert fused.memory_bytes == q.mem_bytes


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(["llama2-7b", "llama3-8b", "opt-6.7b", "qwen-72b", "mixtral-8x7b"]),
    phase=st.sampled_from(["prefill", "decode"]),
    batch=st.integers(1, 64),
    seq=st.integers(1, 4096),
    tp=st.sampled_from([1, 2, 4, 8]),
)
def test_eager_kernels_move_at_least_one_pass_and_split_with_the_op(model, phase, batch, seq, tp):
    """No op moves fewer bytes eagerly than its one pass; a tensor-parallel share's passes are the
    whole op's over the ranks where the rotated, activated or biased tensor splits (column-parallel
    q/k, the MLP's inner width)."""
    spec = get_model(model)
    q_len, kv_len = (seq, seq) if phase == "prefill" else (1, seq)
    whole = layer_blocks(spec, phase, batch, q_len, kv_len).whole
    split = layer_blocks(spec, phase, batch, q_len, kv_len, tp=tp).whole if spec.heads % tp == 0 else whole
    for o in (*whole, *head_ops(spec, phase, batch, q_len), *embed_ops(spec, batch, q_len)):
        e = eager_bytes(o)
        assert e.passes >= 0 and e.main >= 0 and e.total >= o.mem_bytes
    p = tp if split is not whole else 1
    for w, s in zip(whole, split, strict=True):
        if w.name in ("q_proj", "act"):
            assert eager_bytes(s).passes == pytest.approx(eager_bytes(w).passes / p)


def test_the_logits_passes_are_over_16_bit_logits_whatever_the_heads_weight_format():
    """q4_k_m names llama.cpp's weight kernel (0.5 B a weight), not the logits' dtype: its LM head writes
    fp16 logits as int4's does (act_out_bytes), cast to fp32 and read by max: 5 passes, not 14."""
    spec = get_model("llama2-7b")
    for dtype in ("fp16", "int4", "q4_k_m"):
        head = next(o for o in head_ops(spec, "decode", 4, 1, weight_dtype=dtype) if o.name == "lm_head")
        assert eager_bytes(head).passes == pytest.approx(5 * head.act_out_bytes + 28 * 4), dtype


def test_a_profile_of_fused_kernels_keeps_one_pass_per_op_even_with_a_measured_issue():
    """``kernels: fused`` says the engine fuses rotary, SiLU x up and the cache writes: no eager passes,
    where an issue time is measured too (without the gate the rotary went with q_proj's name into the
    fused qkv_proj while SiLU's multiply and the cache copies stayed)."""
    spec = get_model("llama2-7b")
    ops = layer_blocks(spec, "prefill", 32, 512, 512).whole
    gpu = _gpu(1e-6)
    fused = dataclasses.replace(gpu, efficiency=dataclasses.replace(gpu.efficiency, fused_kernels=True))
    assert block_cost(fused, ops).memory_bytes == sum(o.mem_bytes for o in fuse(ops))
    q = next(o for o in ops if o.name == "q_proj")
    assert op_cost(fused, q).memory_bytes == q.mem_bytes
    assert block_cost(gpu, ops).memory_bytes > sum(o.mem_bytes for o in ops)  # eager: the passes
