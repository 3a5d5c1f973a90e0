"""FlexGen's embedding layers hold the checkpoint's tables: the token table ``token_dim`` wide
(OPT-350m's word_embed_proj_dim, 512, against its hidden 1024), its projections where the widths
differ, a final norm only where the model has one (``flexgen_policy.embedding_tables``, one home)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hetsim.models import get_model
from hetsim.models.registry import list_models
from hetsim.models.weights import decoder_param_count, param_count
from hetsim.strategies import flexgen_policy
from hetsim.strategies.flexgen_ops import _padded_tables
from hetsim.strategies.flexgen_policy import _decompressed, scheduling_layer_tensors

CONFIGS = Path(__file__).parent / "data" / "hf-configs"
OPT_350M = get_model(str(CONFIGS / "OPT-350m"))


@pytest.mark.parametrize("name", [*list_models(), str(CONFIGS / "OPT-350m"), str(CONFIGS / "Llama-2-7B")])
def test_the_embedding_layers_hold_the_models_own_parameters(name):
    """The input and output scheduling layers hold what ``models.weights`` counts outside the decoder
    layers, plus FlexGen's own copy of a tied token table (its output layer keeps one, flex_opt.py:
    213-222). OPT-350m: 105.06 M parameters before against 54.63 M (tables 1024 wide, no projections,
    a final norm it lacks)."""
    m = get_model(name)
    layers = scheduling_layer_tensors(m)
    held = sum(n for n, _ in layers[0]) + sum(n for n, _ in layers[-1])
    tied_copy = m.vocab * m.token_dim if m.tied_embeddings else 0
    assert held == param_count(m) - decoder_param_count(m) + tied_copy


def test_opt_350m_tables_are_token_dim_wide():
    d, h, v = 512, 1024, 50272
    assert (OPT_350M.token_dim, OPT_350M.hidden, OPT_350M.vocab) == (d, h, v)
    tables = flexgen_policy.embedding_tables(OPT_350M)
    assert tables["input_embed"] == ((v, d), (2050, h), (h, d))
    assert tables["output_embed"] == ((d, h), (v, d))
    # --compress-weight: rows padded to whole groups of 64 (50272 -> 50304, 2050 -> 2112), as wide as
    # the table; the decompressed fp16 matrices the same
    pad, unpad = _padded_tables(OPT_350M, "embed")
    assert pad == 32 * d + 62 * h
    assert [op.act_out_bytes for op in unpad] == [2.0 * v * d, 2.0 * 2050 * h]
    assert _decompressed(OPT_350M)["output_embed"] == (2.0 * d * h, 2.0 * 50304 * d)
