"""FlexGen's GPU working set as its released runtime allocates it: the peaks tools/flexgen_peak.py
measured by running FlexGen 0.1.8's own layer functions (tests/data/flexgen-peak-0.1.8.csv), the
ledger's working set the largest of them (attention and MLP are separate layers in the released
loop), and the search no longer picking a plan that would run out of memory on the paper's T4."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.models import get_model
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen_policy import (
    FlexGenPlan,
    Fractions,
    Shape,
    fractions,
    kv_token_bytes,
    layer_peaks,
    memory_plan,
)

CSV = Path(__file__).parent / "data" / "flexgen-peak-0.1.8.csv"
OPT = get_model("opt-30b")


def _rows() -> list[dict[str, int | str]]:
    with CSV.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [{k: (v if k == "kind" else int(v)) for k, v in r.items()} for r in rows]


def _opt(hidden: int, heads: int, ffn: int, vocab: int, positions: int):
    return replace(
        OPT,
        hidden=hidden,
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        intermediate=ffn,
        vocab=vocab,
        learned_positions=positions,
    )


def _predicted(row: dict) -> tuple[float, float]:
    """(GPU, CPU) peak bytes hetsim's forms give for one measured call (the tool's position table
    has tokens + 2 rows)."""
    m = _opt(row["hidden"], row["heads"], row["ffn"], row["vocab"], row["tokens"] + 2)
    b, s, kind = row["batch"], row["tokens"], row["kind"]
    cc = kind.endswith("_cc")
    kind = kind.removesuffix("_cc")
    cw = kind.endswith("_cw")
    kind = kind.removesuffix("_cw")
    if kind == "mha":
        return layer_peaks(m, b, s, s, False, cw, cc)["attention"], 0.0
    if kind.startswith("mha_gen"):
        cpu_attention = kind == "mha_gen_cpu"
        gpu = layer_peaks(m, b, 1, s, cpu_attention, cw, cc)["attention"]
        shape = Shape(b, 1, s, s, cpu_attention, cc, cw, True, "c")  # s slots (n = 1), the cache at home
        plan = FlexGenPlan(b, 1, compress_cache=cc)
        cpu = memory_plan(m, shape, fractions(m, plan))["cpu"].get("attention_temporaries", 0.0)
        return gpu, cpu
    return layer_peaks(m, b, s, s, False, cw)[kind], 0.0


def test_the_measured_csv_covers_every_layer_kind_and_held_out_shapes():
    rows = _rows()
    kinds = {"input_embed", "mha", "mha_gen_gpu", "mha_gen_cpu", "mlp", "output_embed"}
    compressed_cache = {"mha_cc", "mha_gen_gpu_cc", "mha_gen_cpu_cc"}
    assert {r["kind"] for r in rows} == kinds | {k + "_cw" for k in kinds} | compressed_cache
    assert len(rows) == 144 + 96 + 48


# --compress-cache's prefill: mha compresses K and V on its way out; where head_dim is not a whole
# number of groups of 64 (32 or 16 here) the padded copy and the quantisation temporaries outgrow the
# peak (+8 % .. +36 % on these small shapes), not modelled: every shipped model's head_dim is 64 or 128
_PADDED_PREFILL = {"mha_cc": lambda r: (r["hidden"] // r["heads"]) % 64}
# ... and so does CPU attention's compression of the new token's K and V on the GPU (+2.1 KB on a
# 7.2 KB peak here; a few KB per batch at any size): the host's part is exact at every head_dim
_PADDED_PREFILL["mha_gen_cpu_cc"] = _PADDED_PREFILL["mha_cc"]


def _exact(row: dict) -> bool:
    return not _PADDED_PREFILL.get(row["kind"], lambda _: 0)(row)


@pytest.mark.parametrize(
    "row", _rows(), ids=lambda r: f"{r['kind']}-{r['batch']}x{r['tokens']}-h{r['hidden']}n{r['heads']}"
)
def test_the_fitted_forms_equal_the_measured_peaks_on_every_row(row):
    """Exact, fitted shapes and held-out ones alike (the prefill attention's two moments: the softmax
    with two score matrices, the output projection with one and four more hidden-sized tensors)."""
    gpu, cpu = _predicted(row)
    if _exact(row):
        assert gpu == row["gpu_peak_bytes"]
    else:
        assert row["gpu_peak_bytes"] >= gpu
    assert cpu == row["cpu_peak_bytes"]


@pytest.mark.parametrize(
    "row", [r for r in _rows() if r["kind"].startswith("mha_gen_cpu")], ids=lambda r: r["kind"]
)
def test_cpu_attention_s_host_workspace_is_the_ledger_s(row):
    """--cpu-cache-compute's fp32 workspace as the release allocates it before the loop (measured
    ``workspace_bytes``): with --compress-cache the compressed device's K and V buffers, head_dim rounded
    up to the group of 64 (compression.py:61-82), which FlexGen 0.1.8 decompresses the cache into; the
    uncompressed one (pytorch_backend.py:196-214) is not measured here (0): its form is head_dim's."""
    m = _opt(row["hidden"], row["heads"], row["ffn"], row["vocab"], row["tokens"] + 2)
    cc = row["kind"].endswith("_cc")
    shape = Shape(row["batch"], 1, row["tokens"], row["tokens"], True, cc, False, True, "c")
    cpu = memory_plan(m, shape, fractions(m, FlexGenPlan(row["batch"], 1, compress_cache=cc)))["cpu"]
    if cc:
        assert cpu["attention_workspace"] == row["workspace_bytes"]
    else:
        assert row["workspace_bytes"] == 0
        assert cpu["attention_workspace"] == 2 * row["batch"] * row["tokens"] * row["hidden"] * 4


@pytest.mark.parametrize("row", [r for r in _rows() if r["kind"].startswith("mha")], ids=lambda r: r["kind"])
def test_the_k_and_v_an_attention_call_returns_are_what_the_ledger_holds_for_their_store(row):
    """What waits in cache_write_buf (``kv_out_bytes``): fp16 K and V, or with --compress-cache their
    4-bit data and fp16 scales, head_dim rounded up to the group of 64 (``kv_token_bytes``)."""
    m = _opt(row["hidden"], row["heads"], row["ffn"], row["vocab"], row["tokens"] + 2)
    positions = 1 if row["kind"].startswith("mha_gen") else row["tokens"]
    assert row["kv_out_bytes"] == row["batch"] * positions * kv_token_bytes(m, row["kind"].endswith("_cc"))


@pytest.mark.parametrize(
    "row",
    [r for r in _rows() if r["kind"] == "mha_cc" and _exact(r)],
    ids=lambda r: f"{r['batch']}x{r['tokens']}",
)
def test_the_compressed_prefill_k_and_v_wait_for_their_store_as_measured(row):
    """--compress-cache, GPU attention, two GPU batches: the working set holds the prefill attention's
    measured peak plus the 4-bit K and V it returned (measured ``kv_out_bytes``), or the MLP with them,
    or a decode call -- the largest -- beside the hidden double buffer and the two batches' 4-bit KV
    copies. Not the pending K and V in fp16 (3.6x the bytes)."""
    b, s = row["batch"], row["tokens"]
    m = _opt(row["hidden"], row["heads"], row["ffn"], row["vocab"], s + 2)
    shape = Shape(b, 2, s, s, False, True, False, True)
    plan = FlexGenPlan(b, 2, 100, 0, 100, 0, 100, 0, cpu_attention=False, compress_cache=True)
    working = memory_plan(m, shape, fractions(m, plan))["gpu"]["working"]
    prefill = layer_peaks(m, b, s, s, False)
    pending = row["kv_out_bytes"]
    kinds = [row["gpu_peak_bytes"] + pending, prefill["mlp"] + pending, prefill["input_embed"]]
    decode = layer_peaks(m, b, 1, s, False, False, True)
    copy = b * s * kv_token_bytes(m, True)  # one batch's 4-bit K and V, s + n - 1 = s slots
    kinds += [prefill["output_embed"], decode["attention"] + 2 * copy, decode["mlp"] + copy]
    kinds += [decode["input_embed"] + copy, decode["output_embed"]]
    assert working == max(kinds) + 2 * b * s * m.hidden * 2.0


def _working(gbs: int, nb: int, prompt: int, gen: int, cpu_attention: bool) -> float:
    shape = Shape(gbs, nb, prompt, prompt + gen - 1, cpu_attention, False, False, True)
    return memory_plan(OPT, shape, fractions(OPT, FlexGenPlan(gbs, nb)))["gpu"]["working"]


@settings(max_examples=40, deadline=None)
@given(gbs=st.integers(1, 160), nb=st.integers(1, 6), prompt=st.integers(2, 2048), gen=st.integers(1, 64))
def test_the_working_set_is_the_largest_layer_not_the_sum(gbs, nb, prompt, gen):
    """With attention on the CPU (no KV buffers on the GPU): the largest layer's peak, the K and V of
    the batch before awaiting their store beside the MLP (beside the attention too with several GPU
    batches), and the hidden states' double buffer -- never attention and MLP summed."""
    h, s = OPT.hidden, prompt
    peaks = layer_peaks(OPT, gbs, s, s, True)
    pending = 2 * gbs * s * h * 2.0
    kinds = [peaks["input_embed"], peaks["attention"] + (pending if nb > 1 else 0), peaks["mlp"] + pending]
    kinds += [peaks["output_embed"], *layer_peaks(OPT, gbs, 1, s + gen - 1, True).values()]
    assert _working(gbs, nb, prompt, gen, True) == max(kinds) + 2 * gbs * s * h * 2.0
    assert (
        _working(gbs, nb, prompt, gen, True)
        < peaks["attention"] + peaks["mlp"] + pending + 2 * gbs * s * h * 2
    )


def test_the_prefill_holds_two_score_matrices():
    """OPT-30B, 128 x 512 (the search's pick before): torch.where's and softmax's score matrices,
    3.76 GB each, live at once; the working set 14.13 GB (it was 11.28 GB with one score matrix
    and the MLP's activation added)."""
    score = 128 * OPT.heads * 512 * 512 * 2.0
    assert score == pytest.approx(3.758e9, rel=1e-3)
    assert layer_peaks(OPT, 128, 512, 512, True)["attention"] > 2 * score
    assert _working(128, 1, 512, 32, True) == pytest.approx(14.13e9, rel=1e-3)


def test_the_free_search_no_longer_picks_a_batch_the_t4_cannot_hold():
    """`compare --model opt-30b --hw flexgen-t4 --strategies flexgen --objective throughput` picked
    128 x 1 with the GPU filled to 15.77 GB by a ledger that counted one score matrix; by the
    runtime's peaks 128 x 1 needs 18+ GB there (FlexGen's own cost model: 27.7 GiB). The pick now
    fits the runtime's peak."""
    p = api.problem("opt-30b", "flexgen-t4", batch=None, prompt_len=512, gen_len=32)
    r = api.best_result(get_strategy("flexgen"), p, "throughput")
    gbs, nb = r.plan["gpu_batch_size"], r.plan["num_gpu_batches"]
    assert r.feasible and (gbs, nb) != (128, 1)
    assert _working(gbs, nb, 512, 32, r.plan["cpu_attention"]) < 15.77e9
    assert max(r.peak_mem_bytes.values()) > 0


_FRACTION_FIELDS = tuple(f.name for f in dataclasses.fields(Fractions))


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["opt-30b", "llama2-70b", "llama2-13b", "opt-6.7b"]),
    gbs=st.integers(1, 512),
    nb=st.integers(1, 12),
    prompt=st.integers(1, 4096),
    gen=st.integers(1, 256),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    a=st.lists(st.floats(0, 1), min_size=len(_FRACTION_FIELDS), max_size=len(_FRACTION_FIELDS)),
    b=st.lists(st.floats(0, 1), min_size=len(_FRACTION_FIELDS), max_size=len(_FRACTION_FIELDS)),
    t=st.floats(0, 1),
)
def test_the_ledger_is_affine_in_the_fractions(name, gbs, nb, prompt, gen, flags, a, b, t):
    """The LP reads its memory rows off ``memory_plan`` at unit vectors (flexgen_lp's ``_mem``), so
    every tag must be affine in the fractions: the working set may depend on the shape (the largest
    layer's peak) but never on where the fractions put things."""
    model = get_model(name)
    shape = Shape(gbs, nb, prompt, prompt + gen - 1, *flags, True)
    scale = [1e10 if f.startswith("w_") else 1.0 for f in _FRACTION_FIELDS]
    fa = Fractions(*(x * k for x, k in zip(a, scale, strict=True)))
    fb = Fractions(*(x * k for x, k in zip(b, scale, strict=True)))
    mix = Fractions(*(t * x + (1 - t) * y for x, y in zip(vars(fa).values(), vars(fb).values(), strict=True)))
    pa, pb, pm = (memory_plan(model, shape, f) for f in (fa, fb, mix))
    for tier, tags in pm.items():
        assert tags.keys() == pa[tier].keys() == pb[tier].keys()
        for tag, v in tags.items():
            assert v == pytest.approx(t * pa[tier][tag] + (1 - t) * pb[tier][tag], rel=1e-9, abs=1e-3)


def test_compressed_weights_are_decompressed_on_the_gpu_for_the_call():
    """--compress-weight: OPT-175B 16 x 4 at 1024 + 32, weights and KV 4-bit, all off the GPU: the
    MLP's fp16 fc1 and fc2 (2.42 GB) held beside its activations. 13.68 GB in all: the 4-bit KV as the
    release holds it (16.39 GB when the ledger counted the decode's K and V as two fp16 batches beside
    their 4-bit copies and the prefill's pending K and V in fp16), and the two batches' 4-bit KV copies
    (0.47 GB) beside the decode attention only, not on top of the prefill MLP's peak (14.15 GB)."""
    m = get_model("opt-175b")
    plan = FlexGenPlan(
        16, 4, 0, 100, 0, 100, 100, 0, cpu_attention=False, compress_weight=True, compress_cache=True
    )
    shape = Shape(16, 4, 1024, 1024 + 32 - 1, False, True, True, True)
    gpu = memory_plan(m, shape, fractions(m, plan))["gpu"]
    assert sum(gpu.values()) == pytest.approx(13.683e9, rel=1e-4)
    plain = layer_peaks(m, 16, 1024, 1024, False)
    assert layer_peaks(m, 16, 1024, 1024, False, True)["mlp"] - plain["mlp"] == 2 * 4 * 12288 * 12288 * 2.0
