"""FlexGen's host-memory footprint as the released runtime allocates it (FlexGen 0.1.8): one fp32
CPU-attention workspace pair (pytorch_backend.py:196-214, one pair with attention and MLP as separate
scheduling layers) and the four copy threads' pinned relays of 2**30 fp16 elements each
(pytorch_backend.py:624-646, :882), started in every run (flex_opt.py:1194-1195)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.models import get_model
from hetsim.models.sharding import layer_blocks
from hetsim.models.spec import OpKind
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen_ops import _cpu_attention
from hetsim.strategies.flexgen_policy import FlexGenPlan, Shape, fractions, memory_plan
from hetsim.workload import Workload

P = api.problem("opt-30b", "flexgen-t4", batch=1, prompt_len=512, gen_len=32)
FLEXGEN = get_strategy("flexgen")
RELAYS = 4 * 2**30 * 2  # 4 threads x 2**30 fp16 elements


def host(plan: FlexGenPlan, prompt: int = 512, gen: int = 32) -> dict[str, float]:
    wl = Workload(plan.block_size, prompt, gen)
    return FLEXGEN.footprint(plan, P.rig, P.model, wl)["n0.cpu0"]


@settings(max_examples=25, deadline=None)
@given(gbs=st.integers(1, 64), nb=st.integers(1, 6), prompt=st.integers(16, 1024), gen=st.integers(1, 64))
def test_cpu_attention_workspace_is_one_k_and_v_of_a_gpu_batch(gbs, nb, prompt, gen):
    """(s + n - 1, gbs * heads, head_dim) fp32 for K and for V, whatever the number of GPU batches."""
    plan = FlexGenPlan(gbs, nb, 0, 100, 0, 100, 0, 100, cpu_attention=True, gpu="n0.gpu0")
    k_or_v = gbs * (prompt + gen - 1) * P.model.heads * P.model.head_dim * 4.0
    assert host(plan, prompt, gen)["attention_workspace"] == 2 * k_or_v


def test_copy_threads_pin_their_relays_with_or_without_a_disk_share():
    paper = FlexGenPlan(48, 3, 20, 80, 0, 100, 0, 100, cpu_attention=True, gpu="n0.gpu0")
    on_disk = FlexGenPlan(48, 3, 0, 80, 0, 50, 0, 100, cpu_attention=True, gpu="n0.gpu0")
    assert host(paper)["copy_relays"] == host(on_disk)["copy_relays"] == RELAYS == 8 * 2**30


@settings(max_examples=25, deadline=None)
@given(gbs=st.integers(1, 64), prompt=st.integers(16, 1024), gen=st.integers(1, 64))
def test_cpu_attention_workspace_holds_kv_heads_as_the_traffic_model_reads_them(gbs, prompt, gen):
    """GQA (llama2-70b: 64 query heads, 8 KV heads): the fp32 workspace the host holds is the K and V
    the CPU attention reads (``_cpu_attention``'s ``kv_read_bytes``), per KV head, never repeated to
    the query heads (8x the bytes: 18.2 vs 2.3 GB at 512 + 32, gbs 64)."""
    model = get_model("llama2-70b")
    kv_len = prompt + gen - 1
    shape = Shape(gbs, 1, prompt, kv_len, True, False, False, True)
    plan = FlexGenPlan(gbs, 1, 0, 100, 0, 100, 0, 100, cpu_attention=True)
    held = memory_plan(model, shape, fractions(model, plan))["cpu"]["attention_workspace"]
    blocks = layer_blocks(model, "decode", gbs, 1, kv_len)
    att = next(o for o in blocks.attention if o.kind == OpKind.ATTENTION)
    assert held == _cpu_attention(model, att, gbs, kv_len, 1.0).kv_read_bytes
    assert held == 2 * gbs * kv_len * model.kv_heads * model.head_dim * 4.0
