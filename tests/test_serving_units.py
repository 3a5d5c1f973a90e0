"""Serving building blocks, one at a time: continuous batching on a replica, the dispatcher's
policies, the per-request metrics, and the request streams."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest

from hetsim.errors import InputError
from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.serving.batching import KV_BUCKET, MAX_IN_FLIGHT, PROMPT_BUCKET, ReplicaServer, bucket, in_flight
from hetsim.serving.dispatcher import POLICIES, Dispatcher
from hetsim.serving.metrics import RequestRecord, ServeResult
from hetsim.serving.workload import Request, poisson_requests, read_trace
from hetsim.sim.engine import Engine
from hetsim.strategies.hexgen import HexGenPlan, Replica, Stage
from hetsim.strategies.pipeline_costs import step_time

INF = float("inf")

RIG = load_rig("mixed-lab")
MODEL = dataclasses.replace(get_model("llama2-7b"), layers=4)  # small enough to simulate quickly
ONE_STAGE = Replica((Stage(("n0.gpu0",), 4),))
TWO_STAGES = Replica((Stage(("n1.gpu0",), 2), Stage(("n1.gpu1",), 2)))


def step(replica: Replica, phase: str, batch: int, seq: int, kv: int) -> float:
    """An uncontended forward step: what the engine books when nothing else runs."""
    return step_time(RIG, replica.stages, MODEL, phase, batch, seq, kv)


class Recording(ReplicaServer):
    """A replica server that remembers every step it booked."""

    def _step(self, engine, phase, batch, seq, kv):
        self.steps.append((phase, batch, seq, kv))
        yield from super()._step(engine, phase, batch, seq, kv)


def serve(plan: HexGenPlan, requests: list[Request], policy: str = "least-latency"):
    """Requests through servers and a dispatcher on one engine (what ``serve_plan`` wires up)."""
    engine = Engine(RIG)
    firsts: list[tuple[int, float]] = []
    dones: list[tuple[int, float]] = []
    where: dict[int, int] = {}
    servers = []
    for i, rep in enumerate(plan.replicas):
        s = Recording(
            i,
            rep,
            plan,
            MODEL,
            on_first=lambda r, t: firsts.append((r.rid, t)),
            on_done=lambda r, t: dones.append((r.rid, t)),
        )
        s.steps = []
        servers.append(s)
    context = max(r.prompt_len + r.output_len for r in requests)
    times = [
        [step(rep, "decode", b, 1, context) for b in range(1, plan.max_batch + 1)] for rep in plan.replicas
    ]
    dispatcher = Dispatcher(servers, times, policy)

    def arrivals(e: Engine):
        for r in sorted(requests, key=lambda r: (r.arrival_s, r.rid)):
            if r.arrival_s > e.env.now:
                yield e.env.timeout(r.arrival_s - e.env.now)
            s = dispatcher.choose()
            where[r.rid] = s.index
            s.submit(e, r)

    for s in servers:
        s.start(engine)
    engine.env.process(arrivals(engine))
    engine.env.run()
    return servers, firsts, dones, where


# ---- batching ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stages", "loops"), [(1, 1), (3, 3), (8, 8), (12, 8)])
def test_in_flight_is_one_batch_per_stage_up_to_the_cap(stages, loops):
    assert MAX_IN_FLIGHT == 8
    replica = Replica(tuple(Stage((f"g{i}",), 1) for i in range(stages)))
    assert in_flight(replica) == loops


@pytest.mark.parametrize(
    ("x", "size", "out"),
    [(0, 16, 16), (1, 16, 16), (16, 16, 16), (17, 16, 32), (33.5, 32, 64), (64.0, 32, 64)],
)
def test_bucket_rounds_up_to_a_multiple_and_at_least_one_bucket(x, size, out):
    assert bucket(x, size) == out


def test_a_lone_request_is_one_prefill_then_decode_steps():
    req = Request(0, 0.0, 32, 4)
    servers, firsts, dones, _ = serve(HexGenPlan((ONE_STAGE,), max_batch=2), [req])
    prefill = step(ONE_STAGE, "prefill", 1, 32, 32)
    decode = step(ONE_STAGE, "decode", 1, 1, 64)  # contexts 33..35 round up to 64
    assert firsts == [(0, pytest.approx(prefill, rel=1e-9))]
    assert dones == [(0, pytest.approx(prefill + 3 * decode, rel=1e-9))]
    assert servers[0].steps == [("prefill", 1, 32, 32)] + [("decode", 1, 1, 64)] * 3
    assert servers[0].outstanding == 0


def test_an_idle_replica_wakes_when_a_request_arrives():
    req = Request(0, 5.0, 20, 1)  # a 20-token prompt is prefilled as 32
    servers, firsts, dones, _ = serve(HexGenPlan((ONE_STAGE,)), [req])
    prefill = step(ONE_STAGE, "prefill", 1, 32, 32)
    assert firsts == dones == [(0, pytest.approx(5.0 + prefill, rel=1e-12))]
    assert servers[0].steps == [("prefill", 1, 32, 32)]


def test_a_full_batch_makes_the_next_request_wait_for_a_free_slot():
    reqs = [Request(0, 0.0, 32, 2), Request(1, 0.0, 32, 8), Request(2, 0.0, 32, 2)]
    servers, firsts, dones, _ = serve(HexGenPlan((ONE_STAGE,), max_batch=2), reqs)
    first, done = dict(firsts), dict(dones)
    prefill2 = step(ONE_STAGE, "prefill", 2, 32, 32)
    decode2 = step(ONE_STAGE, "decode", 2, 1, 64)
    prefill1 = step(ONE_STAGE, "prefill", 1, 32, 32)
    assert first[0] == first[1] == pytest.approx(prefill2, rel=1e-9)
    assert done[0] == pytest.approx(prefill2 + decode2, rel=1e-9)
    # request 2 is admitted only once request 0 leaves, and prefilled on its own (prefill first)
    assert first[2] == pytest.approx(done[0] + prefill1, rel=1e-9)
    assert first[2] < done[1]
    assert servers[0].steps[:3] == [("prefill", 2, 32, 32), ("decode", 2, 1, 64), ("prefill", 1, 32, 32)]


def test_a_pipeline_keeps_one_batch_in_flight_per_stage():
    reqs = [Request(0, 0.0, 16, 16), Request(1, 0.0, 16, 16)]
    servers, firsts, dones, _ = serve(HexGenPlan((TWO_STAGES,), max_batch=1), reqs)
    first, done = dict(firsts), dict(dones)
    assert servers[0].loops == 2
    # two loops: request 1 does not wait for request 0 to finish, only for stage 0 to free up
    assert first[0] < first[1] < done[0]
    # the two prefills share both stages (their kernels interleave on the FIFO streams), so each
    # takes at least its time alone, but together far less than back to back
    alone = step(TWO_STAGES, "prefill", 1, 16, 16)
    assert first[0] >= alone * (1 - 1e-12)
    assert first[1] < 1.8 * alone


@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_finishes_exactly_once_in_order_of_its_own_tokens(policy):
    reqs = poisson_requests(200.0, n=30, seed=3, prompt_lens=(8, 40, 100), output_lens=(1, 3, 9))
    plan = HexGenPlan((ONE_STAGE, TWO_STAGES), max_batch=3)
    servers, firsts, dones, where = serve(plan, reqs, policy)
    by_rid = {r.rid: r for r in reqs}
    assert Counter(rid for rid, _ in firsts) == Counter(r.rid for r in reqs)  # one first token each
    assert Counter(rid for rid, _ in dones) == Counter(r.rid for r in reqs)  # and one finish each
    first, done = dict(firsts), dict(dones)
    for rid, r in by_rid.items():
        assert r.arrival_s <= first[rid] <= done[rid]
        if r.output_len == 1:
            assert first[rid] == done[rid]
    for s in servers:
        assert s.outstanding == 0 and not s.queue
        for phase, batch, seq, kv in s.steps:
            assert 1 <= batch <= plan.max_batch
            if phase == "prefill":
                assert seq == kv and seq % PROMPT_BUCKET == 0
            else:
                assert seq == 1 and kv % KV_BUCKET == 0
        mine = [by_rid[rid] for rid, i in where.items() if i == s.index]
        # every sequence is prefilled once and decoded output_len - 1 times
        assert sum(b for p, b, _, _ in s.steps if p == "prefill") == len(mine)
        assert sum(b for p, b, _, _ in s.steps if p == "decode") == sum(r.output_len - 1 for r in mine)
    if policy == "round-robin":
        order = sorted(reqs, key=lambda r: (r.arrival_s, r.rid))
        assert [where[r.rid] for r in order] == [i % 2 for i in range(len(order))]
    assert set(where.values()) == {0, 1}


# ---- dispatcher ---------------------------------------------------------------------------------------
def servers_for(replicas, max_batch=2, outstanding=None):
    plan = HexGenPlan(tuple(replicas), max_batch=max_batch)
    out = [ReplicaServer(i, r, plan, MODEL, on_first=print, on_done=print) for i, r in enumerate(replicas)]
    for s, n in zip(out, outstanding or [0] * len(out), strict=True):
        s.outstanding = n
    return out


def test_unknown_policy_is_an_input_error():
    with pytest.raises(InputError) as e:
        Dispatcher(servers_for([ONE_STAGE]), [[1.0, 1.0]], "fastest")
    assert e.value.field == "--dispatch"
    assert "fastest" in e.value.message and all(p in e.value.message for p in POLICIES)


def test_round_robin_ignores_load():
    servers = servers_for([ONE_STAGE, ONE_STAGE, ONE_STAGE], outstanding=[5, 0, 0])
    d = Dispatcher(servers, [[1.0, 1.0]] * 3, "round-robin")
    assert [d.choose().index for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize(("outstanding", "chosen"), [((0, 0), 0), ((1, 0), 0), ((2, 0), 1), ((3, 1), 0)])
def test_weighted_is_outstanding_per_unit_speed(outstanding, chosen):
    # replica 1 is half as fast: (n0 + 1) x 1 vs (n1 + 1) x 2; ties to the lower index
    servers = servers_for([ONE_STAGE, ONE_STAGE], outstanding=list(outstanding))
    d = Dispatcher(servers, [[1.0, 9.0], [2.0, 9.0]], "weighted")
    assert d.choose().index == chosen


def test_least_latency_prediction_counts_batch_slots_and_waves():
    one, two = servers_for([ONE_STAGE, TWO_STAGES], max_batch=2)
    d = Dispatcher([one, two], [[1.0, 1.5], [1.0, 1.5]])
    assert d.policy == "least-latency"
    # one loop of 2 sequences: n = outstanding + 1 -> step[min(2, n) - 1] x ceil(n / 2)
    expected_one = {0: 1.0, 1: 1.5, 2: 3.0, 3: 3.0, 4: 4.5}
    # two loops (two stages) of 2: step[min(2, ceil(n / 2)) - 1] x ceil(n / 4)
    expected_two = {0: 1.0, 1: 1.0, 2: 1.5, 3: 1.5, 4: 3.0}
    for n, t in expected_one.items():
        one.outstanding = n
        assert d.predicted(one) == t
    for n, t in expected_two.items():
        two.outstanding = n
        assert d.predicted(two) == t


def test_least_latency_joins_a_busy_fast_replica_over_an_idle_slow_one():
    fast, slow = servers_for([ONE_STAGE, ONE_STAGE], max_batch=4, outstanding=[2, 0])
    d = Dispatcher([fast, slow], [[0.010, 0.011, 0.012, 0.013], [0.050, 0.051, 0.052, 0.053]])
    assert d.choose() is fast  # 12 ms joining a batch of 3 beats 50 ms alone
    fast.outstanding = 4  # a second wave on the fast one: 2 x 10 ms, still better
    assert d.choose() is fast
    fast.outstanding = 20  # six waves of 13 ms: now the slow one wins
    assert d.choose() is slow


@pytest.mark.parametrize("policy", ["least-latency", "weighted"])
def test_ties_go_to_the_lowest_index_whatever_the_order(policy):
    servers = servers_for([ONE_STAGE, ONE_STAGE, ONE_STAGE])
    times = [[1.0, 1.0]] * 3
    assert Dispatcher(servers, times, policy).choose().index == 0
    assert Dispatcher(servers[::-1], times, policy).choose().index == 0
    servers[0].outstanding = 5
    assert Dispatcher(servers[::-1], times, policy).choose().index == 1


# ---- metrics -------------------------------------------------------------------------------------------
def test_request_record_latencies():
    r = RequestRecord(
        0, arrival_s=1.0, prompt_len=32, output_len=5, first_token_s=1.5, finish_s=3.5, replica=1
    )
    assert r.latency_s == 2.5 and r.ttft_s == 0.5
    assert r.tpot_s == pytest.approx(2.0 / 4)  # 4 tokens after the first in 2 s
    assert RequestRecord(1, 0.0, 8, 1, 0.3, 0.3).tpot_s == 0.0  # one token: no time per output token
    unfinished = RequestRecord(2, 1.0, 8, 4, first_token_s=2.0)
    assert unfinished.latency_s == INF and unfinished.tpot_s == INF and unfinished.ttft_s == 1.0
    assert RequestRecord(3, 1.0, 8, 1).tpot_s == 0.0


def result_of(latencies, *, output_len=10, makespan=10.0, price=3.6, **kw) -> ServeResult:
    records = tuple(
        RequestRecord(i, float(i), 16, output_len, float(i) + lat / 2, float(i) + lat)
        for i, lat in enumerate(latencies)
    )
    return ServeResult(True, records=records, makespan_s=makespan, price_per_hour=price, replicas=2, **kw)


def test_attainment_counts_deadlines_met_and_unfinished_requests_miss():
    res = result_of([1.0, 2.0, 3.0, INF])
    assert res.attainment([1.5, 1.5, 3.0, 100.0]) == 0.5  # on the deadline counts as met
    assert res.attainment(np.full(4, 10.0)) == 0.75
    assert res.attainment([0.5] * 4) == 0.0
    assert ServeResult(True).attainment([]) == 0.0


def test_cost_per_million_generated_tokens():
    res = result_of([1.0] * 10, output_len=10, makespan=10.0, price=3.6)
    # $3.6 / h for 10 s = $0.01 for 100 tokens -> $100 per million
    assert res.generated_tokens == 100
    assert res.cost_usd_per_mtok == pytest.approx(100.0, rel=1e-12)
    partial = result_of([1.0, INF], output_len=7)
    assert partial.generated_tokens == 7  # the unfinished request generated nothing countable
    assert result_of([INF]).cost_usd_per_mtok == INF
    assert result_of([1.0], makespan=0.0).cost_usd_per_mtok == INF


def test_summary_of_a_feasible_run():
    res = result_of(
        [1.0, 2.0, 3.0, 4.0], output_len=5, makespan=8.0, price=0.0, extras={"dispatch": "weighted"}
    )
    s = res.summary(deadlines=[2.0] * 4)
    assert s["feasible"] is True
    assert (s["requests"], s["finished"], s["replicas"]) == (4, 4, 2)
    assert s["throughput_tok_s"] == 20 / 8.0
    # numpy's linear percentiles of 1, 2, 3, 4
    assert s["latency_s"] == {"p50": 2.5, "p90": pytest.approx(3.7), "p99": pytest.approx(3.97), "mean": 2.5}
    assert s["ttft_s"]["p50"] == 1.25  # first token at half the latency
    assert s["tpot_s"]["mean"] == pytest.approx(np.mean([0.5, 1.0, 1.5, 2.0]) / 4)
    assert s["slo_attainment"] == 0.5
    assert s["cost_usd_per_mtok"] == 0.0  # no price: free, not infinite
    assert s["dispatch"] == "weighted"
    assert "slo_attainment" not in res.summary()


def test_summary_percentiles_are_over_finished_requests_with_the_rest_counted_beside():
    """A dropped or unfinished request has no latency: percentiles and means are over the finished
    ones (as serving benchmarks report them), ``unfinished`` says how many are not in them, and
    attainment still counts them as misses. Strict JSON, no numpy warning."""
    res = result_of([1.0, 2.0, 3.0, INF], extras={"dropped": 1})
    s = res.summary(deadlines=[10.0] * 4)
    json.dumps(s, allow_nan=False)
    assert (s["requests"], s["finished"], s["unfinished"], s["dropped"]) == (4, 3, 1, 1)
    assert s["latency_s"] == {"p50": 2.0, "p90": pytest.approx(2.8), "p99": pytest.approx(2.98), "mean": 2.0}
    assert s["ttft_s"]["p50"] == 1.0 and s["tpot_s"]["mean"] == pytest.approx(2.0 / 2 / 9)
    assert s["slo_attainment"] == 0.75  # the unfinished one misses
    assert res.mean_latency_s() == 2.0 and len(res.finished) == 3
    # the finished requests' numbers do not depend on how many others were dropped
    assert result_of([1.0, 2.0, 3.0]).summary()["latency_s"] == s["latency_s"]
    none = result_of([INF]).summary()
    assert none["latency_s"] == {"p50": None, "p90": None, "p99": None, "mean": None}
    assert none["finished"] == 0 and none["unfinished"] == 1
    assert none["cost_usd_per_mtok"] is None and none["throughput_tok_s"] == 0.0
    assert result_of([INF]).mean_latency_s() == INF
    assert ServeResult(False, reason="out of memory on n0.gpu1").summary() == {
        "feasible": False,
        "reason": "out of memory on n0.gpu1",
    }


# ---- request streams --------------------------------------------------------------------------------------
def test_poisson_streams_are_seeded_and_rate_only_rescales_time():
    a = poisson_requests(2.0, n=50, seed=7)
    assert a == poisson_requests(2.0, n=50, seed=7)
    assert a != poisson_requests(2.0, n=50, seed=8)
    fast = poisson_requests(8.0, n=50, seed=7)
    assert [(r.rid, r.prompt_len, r.output_len) for r in fast] == [
        (r.rid, r.prompt_len, r.output_len) for r in a
    ]
    assert [r.arrival_s for r in fast] == pytest.approx([r.arrival_s / 4 for r in a], rel=1e-12)
    assert [r.rid for r in a] == list(range(50))
    assert all(x.arrival_s < y.arrival_s for x, y in itertools.pairwise(a))
    assert {r.prompt_len for r in a} <= {32, 64, 128} and {r.output_len for r in a} <= {32, 64, 128}


def test_poisson_rate_and_duration_bound():
    long = poisson_requests(5.0, n=4000, seed=1, prompt_lens=(10,), output_lens=(3,))
    gaps = np.diff([0.0] + [r.arrival_s for r in long])
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    assert {(r.prompt_len, r.output_len) for r in long} == {(10, 3)}
    timed = poisson_requests(50.0, duration_s=20.0, seed=2)
    assert all(r.arrival_s <= 20.0 for r in timed)
    assert abs(len(timed) - 1000) < 5 * math.sqrt(1000)
    both = poisson_requests(50.0, n=10, duration_s=20.0, seed=2)
    assert len(both) == 10  # the count ends first
    assert poisson_requests(0.1, n=100, duration_s=1.0, seed=2) == [
        r for r in poisson_requests(0.1, n=100, seed=2) if r.arrival_s <= 1.0
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"rate": 0.0, "n": 3}, "--rate"), ({"rate": 1.0}, "--duration")]
)
def test_poisson_bad_arguments_are_input_errors(kwargs, field):
    with pytest.raises(InputError) as e:
        poisson_requests(**kwargs)
    assert e.value.field == field


def test_read_trace_sorts_and_renumbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_len,output_len\n2.5,10,4\n0.5,20,8\n2.5,30,1\n0,5,2\n")
    assert read_trace(path) == [
        Request(0, 0.0, 5, 2),
        Request(1, 0.5, 20, 8),
        Request(2, 2.5, 10, 4),  # equal times keep file order
        Request(3, 2.5, 30, 1),
    ]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("arrival_s,prompt_len\n0,1\n", "output_len", "missing column"),
        ("arrival_s,prompt_len,output_len\n", None, "no requests"),
        ("arrival_s,prompt_len,output_len\n0,1,1\n-1,1,1\n", "arrival_s", "line 3"),
        ("arrival_s,prompt_len,output_len\ninf,1,1\n", "arrival_s", "line 2"),
        ("arrival_s,prompt_len,output_len\nsoon,1,1\n", "arrival_s", "'soon'"),
        ("arrival_s,prompt_len,output_len\n0,0,1\n", "prompt_len", "positive integer"),
        ("arrival_s,prompt_len,output_len\n0,1,1.5\n", "output_len", "'1.5'"),
    ],
)
def test_read_trace_errors_name_the_field(tmp_path, text, field, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        read_trace(path)
    assert e.value.field == field and e.value.source == str(path)
    assert words in e.value.message


def test_read_trace_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_trace(tmp_path / "nope.csv")
