"""FlexGen's ledger and ops size q, the attention's value and K/V by heads x head_dim (kv_heads x head_dim),
not by the hidden size: the release's tensors are (b * n_head, ., head_dim) (pytorch_backend.py:309-330,
:380-396). For OPT the two are equal; for Qwen3-30B-A3B (hidden 2048, 32 x 128 = 4096 wide q), Qwen3-235B
and DeepSeek-V3 they are not. Only the layer's input and its LayerNorm are hidden-wide."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.models import get_model
from hetsim.strategies.flexgen_ops import substep_ops
from hetsim.strategies.flexgen_policy import cpu_attention_host, layer_peaks, q_width

QWEN = get_model("qwen3-30b-a3b")


def test_qwen3_moe_q_is_wider_than_its_hidden_size():
    assert q_width(QWEN) == 32 * 128 == 2 * QWEN.hidden


@settings(max_examples=40, deadline=None)
@given(
    hidden=st.integers(256, 16384),
    gbs=st.integers(1, 64),
    kv_len=st.integers(1, 4096),
    compress=st.booleans(),
)
def test_cpu_attention_host_memory_does_not_depend_on_the_hidden_size(hidden, gbs, kv_len, compress):
    """The host's K/V workspace, q in fp32 and the score rows are per head: the same for any hidden size
    (before: q counted hidden wide, 8 KB short per sequence for Qwen3-30B-A3B)."""
    other = dataclasses.replace(QWEN, hidden=hidden)
    assert cpu_attention_host(other, gbs, kv_len, compress) == cpu_attention_host(QWEN, gbs, kv_len, compress)


@settings(max_examples=40, deadline=None)
@given(hidden=st.integers(256, 16384), gbs=st.integers(1, 64), cpu=st.booleans(), compress=st.booleans())
def test_decode_attention_peak_grows_with_hidden_only_by_its_input_and_layernorm(hidden, gbs, cpu, compress):
    """mha_gen's GPU peak: the input and its LayerNorm are hidden-wide fp16; q, k, v, the fp32 q (and the
    value back from the host) are heads x head_dim wide, whatever the hidden size."""
    other = dataclasses.replace(QWEN, hidden=hidden)
    a = layer_peaks(other, gbs, 1, 1000, cpu, False, compress)["attention"]
    b = layer_peaks(QWEN, gbs, 1, 1000, cpu, False, compress)["attention"]
    assert a - b == gbs * (hidden - QWEN.hidden) * 2 * 2.0


def test_cpu_attention_copies_q_and_the_value_heads_wide():
    """The q copied to the host (fp32) and the value back are 32 x 128 wide for Qwen3-30B-A3B."""
    o = substep_ops(QWEN, "attention", "decode", 8, 1, 600, True, 1.0, False, False)
    assert o.to_gpu_bytes == 8 * 4096 * 4.0
    assert o.to_cpu_bytes == 8 * (4096 * 4.0 + 2 * 4 * 128 * 2.0)
