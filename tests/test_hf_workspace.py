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

from hetsim.models.memory import hf_decode_workspace, hf_eager_workspace, hf_prefill_workspace
from hetsim.models.registry import get_model

DATA = Path(__file__).parent / "data" / "hf-opt-peak-4.26.1.csv"
HELD_OUT_SHAPES = 4
OPT30 = get_model("opt-30b")


def _rows() -> list[dict]:
    with DATA.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [{k: v if k == "phase" else int(v) for k, v in r.items()} for r in rows]


def _shape(r: dict) -> tuple:
    return (r["batch"], r["tokens"], r["hidden"], r["heads"], r["vocab"], r["ffn"])


def _held_out() -> list[dict]:
    rows = _rows()
    shapes = list(dict.fromkeys(_shape(r) for r in rows))  # in the tool's order: the fit ones first
    held = set(shapes[-HELD_OUT_SHAPES:])
    return [r for r in rows if _shape(r) in held]


def _opt(r: dict):
    return dataclasses.replace(
        OPT30,
        hidden=r["hidden"],
        heads=r["heads"],
        kv_heads=r["heads"],
        head_dim=r["hidden"] // r["heads"],
        intermediate=r["ffn"],
        vocab=r["vocab"],
        layers=r["layers"],
    )


@pytest.mark.parametrize(
    "row", _held_out(), ids=lambda r: f"{r['phase']}-b{r['batch']}-s{r['tokens']}-L{r['layers']}"
)
def test_workspace_matches_torch_at_held_out_shapes(row):
    model = _opt(row)
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
    assert hf_eager_workspace(OPT30, 1, 512, 544) == max(prefill, hf_decode_workspace(OPT30, 1, 544))


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
