"""HF transformers' eager OPT forward: hetsim's workspace formula against torch's own allocations.

tests/data/hf-opt-peak-4.26.1.csv is tools/hf_opt_peak.py's count of the bytes transformers 4.26.1
(the HF of FlexGen's baselines) allocates in ``OPTForCausalLM.forward`` at small shapes. The formula's
constants were fitted on the first 13 shapes; the last 4 (held out) must come out to the byte."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hetsim.models.memory import (
    held_logits,
    hf_decode_workspace,
    hf_eager_workspace,
    hf_prefill_workspace,
    kv_cache_bytes,
)
from hetsim.models.registry import get_model

DATA = Path(__file__).parent / "data" / "hf-opt-peak-4.26.1.csv"
HELD_OUT_SHAPES = 4
OPT30 = get_model("opt-30b")


def _rows(path: Path = DATA) -> list[dict]:
    """A peak tool's CSV: its text columns as they are, every other column an int."""
    with path.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [{k: v if k in ("family", "phase") else int(v) for k, v in r.items()} for r in rows]


def _shape(r: dict) -> tuple:
    return (r["batch"], r["tokens"], r["hidden"], r["heads"], r["vocab"], r["ffn"])


def _held_out() -> list[dict]:
    rows = _rows()
    shapes = list(dict.fromkeys(_shape(r) for r in rows))  # in the tool's order: the fit ones first
    held = set(shapes[-HELD_OUT_SHAPES:])
    return [r for r in rows if _shape(r) in held]


def _shaped(base, r: dict):
    """``base`` at a measured row's shape (its KV heads when the row has them, else one per head)."""
    return dataclasses.replace(
        base,
        hidden=r["hidden"],
        heads=r["heads"],
        kv_heads=r.get("kv_heads", r["heads"]),
        head_dim=r["hidden"] // r["heads"],
        intermediate=r["ffn"],
        vocab=r["vocab"],
        layers=r["layers"],
    )


@pytest.mark.parametrize(
    "row", _held_out(), ids=lambda r: f"{r['phase']}-b{r['batch']}-s{r['tokens']}-L{r['layers']}"
)
def test_workspace_matches_torch_at_held_out_shapes(row):
    model = _shaped(OPT30, row)
    if row["phase"] == "prefill":
        got = hf_prefill_workspace(model, row["batch"], row["tokens"])
    else:
        got = hf_decode_workspace(model, row["batch"], row["tokens"] + 1)
    assert got == pytest.approx(row["workspace_bytes"], rel=1e-3)


def test_held_out_rows_are_a_third_of_the_shapes_and_include_two_layer_models():
    held = _held_out()
    assert len(held) == HELD_OUT_SHAPES * 2 * 2  # prefill and decode, 1 and 2 layers
    assert {r["layers"] for r in held} == {1, 2}


def test_opt30b_prompt512_hand_count():
    """OPT-30B, prompt 512, 32 generated, per sequence: prefill attention 8 B x 56 heads x 512^2
    scores + 10 B x 512 x 7168 + 2 B x 512^2 mask; the last decode step holds the previous cache
    (543 tokens x 48 layers x 2 x 7168 x 2 B)."""
    prefill = 8 * 56 * 512**2 + 10 * 512 * 7168 + 2 * 512**2
    decode_cache = 543 * 48 * 2 * 7168 * 2
    assert hf_prefill_workspace(OPT30, 1, 512) == prefill
    assert hf_decode_workspace(OPT30, 1, 544) == pytest.approx(decode_cache, rel=1e-3)
    # the last step also holds the step before's logits, one row of 50272 in fp16 (generate's outputs)
    assert hf_eager_workspace(OPT30, 1, 512, 544) == hf_decode_workspace(OPT30, 1, 544) + 50272 * 2


def test_first_decode_step_holds_the_prompts_logits():
    """generate (transformers 4.25.1 greedy_search) rebinds ``outputs`` only when the next forward
    returns, so the first decode step runs beside the prefill's logits for every prompt position:
    OPT-30B, 8 sequences of 512, fp16: 8 x 512 x 50272 x 2 B = 412 MB. Generating 5 tokens (FlexGen's
    baseline runs, --cut-gen-len 5) that step is the peak: its cache (513 tokens, 4 under the booked
    517) and the prefill's (512) beside the decode moment's 10 B x 8 x 7168 and 8 B per score."""
    b, tok = 8, 48 * 2 * 7168 * 2  # cache bytes per sequence per token
    moment = 10 * b * 7168 + 2 * b * 513 + 8 * b * 56 * 513
    first = moment + 512 * b * tok + b * 512 * 50272 * 2 - 4 * b * tok
    assert held_logits(OPT30, b, 512) == 411_828_224
    assert hf_eager_workspace(OPT30, b, 512, 517) == first
    # 32 tokens: 31 more tokens of both caches (682 MB) outweigh it, the last step is the peak
    last = hf_decode_workspace(OPT30, b, 544) + b * 50272 * 2
    assert hf_eager_workspace(OPT30, b, 512, 544) == last > first - 27 * b * tok
    # one token: no decode step follows the prefill's logits
    assert hf_eager_workspace(OPT30, b, 512, 513) == max(
        hf_prefill_workspace(OPT30, b, 512), hf_decode_workspace(OPT30, b, 513) + b * 50272 * 2
    )


def test_llama_style_generate_holds_fp32_logits():
    """The Llama-style forward returns ``logits.float()`` (transformers 4.35.2): generate holds 4 B per
    logit. Llama-2-70B (vocab 32000), one sequence of 512 + 32: the prompt's 65.5 MB beside the first
    decode step (its attention moment with K and V repeated to 64 heads, 17.1 MB, and the prefill's
    cache, 512 x 327680 B, 31 tokens under the booked cache) outweigh the last step's 31 more tokens of
    the previous cache: that step is the peak."""
    llama = get_model("llama2-70b")
    assert held_logits(llama, 4, 512) == 4 * 512 * 32000 * 4
    attention = 6 * 8192 + 2 * 513 + 8 * 64 * 513 + 4 * 513 * 64 * 128
    first = attention + 512 * 327680 + 512 * 32000 * 4 - 31 * 327680
    assert first == 240_272_898
    assert hf_eager_workspace(llama, 1, 512, 544) == first


@given(
    batch=st.integers(1, 64),
    prompt=st.integers(1, 2048),
    gen=st.integers(1, 256),
    more_batch=st.integers(1, 8),
    more_prompt=st.integers(1, 256),
)
def test_workspace_grows_with_batch_and_prompt(batch, prompt, gen, more_batch, more_prompt):
    ws = hf_eager_workspace(OPT30, batch, prompt, prompt + gen)
    assert hf_eager_workspace(OPT30, batch + more_batch, prompt, prompt + gen) > ws
    assert hf_eager_workspace(OPT30, batch, prompt + more_prompt, prompt + more_prompt + gen) > ws


GATED = Path(__file__).parent / "data" / "hf-gated-peak-4.35.2.csv"


@pytest.mark.parametrize(
    "row",
    _rows(GATED),
    ids=lambda r: (
        f"{r['family']}-{r['phase']}-b{r['batch']}-s{r['tokens']}-H{r['heads']}/{r['kv_heads']}-L{r['layers']}"
    ),
)
def test_llama_style_workspace_matches_torch_without_a_fit(row):
    """tools/hf_gated_peak.py's count of transformers 4.35.2's eager Llama and Mistral forwards (MHA,
    GQA, MQA, MQA at batch > 1 whose K and V matmul copies), called as ``generate`` calls it (with an
    attention mask). The constants come from reading that code (gated MLP: 3 live n x f tensors; GQA's
    repeated K and V; MQA's matmul copy; fp32 logits), none fitted to these rows: one-layer models
    within 1%; with two layers an attention-bound step holds an n x h-sized tensor more between layers
    (up to 7.1% here, 2 B per token x hidden, noise at real sizes where the scores or the MLP dominate).
    Before the MQA copy was counted, the six MQA decode rows at batch > 1 came out 44-69% low."""
    model = _shaped(get_model("llama2-7b"), row)
    if row["phase"] == "prefill":
        got = hf_prefill_workspace(model, row["batch"], row["tokens"])
    else:
        got = hf_decode_workspace(model, row["batch"], row["tokens"] + 1)
    assert got == pytest.approx(row["workspace_bytes"], rel=0.01 if row["layers"] == 1 else 0.075)


def test_mistral7b_prompt512_hand_count():
    """Mistral-7B (32 heads, 8 KV heads, MLP 14336, vocab 32000), one sequence of 512: the prompt's
    logits in fp16 and their fp32 copy (6 B x 512 x 32000, 98 MB) beat the attention moment (6 B x n x h,
    2 B mask, 8 B per score, K and V repeated to 32 heads, 89 MB) and the MLP's three n x 14336
    tensors."""
    mistral = get_model(str(Path(__file__).parent / "data" / "hf-configs" / "Mistral-7B" / "config.json"))
    n, h, kv = 512, 4096, 512
    attention = 6 * n * h + 2 * n * kv + 8 * n * 32 * kv + 4 * kv * 32 * 128
    mlp = 6 * n * h + 2 * n * kv + 2 * 3 * n * 14336
    logits = 2 * n * h + 6 * n * 32000
    assert hf_prefill_workspace(mistral, 1, 512) == logits > attention > mlp


def test_mqa_decode_counts_the_copy_matmul_makes_of_the_shared_head():
    """One KV head: ``repeat_kv`` is a view, but for more than one sequence ``torch.matmul`` copies the
    expanded V (and before it K) to fold heads into its batch. Falcon-7B's shape (71 heads of 64, one
    KV head), 4 sequences at 2048 keys: the probs x V moment holds q and the residual and normed
    input (6 B), the output (2 B) per token x hidden, the mask, the fp16 probabilities and the copy
    (2 B x 4 x 2048 x 71 x 64 = 74 MB). One sequence makes no copy: its peak is the scores' moment."""
    falcon = dataclasses.replace(get_model("llama2-7b"), hidden=4544, heads=71, kv_heads=1, head_dim=64)
    falcon = dataclasses.replace(falcon, intermediate=4 * 4544, gated_mlp=False, vocab=65024)
    b, kv = 4, 2048
    copy = 2 * b * kv * 71 * 64
    pv = 8 * b * 4544 + 2 * b * kv + 2 * b * 71 * kv + copy
    cache = kv_cache_bytes(falcon, b, kv - 1, falcon.layers)
    assert hf_decode_workspace(falcon, b, kv) - cache == pv
    one = kv_cache_bytes(falcon, 1, kv - 1, falcon.layers)
    attention = 6 * 4544 + 2 * kv + 8 * 71 * kv  # b = 1: the scores' moment, no copy
    assert hf_decode_workspace(falcon, 1, kv) - one == attention


def test_llama2_70b_decode_holds_the_repeated_keys_and_values():
    """Llama-2-70B's 8 KV heads are repeated to 64 for the eager matmuls: at 4096 keys a decode step of
    8 sequences holds 2 x 2 B x 8 x 4096 x 64 x 128 = 1.07 GB of repeated K and V beside the previous
    cache; with as many KV heads as heads there would be none."""
    llama = get_model("llama2-70b")
    b, kv = 8, 4096
    rep = 4 * b * kv * 64 * 128
    moments = 6 * b * 8192 + 2 * b * kv + 8 * b * 64 * kv + rep
    assert hf_decode_workspace(llama, b, kv) - kv_cache_bytes(llama, b, kv - 1, llama.layers) == moments
    mha = dataclasses.replace(llama, kv_heads=64)
    assert hf_decode_workspace(mha, b, kv) - kv_cache_bytes(mha, b, kv - 1, mha.layers) == moments - rep
