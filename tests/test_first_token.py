"""TTFT of an offline batch is when every sequence has its first token, also when several processes
(HexGen's replicas) decode side by side and a fast one's later tokens come before a slow one's first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hetsim.api import problem
from hetsim.planner.ranking import estimate
from hetsim.planner.search import search
from hetsim.sim.run import _step_by_step, first_token_time
from hetsim.strategies.base import get_strategy


def test_a_fast_replica_s_second_tokens_do_not_count_for_a_slow_one_s_first():
    # replica 0: 2 sequences, tokens at 1, 2, 3; replica 1: 2 sequences, first token at 2.5
    times = [(1.0, 2), (2.0, 2), (2.5, 2), (3.0, 2), (3.5, 2), (4.0, 2)]
    streams = {0: [times[0], times[1], times[3]], 1: [times[2], times[4], times[5]]}
    assert first_token_time(times, 4) == 2.0  # counting tokens alone: too early
    assert first_token_time(times, 4, streams, gen_len=3) == 2.5


@given(
    st.lists(st.tuples(st.floats(0.1, 10.0), st.integers(1, 8)), min_size=1, max_size=12), st.integers(2, 6)
)
def test_one_process_keeps_the_token_count(entries, gen_len):
    times = sorted(entries)
    batch = max(1, sum(c for _, c in times) // gen_len)
    assert first_token_time(times, batch, {7: times}, gen_len) == first_token_time(times, batch)


def test_hexgen_replicas_ttft_is_the_slowest_replica_s_first_token_and_the_estimate_follows_the_run():
    hexgen = get_strategy("hexgen")
    p = problem("llama2-70b", "hexgen-full-budget", 64, 512, 32)
    plan = search(hexgen, p.rig, p.model, p.workload, "throughput")
    assert len(plan.replicas) > 1
    run, streams = _step_by_step(hexgen, plan, p.rig, p.model, p.workload)[:2]
    assert run.ttft_s == max(tokens[0][0] for tokens in streams.values())  # one entry per replica step
    guess = estimate(hexgen, plan, p.rig, p.model, p.workload)  # 6 decode steps, extrapolated
    assert abs(guess.throughput_tok_s / run.throughput_tok_s - 1) < 0.02
