"""The free batch's ladder past its two old gaps: the default plan's cap and the gap below a lost
double (hetsim.planner.search._Ladder.climb / bisect)."""

from __future__ import annotations

from hetsim import api


def _row(model: str, rig: str, strategy: str):
    (row,) = api.compare(api.problem(model, rig, batch=None), [strategy], "throughput")
    return row


def test_the_search_places_a_batch_past_the_default_plans_cap():
    """gpu-only on mixed-lab (the README headline): its default plan holds 11 sequences of
    llama2-70b, at 53.8 tok/s; its searched plan holds batch 64 at 99.3 tok/s, which the ladder,
    capped by the default plan, never tried (since session 23's binary GPU capacities it picks 156, 117.0)."""
    row = _row("llama2-70b", "mixed-lab", "gpu-only")
    assert row.feasible
    assert row.batch >= 64
    assert row.throughput_tok_s >= 99.0


def test_the_ladder_bisects_below_a_lost_double():
    """hexgen on hexgen-full-budget: 128 ran 601.5 tok/s and 256 lost (364.8), yet 152 runs 637.7
    (160 places fewer replicas: 377.5). Bisecting to within 1/16 of the batch finds more than 128's.
    (Before session 23's binary GPU capacities: 64 ran 501.8, 128 lost, 122 ran 623.3.)"""
    row = _row("llama2-70b", "hexgen-full-budget", "hexgen")
    assert row.feasible
    assert 128 < row.batch < 256
    assert row.throughput_tok_s >= 637.0
