"""A free batch (no --batch) under a throughput objective: FlexGen searches its GPU batch size and
number of GPU batches with the placement; the others run the largest batch their plan fits."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from hetsim import api
from hetsim.cli import app
from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import GBS_CHOICES, NB_CHOICES, candidate_flags, lp_candidates_free, solve_lp
from hetsim.planner.search import largest_batch
from hetsim.sim.run import fits
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.workload import Workload


@pytest.mark.parametrize(("budget", "prompt"), [(5e9, 128), (8e9, 256)])
def test_free_lp_search_finds_the_exhaustive_optimum(budget, prompt):
    """FlexGen's early stopping (nb grows until the block stops fitting or its time per sequence
    rises; gbs stops when nothing fits) loses nothing against every (gbs, nb, flags) of the grid."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    gpu, cpu, _ = endpoints(rig)
    ends = (gpu, cpu, "")
    wl = Workload(1, prompt, 8)
    sols, solved = lp_candidates_free(rig, model, wl, ends, budget)
    best = float("inf")
    n = 0
    for gbs, nb, fl in itertools.product(GBS_CHOICES, NB_CHOICES, candidate_flags(False)):
        sol = solve_lp(rig, model, Workload(gbs * nb, prompt, 8), gbs, nb, fl, ends, budget)
        n += 1
        if sol is not None:
            best = min(best, sol.time_per_seq_s)
    assert sols[0].time_per_seq_s == pytest.approx(best, rel=1e-9)
    assert solved <= n


def test_compare_throughput_picks_flexgen_class_batches_with_no_flags():
    p = api.problem("opt-30b", "flexgen-t4", batch=None)
    free = api.compare(p, ["flexgen", "accelerate"], "throughput")
    by = {r.strategy: r for r in free}
    fg = by["flexgen"]
    assert fg.feasible and fg.batch >= 64  # FlexGen's blocks are tens to hundreds of sequences
    assert fg.batch == fg.plan["gpu_batch_size"] * fg.plan["num_gpu_batches"]
    assert fg.throughput_tok_s > 20 * by["accelerate"].throughput_tok_s / by["accelerate"].batch
    one = api.compare(api.problem("opt-30b", "flexgen-t4", batch=1), ["flexgen"], "throughput")[0]
    assert one.batch == 1 and fg.throughput_tok_s > 10 * one.throughput_tok_s


def test_a_given_batch_is_fixed_and_latency_keeps_batch_one():
    fixed = api.compare(api.problem("opt-30b", "flexgen-t4", batch=8), ["flexgen", "deepspeed"], "throughput")
    assert {r.batch for r in fixed} == {8}
    lat = api.compare(api.problem("opt-30b", "flexgen-t4", batch=None), ["flexgen"], "latency")
    assert lat[0].batch == 1


def test_other_strategies_get_the_largest_batch_one_pass_holds():
    """DeepSpeed runs a big batch in passes: its free batch is what one pass holds, and one more
    sequence would not fit in it."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    s = get_strategy("deepspeed")
    wl = Workload(1, 512, 32)
    b = largest_batch(s, rig, model, wl)
    plan = s.default_plan(rig, model, Workload(b, 512, 32))
    assert plan.batch_per_pass == b and fits(s, plan, rig, model, Workload(b, 512, 32))
    over = s.default_plan(rig, model, Workload(b + 1, 512, 32))
    assert over.batch_per_pass < b + 1


def test_cli_rows_and_plan_file_carry_the_chosen_batch(tmp_path):
    runner = CliRunner()
    args = ["--model", "opt-30b", "--hw", "flexgen-t4"]
    res = runner.invoke(app, ["compare", *args, "--strategies", "flexgen", "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["workload"]["batch"] is None  # free: each row says its own
    batch = doc["results"][0]["batch"]
    assert batch >= 64
    out = tmp_path / "plan.json"
    res = runner.invoke(app, ["plan", *args, "--strategy", "flexgen", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["workload"]["batch"] == batch
    res = runner.invoke(
        app, ["compare", *args, "--strategies", "flexgen", "--batch", "4", "--format", "json"]
    )
    doc = json.loads(res.output)
    assert doc["workload"]["batch"] == 4 and doc["results"][0]["batch"] == 4


def test_the_free_batch_is_the_best_ranked_not_always_the_largest():
    """llama.cpp-style layer offload of OPT-13B on the A10 host: its CPU layers make the largest
    batch slower per token than a small one, so the free batch is neither 1 nor the largest, and it
    beats both."""
    from hetsim.planner.ranking import evaluator
    from hetsim.planner.search import best_batch, search

    rig, model = load_rig("hetegen-a10"), get_model("opt-13b")
    s = get_strategy("layer-offload")
    wl = Workload(1, 512, 32)
    top = largest_batch(s, rig, model, wl)
    b = best_batch(s, rig, model, wl, "throughput")

    def rate(batch: int) -> float:  # of the plan the search picks at that batch
        w = Workload(batch, 512, 32)
        return evaluator(s, rig, model, w)(search(s, rig, model, w, "throughput")).throughput_tok_s

    assert 1 < b < top
    assert rate(b) > rate(1) and rate(b) > rate(top)


def test_a_free_batch_never_reports_infeasible_where_a_smaller_batch_runs():
    """The searches rank on a short proxy run, whose KV cache is for a shorter context: on
    hexgen-full-budget gpu-only's pipeline at batch 1549 the proxy fitted and the full run then ran out
    of activation memory. The estimate now adds the full context's extra resident bytes to the proxy's
    peak."""
    from dataclasses import replace

    from hetsim.planner.ranking import estimate
    from hetsim.planner.search import search
    from hetsim.sim.run import simulate

    gpu_only = get_strategy("gpu-only")
    p = api.problem("llama2-7b", "hexgen-full-budget", batch=None)
    r = api.best_result(gpu_only, p, "throughput")
    assert r.feasible, r.reason
    at_one = api.best_result(gpu_only, api.problem("llama2-7b", "hexgen-full-budget", batch=1), "throughput")
    assert r.throughput_tok_s > at_one.throughput_tok_s
    wl = replace(p.workload, batch=1549)
    plan = search(gpu_only, p.rig, p.model, wl, "throughput")
    at_1549 = estimate(gpu_only, plan, p.rig, p.model, wl)
    assert at_1549.feasible
    assert simulate(gpu_only, plan, p.rig, p.model, wl).feasible  # the estimate and the full run agree
    # The ladder scores each batch by the plan the search picks there: 1549 ranked first by its
    # default plan, but its searched plan runs at under a third of the free batch's (256: ~1340 tok/s)
    assert r.batch < 1549
    assert r.throughput_tok_s > 3 * at_1549.throughput_tok_s


def test_the_full_context_check_reports_a_plan_budget_overflow_instead_of_raising():
    """A plan whose own GPU budget holds the proxy's context but not the full one (HeteGen's working
    set on hexgen-full-budget, reached once the ladder searched every rung) is an infeasible estimate
    with the reason, not a crash."""
    from types import SimpleNamespace

    from hetsim.planner.ranking import _full_context_short
    from hetsim.sim.memory import OutOfMemory

    class Stub:
        def footprint(self, plan, rig, model, wl):
            if wl.gen_len > 6:
                raise OutOfMemory("n0.gpu0", "working set (gpu_mem_budget)", 2e9, 0.0, 1e9)
            return {"n0.gpu0": {"weights": 1e9}}

    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    proxy, full = Workload(1, 512, 6), Workload(1, 512, 32)
    why = _full_context_short(Stub(), None, rig, model, proxy, full, SimpleNamespace(peak_mem_bytes={}))
    assert "out of memory on n0.gpu0" in why and "gpu_mem_budget" in why


def test_a_context_too_long_for_a_plans_gpu_budget_is_a_reason_not_a_crash():
    """HeteGen's footprint refuses a working set over its GPU budget; at a 4096-token context (gen 3584,
    the benchmark's long run) the estimate's full-context check met that refusal and crashed compare."""
    p = api.problem("llama2-70b", "mixed-lab", None, 512, 3584)
    r = api.best_result(get_strategy("hetegen"), p, "throughput")
    assert r.feasible or "out of memory" in r.reason


def test_a_footprint_that_refuses_itself_does_not_fit():
    """``fits`` (the free-batch bisection's test) answers False, not raises, where the footprint itself
    refuses the plan (HeteGen's working set over its own ``gpu_mem_budget``) or finds no route."""
    from hetsim.hardware.rig import NoRouteError
    from hetsim.sim.memory import OutOfMemory
    from hetsim.sim.run import fits

    class Stub:
        def __init__(self, exc):
            self.exc = exc

        def footprint(self, plan, rig, model, wl):
            raise self.exc

    rig, model, wl = load_rig("flexgen-t4"), get_model("opt-30b"), Workload(1, 512, 32)
    assert not fits(Stub(OutOfMemory("n0.gpu0", "working set", 2e9, 0.0, 1e9)), None, rig, model, wl)
    assert not fits(Stub(NoRouteError("n0.gpu0 -> n1.gpu0")), None, rig, model, wl)
