"""HexGen: asymmetric TP x PP plans, the two-level CP-SAT scheduler, and the serving simulation.

Golden comparison: arXiv 2311.11514 (abstract; paper_figs/paper_points.csv) reports, for
Llama-2-70B at the same budget, up to 2.3x lower latency deadline and up to 4x higher request rate
on the 58-GPU heterogeneous rig than on 16 x A100-40G.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hetsim.api import compare, problem
from hetsim.cli import main
from hetsim.errors import InputError
from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.planner.hexgen_cpsat import (
    CostTable,
    Demand,
    Part,
    candidates,
    inner_cpsat,
    inner_exhaustive,
    inner_symmetric,
    layout_latency,
    machine_classes,
    reference_plan,
    search,
)
from hetsim.planner.hexgen_study import best_min_scale, make_study
from hetsim.serving.serve import Reference, max_rate, min_scale, serve_plan
from hetsim.serving.workload import Request, poisson_requests, read_trace
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.hexgen import HexGenPlan, Replica, Stage, symmetric_plan
from hetsim.strategies.pipeline_costs import request_latency
from hetsim.workload import Workload

L70 = get_model("llama2-70b")


@pytest.fixture(scope="module")
def homog():
    return load_rig("hexgen-homogeneous")


@pytest.fixture(scope="module")
def full():
    return load_rig("hexgen-full-budget")


@pytest.fixture(scope="module")
def reference(homog):
    return Reference.build(homog, L70, reference_plan(homog, L70))


# ---- plans, memory, offline batch ---------------------------------------------------------------
def test_plan_round_trip_and_gqa_kv_per_tp(homog):
    s = get_strategy("hexgen")
    g = homog.nodes["n0"].gpus
    plan = HexGenPlan((Replica((Stage(g[:4], 50), Stage(g[4:6], 30))),))
    assert s.plan_from_dict(json.loads(json.dumps(s.plan_to_dict(plan)))) == plan
    wl = Workload(4, 128, 128)
    fp = s.footprint(plan, homog, L70, wl)
    # GQA: 8 KV heads x 128 x 2 bytes x 2 (K and V) per token per layer, split over the TP group
    kv_layer_token = 2 * 8 * 128 * 2
    assert fp[g[0]]["kv_cache"] == pytest.approx(kv_layer_token * 4 * 256 * 50 / 4)
    assert fp[g[4]]["kv_cache"] == pytest.approx(kv_layer_token * 4 * 256 * 30 / 2)
    assert fp[g[0]]["weights"] > fp[g[4]]["weights"] * 50 / 30 * 2 / 4  # embedding on the first stage


def test_out_of_memory_is_an_infeasible_result(full):
    one = (full.nodes["n6"].gpus[0],)  # a single 24 GB 3090 Ti cannot hold 80 layers
    r = simulate(
        get_strategy("hexgen"), HexGenPlan((Replica((Stage(one, 80),)),)), full, L70, Workload(1, 32, 4)
    )
    assert not r.feasible and "n6.gpu0" in r.reason


def test_bad_plans_are_input_errors(homog):
    s, wl = get_strategy("hexgen"), Workload(1, 32, 4)
    g0, g1 = homog.nodes["n0"].gpus, homog.nodes["n1"].gpus
    bad = [
        (HexGenPlan((Replica((Stage(("n9.gpu0",), 80),)),)), "devices"),
        (HexGenPlan((Replica((Stage((g0[0], g1[0]), 80),)),)), "devices"),  # TP across machines
        (HexGenPlan((Replica((Stage(g0, 40), Stage(g0[:1], 40))),)), "devices"),  # GPU twice
        (HexGenPlan((Replica((Stage(g0, 70),)),)), "params.replicas[0].stages"),  # layers missing
    ]
    for plan, field in bad:
        with pytest.raises(InputError) as e:
            s.footprint(plan, homog, L70, wl)
        assert field in e.value.field


def test_offline_compare_and_symmetric_baseline(homog):
    p = problem("llama2-70b", "hexgen-homogeneous", batch=4, prompt_len=32, gen_len=8)
    (r,) = compare(p, ["hexgen"], "throughput")
    assert r.feasible and r.throughput_tok_s > 0
    sym = search(homog, L70, p.workload, "throughput", symmetric=True)
    assert sym is not None and sym.symmetric
    assert {len(s.devices) for rep in sym.replicas for s in rep.stages} == {
        len(sym.replicas[0].stages[0].devices)
    }
    base = symmetric_plan(homog, L70, [list(homog.nodes["n0"].gpus + homog.nodes["n1"].gpus)], 8, p.workload)
    assert [s.layers for s in base.replicas[0].stages] == [40, 40]
    assert simulate(get_strategy("hexgen"), base, homog, L70, p.workload).feasible


# ---- scheduler --------------------------------------------------------------------------------
SMALL_SHAPES = [  # (machine class model, part size) pairs from one region of the full-budget rig
    (("rtx-a6000", 2), ("rtx-a5000", 2)),
    (("rtx-a5000", 2), ("a40", 2)),
    (("rtx-a6000", 4),),
    (("a40", 4),),
    (("rtx-a5000", 2),),  # cannot hold the model under this demand: both say so
]


SERVING_DEMAND = Demand(  # 6 sequences per batch, up to 8 batches in flight: KV grows with stages
    prompt_len=128, output_len=64, kv_sequences=6, max_in_flight=8, context=2048, act_tokens=2048
)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("serving", [False, True], ids=["offline", "serving"])
def test_inner_cpsat_equals_exhaustive(full, shape, serving):
    model = get_model("llama2-13b")
    demand = Demand(prompt_len=128, output_len=64, kv_sequences=48, context=2048, act_tokens=2048)
    if serving:
        demand = SERVING_DEMAND
    classes = machine_classes(full)
    table = CostTable(full, model, demand, classes)
    idx = {(c.gpu_model, c.region): i for i, c in enumerate(classes)}
    parts = tuple(Part(idx[m, "illinois"], k) for m, k in shape)
    got, want = inner_cpsat(table, parts), inner_exhaustive(table, parts)
    if len(shape) == 2 and not serving:  # memory binds: the layers split unevenly over two GPU types
        assert want is not None and len({g.layers for g in want.groups}) > 1
    assert (got is None) == (want is None)
    if want is not None:
        assert got.latency_s == pytest.approx(want.latency_s, rel=1e-6, abs=1e-6)
        assert layout_latency(table, parts, got.groups) == pytest.approx(got.latency_s, rel=1e-6)
        assert sum(g.layers for g in got.groups) == model.layers
        sym = inner_symmetric(table, parts)
        if sym is not None:  # the asymmetric optimum is never worse than the uniform baseline
            assert got.latency_s <= sym.latency_s * (1 + 1e-6)


def _every_shape(table, max_parts=3):
    """Every region-local multiset of parts laid out by the inner level, none dropped."""
    from itertools import combinations_with_replacement

    from hetsim.planner.hexgen_cpsat import Shape

    out = []
    for region in sorted({c.region for c in table.classes}):
        here = [(i, c) for i, c in enumerate(table.classes) if c.region == region]
        options = [Part(i, k) for i, c in here for k in c.part_sizes()]
        for n in range(1, max_parts + 1):
            for combo in combinations_with_replacement(options, n):
                per_class = {p.cls: sum(q.cls == p.cls for q in combo) for p in combo}
                if any(k > len(table.classes[c].nodes) for c, k in per_class.items()):
                    continue
                layout = inner_cpsat(table, combo)
                if layout is not None:
                    out.append(Shape(combo, layout))
    return out


def _sub_multiset(small, big) -> bool:
    return all(small.count(p) <= big.count(p) for p in set(small))


@pytest.mark.parametrize(
    ("rig_name", "model_name", "demand"),
    [
        ("hexgen-full-budget", "llama2-70b", SERVING_DEMAND),
        ("hexgen-half-budget", "llama2-13b", Demand()),
        ("hexgen-full-budget", "llama2-13b", Demand.offline(Workload(4, 512, 32))),
    ],
)
def test_dropped_shapes_are_dominated_and_the_outer_optimum_is_unchanged(rig_name, model_name, demand):
    """enumerate_shapes skips (or drops) a shape that a sub-multiset of its parts serves at least as
    fast; every shape it drops is dominated so, and the outer level's optimum at every latency cap
    is what it is over every shape."""
    from hetsim.planner.hexgen_cpsat import enumerate_shapes, outer_cpsat

    rig, model = load_rig(rig_name), get_model(model_name)
    classes = machine_classes(rig)
    table = CostTable(rig, model, demand, classes)
    kept, every = enumerate_shapes(table), _every_shape(table)
    assert 0 < len(kept) < len(every)
    lat = {s.parts: s.layout.latency_s for s in every}
    for s in kept:
        assert s.layout.latency_s == pytest.approx(lat[s.parts], rel=1e-9)
    kept_parts = {s.parts for s in kept}
    for s in every:
        if s.parts in kept_parts:
            continue
        assert any(
            _sub_multiset(k.parts, s.parts) and k.layout.latency_s <= s.layout.latency_s * (1 + 1e-9)
            for k in kept
            if k.parts != s.parts
        ), s.parts

    def value(chosen):
        big = sum(c.gpus * len(c.nodes) for c in classes) + 1
        rate = {s.parts: round(1e6 / s.layout.latency_s) * big - sum(p.gpus for p in s.parts) for s in every}
        return sum(n * rate[s.parts] for s, n in chosen or [])

    for cap in sorted(set(lat.values())):
        assert value(outer_cpsat(classes, kept, cap)) == value(outer_cpsat(classes, every, cap))


def test_serving_reserves_kv_for_one_batch_on_a_single_stage(tmp_path):
    """A one-GPU replica runs one batch at a time, so it holds KV for ``max_batch`` sequences, not
    for ``MAX_IN_FLIGHT`` batches (7B on one A100-80G: 32 x 2304 tokens of KV is 38.7 GB and fits
    beside 13.5 GB of weights; 8 x that would not)."""
    from hetsim.planner.hexgen_cpsat import search_serving

    rig_file = tmp_path / "one-a100.yaml"
    rig_file.write_text(
        "name: one-a100\ndescription: one A100-80G\nsource: test\nnodes:\n"
        "  - count: 1\n    region: lab\n    cpus: [xeon-8380]\n"
        "    host_memory: {value: 256 GiB, source: test, grade: assumed}\n"
        "    gpus: [{model: a100-80g, count: 1}]\n"
    )
    rig, model = load_rig(rig_file), get_model("llama2-7b")
    reqs = [Request(i, 0.2 * i, 2048, 256) for i in range(4)]
    found = search_serving(rig, model, reqs, max_batch=32)
    assert found is not None
    plan, res = found
    assert res.feasible and len(plan.replicas[0].stages) == 1
    # the same demand with every batch in flight reserved cannot fit the one GPU
    over = Demand(prompt_len=2048, output_len=256, kv_sequences=32 * 8, context=2304, act_tokens=32 * 2048)
    assert candidates(rig, model, over, max_batch=32) == []


def test_engine_confirms_planner_latency(full):
    demand = Demand(prompt_len=64, output_len=64, kv_sequences=8, context=256, act_tokens=1024)
    plan = candidates(full, L70, demand, max_candidates=2)[0].plan
    rep = plan.replicas[0]
    one = serve_plan(HexGenPlan((rep,)), full, L70, [Request(0, 0.0, 64, 64)])
    analytic = request_latency(full, rep.stages, L70, 64, 64)
    assert one.records[0].latency_s == pytest.approx(analytic, rel=0.03)


# ---- serving ------------------------------------------------------------------------------------
def test_poisson_is_seeded_and_scales_with_rate():
    a, b = poisson_requests(2.0, n=50, seed=3), poisson_requests(2.0, n=50, seed=3)
    assert a == b and a != poisson_requests(2.0, n=50, seed=4)
    c = poisson_requests(4.0, n=50, seed=3)
    assert [r.arrival_s for r in c] == pytest.approx([r.arrival_s / 2 for r in a])
    assert {r.prompt_len for r in a} <= {32, 64, 128}
    d = poisson_requests(2.0, duration_s=30, seed=1)
    assert 30 < len(d) < 100 and max(r.arrival_s for r in d) <= 30


def test_serving_is_deterministic_and_meets_single_request_latency(homog, reference):
    plan = reference.plan
    reqs = poisson_requests(2.0, n=60, seed=7)
    r1, r2 = serve_plan(plan, homog, L70, reqs), serve_plan(plan, homog, L70, reqs)
    assert r1.records == r2.records
    lat = r1.latencies()
    ref = reference.latencies(reqs)
    assert np.all(lat >= ref * (1 - 1e-9))  # nobody beats running alone on the same plan
    s = r1.summary(2 * ref)
    assert s["finished"] == 60 and 0 < s["slo_attainment"] <= 1
    assert s["latency_s"]["p50"] <= s["latency_s"]["p90"] <= s["latency_s"]["p99"]
    assert s["cost_usd_per_mtok"] > 0 and s["price_usd_per_hour"] == pytest.approx(65.54)


def test_max_rate_bisection():
    assert max_rate(lambda r: 1.0 if r <= 3.7 else 0.5, 0.99, iterations=12) == pytest.approx(3.7, rel=0.01)
    assert max_rate(lambda r: 0.0, 0.99) == 0.0


def test_trace_csv_and_errors(tmp_path):
    good = tmp_path / "t.csv"
    good.write_text("arrival_s,prompt_len,output_len\n1.5,32,64\n0.5,128,32\n")
    reqs = read_trace(good)
    assert [(r.arrival_s, r.prompt_len) for r in reqs] == [(0.5, 128), (1.5, 32)]
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_len,output_len\n0.1,32,-3\n")
    with pytest.raises(InputError) as e:
        read_trace(bad)
    assert e.value.source == str(bad) and e.value.field == "output_len"
    missing = tmp_path / "m.csv"
    missing.write_text("arrival_s,prompt_len\n0.1,32\n")
    with pytest.raises(InputError) as e:
        read_trace(missing)
    assert e.value.field == "output_len"


def test_cli_serve(capsys, tmp_path):
    args = ["serve", "--model", "llama2-70b", "--hw", "hexgen-homogeneous", "--rate", "1"]
    assert main([*args, "--num-requests", "20", "--slo-scale", "3", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["requests"] == 20 and 0 <= doc["slo_attainment"] <= 1 and doc["latency_s"]["p99"] > 0
    assert main([*args, "--slo", "-2"]) == 2
    assert "--slo" in capsys.readouterr().err
    trace = tmp_path / "x.csv"
    trace.write_text("arrival_s,prompt_len,output_len\nsoon,32,32\n")
    assert (
        main(["serve", "--model", "llama2-70b", "--hw", "hexgen-homogeneous", "--requests", str(trace)]) == 2
    )
    assert "arrival_s" in capsys.readouterr().err


# ---- golden: heterogeneous vs homogeneous at the same budget ----------------------------------
@pytest.fixture(scope="module")
def studies():
    return {n: make_study(n, L70, max_candidates=3) for n in ("hexgen-homogeneous", "hexgen-full-budget")}


def _scales(studies, reference, rate):
    reqs = poisson_requests(rate, n=120, seed=0)
    return {n: best_min_scale(s.run_all(reqs), reference, 0.99) for n, s in studies.items()}


def test_same_budget_rigs(studies, reference):
    assert studies["hexgen-full-budget"].price_per_hour == pytest.approx(65.04)
    assert studies["hexgen-homogeneous"].price_per_hour == pytest.approx(65.54)
    light = _scales(studies, reference, 1.0)
    heavy = _scales(studies, reference, 8.0)
    # the A100 rig serves a lone request fastest, so it wins tight deadlines at light load ...
    assert light["hexgen-homogeneous"] < light["hexgen-full-budget"]
    # ... and the heterogeneous rig's extra replicas narrow the gap as the rate rises
    gap_light = light["hexgen-full-budget"] / light["hexgen-homogeneous"]
    gap_heavy = heavy["hexgen-full-budget"] / heavy["hexgen-homogeneous"]
    assert gap_heavy < gap_light


@pytest.mark.xfail(
    strict=False,
    reason="hetsim: the heterogeneous rig never needs a tighter deadline than 16 x A100: homogeneous/"
    "hetero deadline at 99% is 0.53x-0.89x (1-8 req/s) vs the paper's up to 2.3x. A lone request's "
    "latency is the parameter scan, and a PCIe TP group of 3090 Tis scans slower than NVSwitch A100s; "
    "the extra replicas only help once the A100s queue. See paper_figs/hexgen.py",
)
def test_golden_deadline_2_3x(studies, reference):
    s = _scales(studies, reference, 8.0)
    assert s["hexgen-homogeneous"] / s["hexgen-full-budget"] == pytest.approx(2.3, rel=0.25)


def _attainments(studies, reference, rate, scale):
    from hetsim.planner.hexgen_study import best_attainment

    reqs = poisson_requests(rate, n=120, seed=0)
    ref = reference.latencies(reqs)
    return {n: best_attainment(s.run_all(reqs), scale * ref) for n, s in studies.items()}


def test_same_budget_hetero_serves_more_at_generous_deadlines(studies, reference):
    # at 5x the A100 latency and 16 req/s the A100 rig saturates; the 58 GPUs still meet the deadline
    a = _attainments(studies, reference, 16.0, 5.0)
    assert a["hexgen-full-budget"] > a["hexgen-homogeneous"]
    assert a["hexgen-full-budget"] >= 0.99


@pytest.mark.xfail(
    strict=False,
    reason="hetsim: up to 1.68x higher rate at 99% attainment (deadline 5x; 1.19x at 3x, 0.18x at 2x) "
    "vs the paper's up to 4x: with continuous batching 16 A100s sustain about 9.5 req/s at 5x, the "
    "58-GPU rig about 16 (200 requests, seed 0); see paper_figs/hexgen.py",
)
def test_golden_rate_4x(studies, reference):
    # 4x: the heterogeneous rig meets 99% at four times a rate the A100 rig still meets
    homog_rate = 8.0
    assert _attainments(studies, reference, homog_rate, 5.0)["hexgen-homogeneous"] >= 0.99
    assert _attainments(studies, reference, 4 * homog_rate, 5.0)["hexgen-full-budget"] >= 0.99


def test_min_scale_uses_target(homog, reference):
    reqs = poisson_requests(1.0, n=30, seed=2)
    res = serve_plan(reference.plan, homog, L70, reqs)
    assert min_scale(res, reference, 0.5) <= min_scale(res, reference, 1.0)


def _outer_brute_force(classes, shapes, cap):
    """Best summed rate over every way to cut every machine and pick replicas (small rigs only)."""
    from functools import cache
    from itertools import product

    allowed = [s for s in shapes if s.layout.latency_s <= cap * (1 + 1e-9)]
    big = sum(c.gpus * len(c.nodes) for c in classes) + 1
    value = [round(1e6 / s.layout.latency_s) * big - sum(p.gpus for p in s.parts) for s in allowed]
    need = [{(p.cls, p.gpus): sum(1 for q in s.parts if q == p) for p in s.parts} for s in allowed]
    keys = sorted({(i, k) for i, c in enumerate(classes) for k in c.part_sizes()})

    @cache
    def best(pool: tuple[int, ...], start: int) -> int:
        out = 0
        for j in range(start, len(allowed)):
            left = list(pool)
            ok = True
            for key, n in need[j].items():
                left[keys.index(key)] -= n
                ok &= left[keys.index(key)] >= 0
            if ok:
                out = max(out, value[j] + best(tuple(left), j))
        return out

    top = 0
    machines = [(i, c) for i, c in enumerate(classes) for _ in c.nodes]
    for cuts in product(*[[None, *c.part_sizes()] for _, c in machines]):
        pool = [0] * len(keys)
        for (i, c), k in zip(machines, cuts, strict=True):
            if k is not None:
                pool[keys.index((i, k))] += c.gpus // k
        top = max(top, best(tuple(pool), 0))
    return top


@pytest.mark.parametrize("model_name", ["llama2-70b", "llama2-13b"])
def test_outer_cpsat_equals_brute_force(model_name):
    from hetsim.planner.hexgen_cpsat import enumerate_shapes, outer_cpsat

    rig, model = load_rig("hexgen-half-budget"), get_model(model_name)
    classes = machine_classes(rig)
    table = CostTable(rig, model, Demand(), classes)
    shapes = enumerate_shapes(table, max_parts=2)
    big = sum(c.gpus * len(c.nodes) for c in classes) + 1
    for cap in sorted({s.layout.latency_s for s in shapes})[::3]:
        chosen = outer_cpsat(classes, shapes, cap)
        got = sum(
            n * (round(1e6 / s.layout.latency_s) * big - sum(p.gpus for p in s.parts)) for s, n in chosen
        )
        assert got == _outer_brute_force(classes, shapes, cap)


def test_nodes_with_mixed_gpu_types_are_planned_per_type():
    """mixed-lab's node 0 holds an A100-80G and an RTX 4090: each must be planned as what it is."""
    from hetsim.api import best_result, problem
    from hetsim.strategies.base import get_strategy

    p = problem("llama2-70b", "mixed-lab", batch=1, prompt_len=128, gen_len=4)
    result = best_result(get_strategy("hexgen"), p, "throughput")
    assert result.feasible, result.reason
    for device, peak in result.peak_mem_bytes.items():
        assert peak <= p.rig.devices[device].mem_bytes


def test_default_plan_never_mixes_gpu_types_in_a_tp_group():
    from hetsim.api import problem
    from hetsim.strategies.base import get_strategy

    p = problem("opt-175b", "mixed-lab", batch=1, prompt_len=64, gen_len=4)
    plan = get_strategy("hexgen").default_plan(p.rig, p.model, p.workload)
    for replica in plan.replicas:
        for stage in replica.stages:
            assert len({p.rig.devices[d].model for d in stage.devices}) == 1, stage


def test_offline_demand_fields_are_the_workloads():
    """Demand.offline once passed its fields by position and shifted them when a field was added."""
    from hetsim.planner.hexgen_cpsat import Demand
    from hetsim.workload import Workload

    d = Demand.offline(Workload(4, 512, 32))
    assert (d.prompt_len, d.output_len, d.kv_sequences, d.context, d.act_tokens) == (512, 32, 4, 544, 2048)
    assert d.max_in_flight == 1  # an offline batch is one batch in flight


@pytest.mark.parametrize("symmetric", [False, True])
def test_shapes_whose_gpus_cannot_hold_a_gptq_checkpoint_are_not_solved(monkeypatch, symmetric):
    """enumerate_shapes' memory bound is the weights' size from their one home (``weight_bytes``):
    a Llama-2-7B GPTQ 4-bit checkpoint keeps its token table and LM head at 16 bits, 3.89 GB in all;
    the bound (parameters x int4's bytes) said 3.50 GB, so two 1.85 GB GPUs were handed to the solver."""
    import hetsim.planner.hexgen_cpsat as hc
    from hetsim.models.hf_config import spec_from_hf_dict
    from hetsim.models.spec import INT4
    from hetsim.models.weights import weight_bytes
    from hetsim.sweep.grid import apply_hardware

    cfg = json.loads((Path(__file__).parent / "data/hf-configs/Llama-2-7B/config.json").read_text())
    model = spec_from_hf_dict({**cfg, "quantization_config": {"quant_method": "gptq", "bits": 4}})
    need = weight_bytes(model, INT4)
    assert need == pytest.approx(3.889e9, rel=1e-3)
    rig = apply_hardware(load_rig("hexgen-half-budget"), {"gpu_mem_gb": 1.85})  # parts of 2, 3, 4, 8 GPUs
    classes = machine_classes(rig)
    table = CostTable(rig, model, Demand(weight_dtype="int4"), classes)
    solved = []
    for name in ("inner_cpsat", "inner_symmetric"):
        solve = getattr(hc, name)
        monkeypatch.setattr(hc, name, lambda t, parts, *a, _f=solve: solved.append(parts) or _f(t, parts, *a))
    hc.enumerate_shapes(table, max_parts=2, symmetric=symmetric)
    mem = [sum(p.gpus * rig.devices[table.group(p.cls, 1)[0]].mem_bytes for p in parts) for parts in solved]
    assert solved and min(mem) >= need
