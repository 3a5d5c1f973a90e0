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
    """hexgen on hexgen-full-budget: 512 ran 722.3 tok/s and 1024 lost (385.6: the nine replicas'
    shares outgrow their GPUs, four longer pipelines are left), yet 768 runs 729.8 (896 lost, 832
    729.6). Bisecting to within 1/16 of the batch finds > 512's. (At 24e9 B cards 704 ran 730.1 and was
    picked; before the search laid replicas out for their shares, not the whole batch, the gap was
    64 -> 128 and 120 ran 613.0; at binary capacities alone, 128 -> 256 and 152 ran 637.7.)"""
    row = _row("llama2-70b", "hexgen-full-budget", "hexgen")
    assert row.feasible
    assert 512 < row.batch < 1024
    assert row.throughput_tok_s > 722.3
