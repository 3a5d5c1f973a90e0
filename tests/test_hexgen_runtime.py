"""HexGen's runtime semantics as a serving mode (HexGen, arXiv 2311.11514): static batches run to
completion, batches pipelined through the stages, earliest-available dispatch, and dropping a
request that would miss its deadline. The default mode (continuous batching) is tested elsewhere."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.api import serve
from hetsim.errors import InputError
from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.serving.serve import serve_plan
from hetsim.serving.workload import Request, poisson_requests
from hetsim.strategies.hexgen import HexGenPlan, Replica, Stage
from hetsim.strategies.pipeline_costs import request_latency, step_time

RIG = load_rig("mixed-lab")
MODEL = dataclasses.replace(get_model("llama2-7b"), layers=4)
ONE_STAGE = Replica((Stage(("n0.gpu0",), 4),))
TWO_STAGES = Replica((Stage(("n1.gpu0",), 2), Stage(("n1.gpu1",), 2)))


def step(rep: Replica, phase: str, batch: int, seq: int, kv: int) -> float:
    return step_time(RIG, rep.stages, MODEL, phase, batch, seq, kv)


def finishes(res) -> dict[int, float]:
    return {r.rid: r.finish_s for r in res.records}


def test_static_batch_runs_to_completion_before_admitting_more():
    # request 2 arrives while the batch {0, 1} runs: continuous batching lets it join when 0 leaves,
    # HexGen's runtime makes it wait until the whole batch (1 is the long one) has finished
    reqs = [Request(0, 0.0, 32, 2), Request(1, 0.0, 32, 8), Request(2, 0.001, 32, 2)]
    plan = HexGenPlan((ONE_STAGE,), max_batch=2)
    cont = finishes(serve_plan(plan, RIG, MODEL, reqs))
    static = serve_plan(plan, RIG, MODEL, reqs, mode="hexgen")
    done = finishes(static)
    assert cont[2] < done[1] < cont[1]  # joiners delay request 1 under continuous batching only
    assert done[2] > done[1]
    prefill1, decode1 = step(ONE_STAGE, "prefill", 1, 32, 32), step(ONE_STAGE, "decode", 1, 1, 64)
    assert done[2] == pytest.approx(done[1] + prefill1 + decode1, rel=1e-9)
    assert static.extras == {"mode": "hexgen", "dropped": 0}


def test_batches_overlap_stage_by_stage():
    # two requests on a two-stage replica with batch 1: two loops, the second starts on stage 0
    # while the first is on stage 1, so both end well before twice one request's latency
    reqs = [Request(0, 0.0, 32, 16), Request(1, 0.0, 32, 16)]
    plan = HexGenPlan((TWO_STAGES,), max_batch=1)
    res = serve_plan(plan, RIG, MODEL, reqs, mode="hexgen")
    alone = request_latency(RIG, TWO_STAGES.stages, MODEL, 32, 16)
    done = finishes(res)
    assert min(done.values()) >= alone * (1 - 1e-9)  # sharing the stages slows each a little
    assert max(done.values()) < 1.6 * alone  # not one after the other (that would be 2x)


def test_drop_late_drops_only_what_would_miss_and_keeps_the_rest():
    plan = HexGenPlan((ONE_STAGE,), max_batch=1)
    alone = request_latency(RIG, ONE_STAGE.stages, MODEL, 32, 8)
    reqs = [Request(i, 0.0, 32, 8) for i in range(4)]  # four at once, one at a time
    deadlines = np.full(4, 2.5 * alone)  # the first two can make it, the third would end at 3x
    kept = serve_plan(plan, RIG, MODEL, reqs, mode="hexgen", deadlines=deadlines)
    dropped = serve_plan(plan, RIG, MODEL, reqs, mode="hexgen", deadlines=deadlines, drop_late=True)
    assert kept.attainment(deadlines) == dropped.attainment(deadlines) == 0.5
    assert all(np.isfinite(r.finish_s) for r in kept.records)
    assert [np.isfinite(r.finish_s) for r in dropped.records] == [True, True, False, False]
    assert dropped.extras["dropped"] == 2
    assert dropped.makespan_s == pytest.approx(2 * alone, rel=1e-2)  # the engine buckets contexts


def test_dropping_frees_the_replica_for_later_requests():
    # a late burst is dropped, so a request arriving after it still meets its deadline
    plan = HexGenPlan((ONE_STAGE,), max_batch=1)
    alone = request_latency(RIG, ONE_STAGE.stages, MODEL, 32, 8)
    reqs = [Request(i, 0.0, 32, 8) for i in range(6)] + [Request(6, 2.1 * alone, 32, 8)]
    deadlines = np.full(len(reqs), 1.5 * alone)
    keep = serve_plan(plan, RIG, MODEL, reqs, mode="hexgen", deadlines=deadlines)
    drop = serve_plan(plan, RIG, MODEL, reqs, mode="hexgen", deadlines=deadlines, drop_late=True)
    assert keep.records[6].latency_s > deadlines[6]
    assert drop.records[6].latency_s <= deadlines[6]
    assert drop.attainment(deadlines) > keep.attainment(deadlines)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 50), rate=st.floats(0.5, 40), scale=st.floats(1.0, 6.0))
def test_dropped_requests_never_finish_and_served_ones_are_complete(seed, rate, scale):
    plan = HexGenPlan((ONE_STAGE, TWO_STAGES), max_batch=2)
    reqs = poisson_requests(rate, n=12, seed=seed, prompt_lens=(32,), output_lens=(4, 8))
    deadlines = np.full(len(reqs), scale * request_latency(RIG, TWO_STAGES.stages, MODEL, 32, 8))
    res = serve_plan(
        plan,
        RIG,
        MODEL,
        reqs,
        mode="hexgen",
        deadlines=deadlines,
        drop_late=True,
        dispatch="earliest-available",
    )
    served = [r for r in res.records if np.isfinite(r.finish_s)]
    assert len(served) + res.extras["dropped"] == len(reqs)
    assert all(r.finish_s >= r.arrival_s for r in served)
    assert res.attainment(deadlines) <= len(served) / len(reqs)


def test_earliest_available_fills_free_replicas_fastest_first():
    slow, fast = Replica((Stage(("n1.gpu0",), 4),)), ONE_STAGE  # RTX A6000, A100
    assert step(fast, "decode", 1, 1, 64) < step(slow, "decode", 1, 1, 64)
    plan = HexGenPlan((slow, fast), max_batch=1)
    reqs = [Request(0, 0.0, 32, 4), Request(1, 0.0, 32, 4), Request(2, 0.0, 32, 4)]
    res = serve_plan(plan, RIG, MODEL, reqs, mode="hexgen", dispatch="earliest-available")
    # the fast one first; the busy fast one is not free, so the idle slow one; then both busy
    assert [r.replica for r in res.records] == [1, 0, 1]


def test_mode_and_drop_late_are_checked():
    reqs = [Request(0, 0.0, 32, 4)]
    plan = HexGenPlan((ONE_STAGE,), max_batch=1)
    with pytest.raises(InputError, match="mode"):
        serve_plan(plan, RIG, MODEL, reqs, mode="vllm")
    with pytest.raises(InputError, match="--drop-late"):
        serve_plan(plan, RIG, MODEL, reqs, drop_late=True)
    with pytest.raises(InputError, match="--drop-late"):
        serve("llama2-7b", "mixed-lab", rate=1, num_requests=5, drop_late=True)
    with pytest.raises(InputError, match="--mode"):
        serve("llama2-7b", "mixed-lab", rate=1, num_requests=5, mode="static")


def test_api_serve_reports_the_mode_and_drops():
    doc = serve(
        "llama2-7b", "mixed-lab", rate=4, num_requests=30, max_batch=1, slo=0.5, mode="hexgen", drop_late=True
    )
    assert doc["feasible"] and doc["mode"] == "hexgen"
    assert 0 < doc["dropped"] < 30  # a 0.5 s deadline at 4 req/s: some dropped, some served
    assert doc["finished"] + doc["dropped"] == 30 and doc["unfinished"] == doc["dropped"]
    # percentiles over the served requests (they were None with any request dropped)
    lat = doc["latency_s"]
    assert all(lat[p] is not None for p in ("p50", "p90", "p99", "mean"))
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    plain = serve("llama2-7b", "mixed-lab", rate=4, num_requests=30, max_batch=1, slo=0.5)
    assert "mode" not in plain and "dropped" not in plain


def test_cli_serve_takes_mode_and_drop_late(capsys):
    from hetsim.cli import main

    args = ["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--rate", "4", "--num-requests", "20"]
    assert main([*args, "--max-batch", "1", "--slo", "0.5", "--mode", "hexgen", "--drop-late"]) == 0
    out = capsys.readouterr().out
    assert "mode: hexgen" in out and "dropped:" in out
    assert main([*args, "--mode", "static"]) == 2
    assert main([*args, "--drop-late"]) == 2
    assert "error:" in capsys.readouterr().err


# ---- the paper's setting: 58 GPUs vs 16 A100s at the same price, under HexGen's runtime ----------
@pytest.fixture(scope="module")
def paper_setting():
    from hetsim.planner.hexgen_study import make_reference, make_study

    l70 = get_model("llama2-70b")
    ref = make_reference("hexgen-homogeneous", l70, max_batch=1)
    studies = {
        n: make_study(n, l70, max_batch=1, max_candidates=3)
        for n in ("hexgen-homogeneous", "hexgen-full-budget")
    }
    return ref, studies


def _best(study, ref, rate, scale, length=64):
    """What paper_figs/hexgen.py --mode hexgen does per point: the best candidate, drop-late."""
    reqs = poisson_requests(rate, n=60, seed=0, prompt_lens=(length,), output_lens=(length,))
    dl = scale * ref.latencies(reqs)
    runs = [
        serve_plan(p, study.rig, study.model, reqs, mode="hexgen", deadlines=dl, drop_late=True)
        for p in study.plans
    ]
    return max((r.attainment(dl) for r in runs if r.feasible), default=0.0)


@pytest.mark.slow
def test_paper_setting_rate_ratio_is_at_least_2x_under_hexgens_runtime(paper_setting):
    # issue 17's bar, at one point of paper_figs/hexgen.py --mode hexgen (in/out 64 tokens, deadline
    # 10x the A100 latency, 99 % attainment): the A100 rig misses at 2.83 req/s, the 58 GPUs meet
    # 5.66, so the max-rate ratio is at least 2x (the figure's grid reads 2.83x). It rests on a tenth
    # replica, a TP-2 pipeline of the two 3-GPU machines' six RTX 3090 Ti (stages 13/27/13/27): it fits
    # since each 3090 Ti's 24 GiB counts as 23.6 GiB to torch (session 23; was 24e9 B, where TP-2 held
    # 26 layers, not 27, once the 0.5 GiB runtime reserve came off, and the bar was missed at 1.94x)
    ref, studies = paper_setting
    assert _best(studies["hexgen-homogeneous"], ref, 2 * 2**0.5, 10.0) < 0.99
    assert _best(studies["hexgen-full-budget"], ref, 4 * 2**0.5, 10.0) >= 0.99


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="hetsim under HexGen's runtime: up to 2.83x higher rate at equal attainment over lengths "
    "32/64/128 and deadlines 2x/5x/10x (paper_figs/hexgen.py --mode hexgen, 60 requests) vs the "
    "paper's up to 4x (HexGen, arXiv 2311.11514); see docs/hexgen.md",
)
def test_golden_rate_4x_under_hexgens_runtime(paper_setting):
    # 4x: the 58 GPUs meet 99 % at four times a rate the A100 rig still meets (2 req/s at 10x)
    ref, studies = paper_setting
    assert _best(studies["hexgen-homogeneous"], ref, 2.0, 10.0) >= 0.99
    assert _best(studies["hexgen-full-budget"], ref, 8.0, 10.0) >= 0.99


# ---- the CP-SAT search under HexGen's runtime: screened by the estimate, confirmed in the engine ----
@pytest.mark.parametrize(("rate", "scale", "length"), [(1.0, 5.0, 64), (8.0, 2.0, 32), (2.0, 10.0, 128)])
def test_screened_search_finds_the_best_candidate_that_serving_every_one_finds(
    paper_setting, rate, scale, length
):
    """search_serving confirms candidates in the order of their estimate and stops when the next
    estimate cannot beat the best confirmed; its attainment equals the best of serving every
    candidate in the engine (what it did before), and a second call gives the same plan."""
    from hetsim.planner.hexgen_cpsat import Demand, candidates, search_serving
    from hetsim.serving.batching import MAX_IN_FLIGHT

    ref, studies = paper_setting
    rig, model = studies["hexgen-full-budget"].rig, studies["hexgen-full-budget"].model
    reqs = poisson_requests(rate, n=40, seed=1, prompt_lens=(length,), output_lens=(length,))
    dl = scale * ref.latencies(reqs)
    kw = {"mode": "hexgen", "drop_late": True}
    plan, res = search_serving(rig, model, reqs, dl, max_batch=1, **kw)
    demand = Demand(length, length, 1, MAX_IN_FLIGHT, 2 * length, length)
    cands = candidates(rig, model, demand, max_batch=1)
    every = [serve_plan(c.plan, rig, model, reqs, deadlines=dl, **kw) for c in cands]
    assert res.attainment(dl) == max(r.attainment(dl) for r in every if r.feasible)
    assert search_serving(rig, model, reqs, dl, max_batch=1, **kw)[0] == plan
