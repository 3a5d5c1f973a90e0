"""HeteGen: golden points (arXiv 2403.01164 Fig. 8), alpha balance, knapsack, degenerate budgets."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hetsim.api import problem
from hetsim.planner.hetegen_knapsack import (
    Item,
    balanced_alpha,
    greedy_resident,
    items_for,
    plan_hetegen,
    saved_time,
    solve_resident,
)
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.hetegen import (
    STREAM_CHUNK_BYTES,
    buffer_bytes,
    eq5_alpha,
    eq5_speeds,
    module_bytes,
    module_counts,
    module_kinds,
    module_ops,
    working_set,
)

GB = 1e9
# paper_figs/paper_points.csv, HeteGen rows (values read off Fig. 8, about +-3 %).
HETEGEN_TOK_S = 1.365  # HeteGen, OPT-30B, ~6.25 GB of GPU memory
FLEXGEN_TOK_S = 0.431  # FlexGen, OPT-30B, ~6.1 GB of GPU memory
TOLERANCE = 0.15


@pytest.fixture(scope="module")
def opt30b():
    return problem("opt-30b", "hetegen-a10", batch=1, prompt_len=512, gen_len=64)


@pytest.fixture(scope="module")
def hetegen_6gb(opt30b):
    p = opt30b
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", 6.25 * GB)
    return plan, simulate(get_strategy("hetegen"), plan, p.rig, p.model, p.workload)


@pytest.mark.xfail(
    strict=False,
    reason="hetsim gives 1.134 tok/s vs published 1.365 (-17 %): decode reads 54.6 GB of host DRAM per token "
    "(CPU share in place + DMA of the GPU share) at the assumed 65.5 GB/s (16/40 of a Xeon 8380 socket "
    "x 0.8); "
    "the published total implies ~77 GB/s with an fp16 CPU path, ~129 GB/s with an fp32 one. The paper names "
    "neither its Xeon nor its DRAM (HeteGen, arXiv 2403.01164): docs/hetegen.md",
)
def test_golden_hetegen_opt30b_at_6_25_gb(hetegen_6gb):
    _, result = hetegen_6gb
    assert result.feasible, result.reason
    assert result.throughput_tok_s == pytest.approx(HETEGEN_TOK_S, rel=TOLERANCE)


def test_hetegen_opt30b_at_6_25_gb_stays_in_budget_and_is_dram_bound(hetegen_6gb):
    plan, result = hetegen_6gb
    assert result.feasible, result.reason
    assert result.peak_mem_bytes["n0.gpu0"] <= 6.25 * GB
    assert sum(plan.resident.values()) > 0  # ~4.6 GB of weights fit next to KV, buffer and runtime
    # The CPU GEMVs and the weight DMA together saturate the socket's DRAM (HeteGen, arXiv 2403.01164).
    assert result.utilization["n0.cpu0:dram"] > 0.9


def _paper_fig():
    """paper_figs/hetegen.py by path (paper_figs is scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "paper_figs" / "hetegen.py"
    spec = importlib.util.spec_from_file_location("paper_figs_hetegen", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def flexgen_6gb(opt30b):
    if importlib.util.find_spec("hetsim.strategies.flexgen") is None:
        pytest.skip("hetsim/strategies/flexgen.py has not landed (another engineer's)")
    return _paper_fig().flexgen_at_budget(opt30b, 6.1 * GB)


def test_golden_flexgen_baseline_opt30b_at_6_1_gb(flexgen_6gb):
    """FlexGen at batch 1 is pure offloading: every non-resident byte crosses PCIe per token."""
    assert flexgen_6gb.feasible, flexgen_6gb.reason
    assert flexgen_6gb.peak_mem_bytes["n0.gpu0"] <= 6.1 * GB
    assert flexgen_6gb.throughput_tok_s == pytest.approx(FLEXGEN_TOK_S, rel=TOLERANCE)


@pytest.mark.xfail(
    strict=False,
    reason="hetsim gives 2.55x vs published 3.17x (-20 %): FlexGen matches (+3 %), HeteGen is 17 % low "
    "because of the assumed host DRAM bandwidth (see test_golden_hetegen_opt30b_at_6_25_gb)",
)
def test_golden_hetegen_over_flexgen_ratio(hetegen_6gb, flexgen_6gb):
    _, hetegen = hetegen_6gb
    assert hetegen.throughput_tok_s / flexgen_6gb.throughput_tok_s == pytest.approx(3.17, rel=TOLERANCE)


# ---- alpha ---------------------------------------------------------------------------------------
def test_eq5_is_the_balance_condition_and_reduces_to_eq7():
    v_cpu, v_com, v_gpu = 60e9, 25e9, 400e9
    a = eq5_alpha(v_cpu, v_com, v_gpu)
    p = 1.0
    assert (1 - a) * p / v_cpu == pytest.approx(a * p / v_com + a * p / v_gpu, rel=1e-12)
    assert eq5_alpha(v_cpu, v_com, 1e30) == pytest.approx(v_com / (v_cpu + v_com), rel=1e-9)


def test_engine_alpha_matches_eq5_without_dram_contention(rig):
    """Tiny rig: 100 GB/s DRAM, 10 GB/s PCIe. Eq. 5 ignores that the DMA takes its share of DRAM
    (HeteGen, arXiv 2403.01164); the engine books it, so its crossing is Eq. 5 with V_CPU - V_COM for
    the CPU."""
    p = problem("opt-6.7b", "hetegen-a10", 1, 64, 2)
    op = module_ops(p.model, "decode", 1, 1)["fc1"]
    v_cpu, v_com, v_gpu = eq5_speeds(rig, "n0.gpu0", "n0.cpu0", op)
    engine_alpha = balanced_alpha(rig, "n0.gpu0", "n0.cpu0", op)
    contended = eq5_alpha(v_cpu - v_com, v_com, v_gpu)  # DRAM left to the CPU while the DMA runs
    assert eq5_alpha(v_cpu, v_com, v_gpu) < engine_alpha
    assert engine_alpha == pytest.approx(contended, rel=0.03)


def test_prefill_alpha_is_near_one_and_decode_alpha_is_not(hetegen_6gb):
    plan, _ = hetegen_6gb
    # 512-token CPU GEMMs are compute-bound (HeteGen, arXiv 2403.01164): prefill degenerates to offloading.
    assert min(v for k, v in plan.alpha_prefill.items() if k != "lm_head") > 0.85
    assert 0.2 < plan.alpha_decode["fc1"] < 0.5


def test_alpha_balances_the_two_paths_in_a_run_trace(tmp_path):
    """Per split module in a decode step: CPU path (activation in, GEMV, partial out) ends with the
    GPU path (weight DMA, GEMM), measured from the run's own trace."""
    p = problem("opt-6.7b", "hetegen-a10", batch=1, prompt_len=64, gen_len=3)
    budget = _minimum_budget(p)
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", budget)
    assert plan.resident == {}
    trace = tmp_path / "trace.json"
    simulate(get_strategy("hetegen"), plan, p.rig, p.model, p.workload, trace_path=str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    lanes = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    spans = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            spans[(lanes[e["tid"]], e["name"])].append((e["ts"], e["ts"] + e["dur"]))
    for kind in ("q_proj", "fc1", "fc2"):
        gpu = spans[("n0.gpu0:compute", f"{kind} gpu")]
        cpu = spans[("n0.cpu0:compute", f"{kind} cpu")]
        assert len(gpu) == len(cpu) == 3 * p.model.layers
        # the last decode step's last layer: GPU path = weight DMA then GEMM; CPU path ends with the
        # copy of its partial output ("y") back to the GPU
        (_, g1), (_, c1) = gpu[-1], cpu[-1]
        y_end = next(e for s, e in spans[("n0.pcie.gpu0:rev", "y")] if s >= c1)
        weights = [s for s in spans[("n0.pcie.gpu0:rev", f"{kind} w")] if s[1] <= g1][-1]
        module = max(g1, y_end) - weights[0]
        assert abs(g1 - y_end) < 0.01 * module, (kind, g1 - y_end, module)


# ---- residency and budgets -----------------------------------------------------------------------
def _minimum_budget(p) -> float:
    """The working set alone (KV, activations, runtime, weight buffer): room for no resident weight."""
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", 0.0)
    return sum(working_set(plan, p.model, p.workload).values()) * (1 + 1e-9)


def test_cp_sat_is_at_least_the_papers_greedy_and_fits(opt30b):
    p = opt30b
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", 6.25 * GB)
    alphas = {"prefill": plan.alpha_prefill, "decode": plan.alpha_decode}
    items = items_for(p.rig, p.model, p.workload, "n0.gpu0", "n0.cpu0", alphas)
    for capacity in (0.5 * GB, 2.3 * GB, 4.6 * GB, 9.9 * GB):
        exact, greedy = solve_resident(items, capacity), greedy_resident(items, capacity)
        assert saved_time(items, exact) >= saved_time(items, greedy) - 1e-6
        sizes = {it.kind: it for it in items}
        used = sum(sizes[k].nbytes * n for k, n in exact.items())
        buffer = max((it.buffer_bytes for it in items if exact[it.kind] < it.count), default=0)
        assert used + buffer <= capacity
        assert all(0 <= n <= sizes[k].count for k, n in exact.items())


def test_knapsack_ties_go_to_fewer_bytes_then_the_layers_order():
    """Equal savings: the fewest GPU bytes, then the kinds in the items' (execution) order, not
    CP-SAT's internal choice. OPT-30B at 6.25 GB on hetegen-a10 saves the same with any 52 of
    q/k/v/out_proj (the same item): CP-SAT alone returned 4 v_proj + 48 out_proj."""
    mb = 1 << 20
    items = [
        Item("q_proj", 4, 10 * mb, 1.0, mb),
        Item("k_proj", 4, 10 * mb, 1.0, mb),
        Item("free", 4, 5 * mb, 0.0, mb),  # resident saves nothing: left off the GPU
        Item("fc1", 2, 20 * mb, 2.0, mb),  # two q/k modules save the same as one fc1
    ]
    got = solve_resident(items, 68 * mb)  # room for one "free" module beside the optimum
    assert saved_time(items, got) == pytest.approx(6.0)
    assert got == {"q_proj": 4, "k_proj": 2, "free": 0, "fc1": 0}  # 60 MiB of weights and 1 of buffer


def test_knapsack_tie_break_keeps_the_optimum(opt30b):
    p = opt30b
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", 6.25 * GB)
    assert plan.resident == {"q_proj": 48, "k_proj": 4}
    alphas = {"prefill": plan.alpha_prefill, "decode": plan.alpha_decode}
    items = items_for(p.rig, p.model, p.workload, "n0.gpu0", "n0.cpu0", alphas)
    for capacity in (0.5 * GB, 2.3 * GB, 4.6 * GB, 9.9 * GB, 30 * GB):
        got = solve_resident(items, capacity)
        micro = {it.kind: round(it.saved_s * 1e6) for it in items}
        order = [it.kind for it in items]
        # the same saving as any other optimum: no single module moved to an earlier free kind helps
        for a, b in itertools.pairwise(order):
            if micro[a] == micro[b] and got[b] > 0:
                assert got[a] == next(it.count for it in items if it.kind == a)


def test_knapsack_tie_break_is_proven_on_a_large_tie():
    """Five kinds alike in bytes and saving, 172 of their 265 modules resident at the optimum: the
    fewest ranks fill k1, k2 and k4, then 39 of k5. With CP-SAT's presolve the tie-break's solve hit
    its 10 s limit unproven (FEASIBLE) and the first solve's answer was kept (k2 22, k5 67: the
    same saving and bytes, more ranks); without it both solves prove their optimum in milliseconds."""
    items = [
        Item("k0", 7, 376438784, 0.210801, 202375168),
        Item("k1", 45, 351272960, 0.201031, 5242880),
        Item("k2", 50, 351272960, 0.201031, 69206016),
        Item("k3", 40, 238026752, 0.024139, 144703488),
        Item("k4", 38, 351272960, 0.201031, 97517568),
        Item("k5", 67, 351272960, 0.201031, 122683392),
        Item("k6", 60, 351272960, 0.022423, 49283072),
        Item("k7", 65, 351272960, 0.201031, 47185920),
    ]
    got = solve_resident(items, 60626718057.66653)
    assert got == {"k0": 0, "k1": 45, "k2": 50, "k3": 0, "k4": 38, "k5": 39, "k6": 0, "k7": 0}


def _key(items: list[Item], counts) -> tuple[int, int, int]:
    """What both solves order choices by: the most whole microseconds saved, then the fewest GPU
    bytes (weights plus the largest buffer of a kind not fully resident), then the kinds' ranks."""
    pairs = list(zip(items, counts, strict=True))
    buf = max((it.buffer_bytes for it, n in pairs if n < it.count), default=0)
    saved = sum(round(it.saved_s * 1e6) * n for it, n in pairs)
    return (-saved, sum(it.nbytes * n for it, n in pairs) + buf, sum(i * n for i, n in enumerate(counts)))


def _by_enumeration(items: list[Item], cap: int) -> tuple[int, int, int] | None:
    """The least key of every choice that fits ``cap`` (None: not even the buffer fits)."""
    keys = [_key(items, c) for c in itertools.product(*(range(it.count + 1) for it in items))]
    return min((k for k in keys if k[1] <= cap), default=None)


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(
        st.tuples(
            st.integers(0, 3),  # count
            st.sampled_from([1, 2, 3, 5]),  # MiB a module
            st.sampled_from([0, 1, 2, 3, 1.5]),  # ms saved a module: ties on purpose
            st.integers(0, 4),  # MiB of buffer
        ),
        min_size=1,
        max_size=4,
    ),
    cap=st.integers(0, 40),
)
# found by hypothesis: the optimum 7000 read back as 6999.999999999999 made the tie-break infeasible
@example(kinds=[(1, 1, 3, 1), (1, 2, 0, 2), (2, 1, 2, 0)], cap=7)
def test_knapsack_is_the_lexicographic_optimum_of_every_choice(kinds, cap):
    """Both solves against enumeration: the most saved, then the fewest bytes, then the ranks."""
    mb = 1 << 20
    items = [Item(f"k{i}", c, b * mb, s * 1e-3, f * mb) for i, (c, b, s, f) in enumerate(kinds)]
    got = solve_resident(items, cap * mb)
    assert got == solve_resident(items, cap * mb)  # the same answer again
    best = _by_enumeration(items, cap * mb)
    if cap == 0 or best is None:  # no budget, or not even the buffer fits: nothing resident
        assert set(got.values()) == {0}
        return
    assert _key(items, [got[it.kind] for it in items]) == best


def test_knapsack_budget_past_every_module():
    """A budget larger than every module (1e19 bytes is past CP-SAT's 64-bit bounds; inf) puts
    them all on the GPU, as a budget of exactly their bytes does (both raised before)."""
    mb = 1 << 20
    items = [Item("q_proj", 4, 10 * mb, 1.0, mb), Item("fc1", 2, 20 * mb, 2.0, 2 * mb)]
    whole = {"q_proj": 4, "fc1": 2}
    assert solve_resident(items, 80 * mb) == whole
    assert solve_resident(items, 1e19) == whole
    assert solve_resident(items, math.inf) == whole


def test_more_budget_means_more_resident_weights_and_more_throughput(opt30b):
    p = opt30b
    strategy = get_strategy("hetegen")
    sizes = module_bytes(p.model)
    last_bytes, last_tput = -1.0, 0.0
    for budget in (4 * GB, 10 * GB, 20 * GB):
        plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", budget)
        resident = sum(sizes[k] * n for k, n in plan.resident.items())
        result = simulate(strategy, plan, p.rig, p.model, p.workload)
        assert result.feasible, result.reason
        assert resident > last_bytes
        assert result.throughput_tok_s > last_tput
        last_bytes, last_tput = resident, result.throughput_tok_s


def test_budget_that_holds_the_model_degenerates_to_gpu_only():
    p = problem("opt-6.7b", "hetegen-a10", batch=1, prompt_len=512, gen_len=16)
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", 24 * GB)
    assert plan.resident == module_counts(p.model)  # every module resident
    result = simulate(get_strategy("hetegen"), plan, p.rig, p.model, p.workload)
    gpu_only = get_strategy("gpu-only")
    reference = simulate(
        gpu_only, gpu_only.default_plan(p.rig, p.model, p.workload), p.rig, p.model, p.workload
    )
    assert result.feasible and reference.feasible
    assert result.utilization.get("n0.cpu0:dram", 0.0) < 0.01  # no streaming, no CPU GEMVs
    assert result.throughput_tok_s == pytest.approx(reference.throughput_tok_s, rel=0.03)


def test_zero_budget_is_infeasible_with_a_reason_and_the_minimum_budget_splits_everything(opt30b):
    p = opt30b
    strategy = get_strategy("hetegen")
    zero = simulate(
        strategy, plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", 0.0), p.rig, p.model, p.workload
    )
    assert not zero.feasible and "gpu_mem_budget" in zero.reason

    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", _minimum_budget(p))
    assert plan.resident == {}  # no room for weights: CPU plus split for every linear module
    result = simulate(strategy, plan, p.rig, p.model, p.workload)
    assert result.feasible, result.reason
    # Decode streams every weight byte once out of host DRAM (CPU share read in place, GPU share by
    # DMA): per-token time is at least all linear weights / the socket's achievable DRAM bandwidth.
    cpu = p.rig.devices["n0.cpu0"]
    dram = cpu.mem_bw * cpu.efficiency.memory
    per_token = sum(module_bytes(p.model)[k] * n for k, n in module_counts(p.model).items()) / dram
    assert per_token <= result.tpot_s <= 1.1 * per_token


def test_plan_json_round_trip(hetegen_6gb):
    plan, _ = hetegen_6gb
    strategy = get_strategy("hetegen")
    data = json.loads(json.dumps(strategy.plan_to_dict(plan)))
    assert strategy.plan_from_dict(data) == plan


def test_bad_plan_field_is_an_input_error():
    from hetsim.errors import InputError
    from hetsim.strategies.hetegen import HeteGenPlan

    strategy = get_strategy("hetegen")
    full = strategy.plan_to_dict(HeteGenPlan("n0.gpu0", "n0.cpu0", 1e9))
    with pytest.raises(InputError) as err:
        strategy.plan_from_dict({**full, "gpu_mem_budget": "lots"})
    assert err.value.field == "params.gpu_mem_budget"


def test_split_shares_stream_through_two_chunk_buffers_so_small_budgets_run(opt30b):
    """The GPU holds two rotating chunks of a split module's share, not the whole share (fc1's share
    of OPT-30B is ~0.37 GB in prefill): OPT-30B's floor is the KV cache, activations and 64 MiB, so 1.5 GB of
    GPU memory runs (it needed 1.55 GB with whole-share buffers and a CUDA-context reserve)."""
    p = opt30b
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", 1.5 * GB)
    assert plan.resident.get("fc1", 0) == 0  # room for a few small modules at most
    assert buffer_bytes(plan, p.model) == 2 * STREAM_CHUNK_BYTES
    ws = working_set(plan, p.model, p.workload)
    assert sum(ws.values()) < 1.3 * GB
    r = simulate(get_strategy("hetegen"), plan, p.rig, p.model, p.workload)
    assert r.feasible, r.reason
    assert r.peak_mem_bytes["n0.gpu0"] <= 1.5 * GB


def test_share_by_identity_equals_the_uncached_share():
    """``share``'s identity cache returns what building the part afresh returns, field by field."""
    import dataclasses

    from hetsim.models.spec import Op, OpKind
    from hetsim.strategies import hetegen as hg

    op = Op("q_proj", OpKind.MATMUL, 3, 7e12, 3e9, 1e6, 2e6)
    for fraction in (0.37, 0.37, 1.0 - 0.37, 1.0, 0.0):
        fresh = hg._share.__wrapped__(op, fraction)
        got = hg.share(op, fraction)
        assert dataclasses.astuple(got) == dataclasses.astuple(fresh)
        assert [repr(v) for v in dataclasses.astuple(got)] == [repr(v) for v in dataclasses.astuple(fresh)]
    assert hg.share(op, 0.37) is hg.share(op, 0.37)


@pytest.mark.parametrize("model", ["opt-6.7b", "opt-13b", "opt-30b"])
def test_floor_is_what_the_algorithm_holds_and_one_byte_less_is_refused(model):
    """Fig. 8's models at batch 1, 512 + 64 (HeteGen, arXiv 2403.01164): the smallest budget is the
    full-context KV cache, one layer's activations and the two rotating chunk buffers of the streamed
    shares; no CUDA-context reserve (the budget counts allocator bytes, as FlexGen's release reports
    its peak). That budget runs with every module split and peaks exactly there; one byte less is
    refused with one line naming the budget."""
    from hetsim.models.memory import activation_workspace, kv_cache_bytes

    p = problem(model, "hetegen-a10", batch=1, prompt_len=512, gen_len=64)
    floor = kv_cache_bytes(p.model, 1, 576, p.model.layers) + activation_workspace(p.model, 1, 512)
    floor += 2 * STREAM_CHUNK_BYTES
    strategy = get_strategy("hetegen")
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", floor)
    assert plan.resident == {}
    assert sum(working_set(plan, p.model, p.workload).values()) == pytest.approx(floor, rel=1e-12)
    result = simulate(strategy, plan, p.rig, p.model, p.workload)
    assert result.feasible, result.reason
    assert result.peak_mem_bytes["n0.gpu0"] == pytest.approx(floor, rel=1e-9)
    short = simulate(
        strategy, plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", floor - 1), p.rig, p.model, p.workload
    )
    assert not short.feasible
    assert "gpu_mem_budget" in short.reason and "1 B short" in short.reason and "\n" not in short.reason


def test_fp32_cpu_path_reads_twice_the_cpu_share_and_rebalances(opt30b):
    """``cpu_dtype="fp32"``: the CPU holds its share as an fp32 copy (lossless) and runs an fp32 GEMV,
    reading 4 bytes per weight where fp16 reads 2. The split moves towards the GPU, the host holds
    the copy, and an all-split decode token takes 2P / (DRAM + PCIe): the CPU share 2(1 - a)P and the
    DMA aP share the DRAM while the DMA runs at the link rate (fp16: P / DRAM)."""
    from hetsim.costs.op_cost import op_cost
    from hetsim.strategies.hetegen import cpu_side

    p = opt30b
    cpu = p.rig.devices["n0.cpu0"]
    op = module_ops(p.model, "decode", 1, 1)["fc1"]
    wide = cpu_side(op, "fp32")
    assert wide.weight_bytes == 2 * op.weight_bytes and wide.compute_dtype == "fp32"
    assert op_cost(cpu, wide).memory_s == pytest.approx(2 * op_cost(cpu, op).memory_s, rel=1e-3)
    assert cpu_side(op, "fp16") is op

    a16 = balanced_alpha(p.rig, "n0.gpu0", "n0.cpu0", op)
    a32 = balanced_alpha(p.rig, "n0.gpu0", "n0.cpu0", op, "fp32")
    assert a32 > a16 + 0.1

    strategy = get_strategy("hetegen")
    plan = plan_hetegen(p.rig, p.model, p.workload, "n0.gpu0", _minimum_budget(p) * 1.01, cpu_dtype="fp32")
    assert plan.resident == {} and plan.cpu_dtype == "fp32"
    host = strategy.footprint(plan, p.rig, p.model, p.workload)["n0.cpu0"]
    weights = sum(module_bytes(p.model)[k] * n for k, n in module_counts(p.model).items())
    assert host["split_weights"] == pytest.approx(weights)
    assert host["split_weights_fp32"] == pytest.approx(2 * (1 - plan.alpha_decode["fc1"]) * weights, rel=0.01)
    result = simulate(strategy, plan, p.rig, p.model, p.workload)
    assert result.feasible, result.reason
    dram = cpu.mem_bw * cpu.efficiency.memory
    link = p.rig.route("n0.cpu0", "n0.gpu0").bw
    per_token = 2 * weights / (dram + link)
    assert per_token <= result.tpot_s <= 1.1 * per_token


def test_cpu_dtype_round_trips_and_a_bad_one_is_an_input_error(hetegen_6gb):
    import dataclasses

    from hetsim.errors import InputError

    plan, _ = hetegen_6gb
    strategy = get_strategy("hetegen")
    wide = dataclasses.replace(plan, cpu_dtype="fp32")
    assert strategy.plan_from_dict(json.loads(json.dumps(strategy.plan_to_dict(wide)))) == wide
    p = problem("opt-30b", "hetegen-a10", batch=1, prompt_len=512, gen_len=64)
    with pytest.raises(InputError) as err:
        strategy.check_plan(dataclasses.replace(plan, cpu_dtype="int8"), p.rig, p.model, p.workload)
    assert err.value.field == "params.cpu_dtype"


def test_fig8_curves_start_at_the_floor_and_hold_the_papers_budgets(opt30b):
    fig = _paper_fig()
    floor = fig.hetegen_floor(opt30b) / GB
    hetegen = fig.budgets_for(opt30b, "opt-30b", "hetegen")
    assert floor <= hetegen[0] < floor + 1e-4 and 6.25 in hetegen
    assert all(b >= floor for b in hetegen)
    assert 6.1 in fig.budgets_for(opt30b, "opt-30b", "flexgen")
    assert 6.1 not in fig.budgets_for(opt30b, "opt-13b", "flexgen")


@pytest.mark.parametrize("weight_dtype", ["fp32", "int8", "int4", "q4_k_m"])
def test_fp32_cpu_path_of_non_16_bit_weights_is_refused(hetegen_6gb, weight_dtype):
    """``cpu_side`` costs the fp32 copy as 2x the 16-bit bytes (and the footprint adds 2x): int8/int4
    weights would need 4-8x and no dequantisation, fp32 weights no copy at all. Refused in one line."""
    import dataclasses

    from hetsim.errors import InputError

    plan, _ = hetegen_6gb
    strategy = get_strategy("hetegen")
    p = problem("opt-30b", "hetegen-a10", batch=1, prompt_len=512, gen_len=64)
    bad = dataclasses.replace(plan, weight_dtype=weight_dtype, cpu_dtype="fp32")
    with pytest.raises(InputError) as err:
        strategy.check_plan(bad, p.rig, p.model, p.workload)
    assert err.value.field == "params.cpu_dtype" and weight_dtype in err.value.line()
    assert "\n" not in err.value.line()
    strategy.check_plan(dataclasses.replace(bad, cpu_dtype="fp16"), p.rig, p.model, p.workload)
    for ok in ("fp16", "bf16"):
        strategy.check_plan(dataclasses.replace(bad, weight_dtype=ok), p.rig, p.model, p.workload)


def test_split_and_resident_bytes_add_up_to_the_model_and_the_host_holds_the_split(hetegen_6gb, opt30b):
    from hetsim.strategies.hetegen import resident_bytes, split_weight_bytes

    plan, _ = hetegen_6gb
    p = opt30b
    assert plan.resident  # some modules resident at 6.25 GB
    total = sum(module_bytes(p.model)[k] * n for k, n in module_counts(p.model).items())
    assert split_weight_bytes(plan, p.model) + resident_bytes(plan, p.model) == pytest.approx(
        total, rel=1e-12
    )
    host = get_strategy("hetegen").footprint(plan, p.rig, p.model, p.workload)["n0.cpu0"]
    assert host["split_weights"] == split_weight_bytes(plan, p.model) < total


def test_fp32_cpu_path_keeps_the_fp16_bytes_no_copy_reads(hetegen_6gb, opt30b):
    """With ``cpu_dtype="fp32"`` the host keeps every split module's fp16 bytes, including the part
    that only the CPU ever multiplies (1 - max alpha of the two phases), which nothing reads after the
    fp32 copy is made: HeteGen publishes no code and no CPU dtype, so freeing it is not assumed. The
    never-read bytes are stated by size here (OPT-30B at 6.25 GB: 6.17 GB of the 54.6 GB split)."""
    import dataclasses

    from hetsim.strategies.hetegen import split_weight_bytes_by_kind

    p = opt30b
    plan = dataclasses.replace(hetegen_6gb[0], cpu_dtype="fp32")
    host = get_strategy("hetegen").footprint(plan, p.rig, p.model, p.workload)["n0.cpu0"]
    split = split_weight_bytes_by_kind(plan, p.model)
    assert host["split_weights"] == pytest.approx(sum(split.values()))
    unread = sum(
        b * (1 - max(plan.alpha_prefill.get(k, 0.0), plan.alpha_decode.get(k, 0.0))) for k, b in split.items()
    )
    assert unread == pytest.approx(6.17e9, rel=0.01)  # of 54.6 GB split: prefill's alphas are near 1
    copy = sum(
        2 * b * (1 - min(plan.alpha_prefill.get(k, 0.0), plan.alpha_decode.get(k, 0.0)))
        for k, b in split.items()
    )
    assert host["split_weights_fp32"] == pytest.approx(copy)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.integers(1, 48), st.integers(1, 40), st.floats(0.0, 5.0), st.integers(0, 8)),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 400),
)
def test_knapsack_on_the_lean_model_is_cp_sats_own_model(rows, cap):
    """solve_resident builds on hetsim's lean CpModel (no pre-PEP 8 aliases): at each of its solves
    (the optimum, then the tie-break with its hint) the model proto, and the answer, are the ones
    cp_model.CpModel builds from the same calls."""
    from hetsim.planner import cpsat

    mb = 1 << 20
    items = [Item(f"k{i}", n, b * mb, s, buf * mb) for i, (n, b, s, buf) in enumerate(rows)]

    def run(model_cls) -> tuple:
        protos: list[str] = []
        solve = cpsat.cp_model.CpSolver.solve

        def spy(self, model, *a, **k):
            protos.append(str(model.proto))
            return solve(self, model, *a, **k)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cpsat, "CpModel", model_cls)
            mp.setattr(cpsat.cp_model.CpSolver, "solve", spy)
            got = solve_resident(items, cap * mb)
        return got, protos

    lean, own = run(cpsat.CpModel), run(cpsat.cp_model.CpModel)
    assert lean == own and lean[1]  # at least one solve


@pytest.mark.parametrize("cpu_dtype", ["int8", "FP32", "bf16", None])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_measure_split_refuses_a_cpu_dtype_it_cannot_model(cpu_dtype, alpha):
    """Before, any dtype but fp16 was costed as fp32 (doubled bytes), silently; at alpha 1 (no CPU
    share) it was not even looked at."""
    from hetsim.errors import InputError
    from hetsim.strategies.hetegen import measure_split, module_ops

    p = problem("opt-13b", "hetegen-a10", 1, 64, 4)
    gpu = p.rig.gpus()[0].name
    op = module_ops(p.model, "decode", 1, 1)["q_proj"]
    with pytest.raises(InputError, match="cpu_dtype: must be one of fp16, fp32"):
        measure_split(p.rig, gpu, p.rig.host_cpu(gpu), op, alpha, 0.0, cpu_dtype)


def test_plan_hetegen_refuses_fp32_cpu_copies_of_quantised_weights():
    from hetsim.errors import InputError

    p = problem("opt-13b", "hetegen-a10", 1, 64, 4)
    with pytest.raises(InputError, match="cpu_dtype: 'fp32' is an upcast copy of fp16 or bf16 weights"):
        plan_hetegen(
            p.rig, p.model, p.workload, p.rig.gpus()[0].name, 6e9, weight_dtype="int8", cpu_dtype="fp32"
        )


# ---- a split module's parts, made once a step (issue 20: HeteGen's search simulates each rung) ----
def test_a_hetegen_run_splits_each_linear_piece_once_a_step_not_once_a_layer(monkeypatch):
    """The schedule makes each split piece's two parts (``share``) once per step and books them in
    every layer: ``share`` is asked 2 x (split kinds + the LM head) times a step, not 2 x kinds x
    layers (as when every module was split again as it was booked)."""
    import hetsim.strategies.hetegen as hg

    p = problem("opt-6.7b", "hetegen-a10", batch=2, prompt_len=64, gen_len=3)
    strategy = get_strategy("hetegen")
    plan = strategy.default_plan(p.rig, p.model, p.workload)  # every module split, none resident
    want = simulate(strategy, plan, p.rig, p.model, p.workload)
    calls = []
    real = hg.share

    def counted(op, fraction):
        calls.append(fraction)
        return real(op, fraction)

    monkeypatch.setattr(hg, "share", counted)
    got = simulate(strategy, plan, p.rig, p.model, p.workload)
    kinds = len(module_kinds(p.model))  # the layer's linear kinds and the LM head
    assert p.model.layers > 1
    assert len(calls) == p.workload.gen_len * 2 * kinds
    assert (got.e2e_s, got.ttft_s, got.utilization) == (want.e2e_s, want.ttft_s, want.utilization)


def _split_as_booked_per_call(engine, gpu, cpu, op, alpha, cpu_dtype):
    """The bookings of one split module as ``split_paths`` made them before ``SplitModule`` (each
    part made as it was booked; the uncached ``_share``): the reference ``book_split`` must equal."""
    from hetsim.strategies.hetegen import _share, cpu_side

    gpu_end = cpu_end = engine.env.now
    if alpha > 0:
        w_end = engine.book_transfer(cpu, gpu, op.weight_bytes * alpha, pinned=True, label="")
        gpu_end = engine.book_compute(gpu, _share.__wrapped__(op, alpha), label="", after=w_end)
    if alpha < 1:
        x_end = engine.book_transfer(gpu, cpu, op.act_in_bytes, pinned=True, label="")
        part = _share.__wrapped__(op, 1.0 - alpha)
        if cpu_dtype != "fp16":
            part = cpu_side(part, cpu_dtype)
        c_end = engine.book_compute(cpu, part, label="", after=x_end)
        out = op.act_out_bytes * (1.0 - alpha)
        cpu_end = engine.book_transfer(cpu, gpu, out, pinned=True, label="y", after=c_end)
    return gpu_end, cpu_end


def _engine_state(engine):
    lanes = {k: (v.free_at, v.busy_s, v.memory_bound_s) for k, v in engine.lanes.items()}
    drams = {k: (list(d._times), list(d._booked), d.bytes_moved) for k, d in engine.host_memory.items()}
    return lanes, drams, engine.tasks, engine.last_end, engine.bytes_transferred


@settings(max_examples=60, deadline=None)
@given(
    alpha=st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)),
    cpu_dtype=st.sampled_from(["fp16", "fp32"]),
    decode=st.booleans(),
    busy_bytes=st.sampled_from([0.0, 1e6, 3e8, 2e9]),
)
def test_book_split_books_exactly_what_splitting_per_call_booked(alpha, cpu_dtype, decode, busy_bytes):
    """A prepared ``SplitModule`` books the same tasks at the same times to the bit as the module
    split as it is booked, on an engine whose host DRAM and copy lanes are already busy (contention)."""
    from hetsim.sim.engine import Engine
    from hetsim.strategies.hetegen import book_split, split_module

    p = problem("opt-6.7b", "hetegen-a10", batch=4, prompt_len=128, gen_len=2)
    gpu = p.rig.gpus()[0].name
    cpu = p.rig.host_cpu(gpu)
    op = module_ops(p.model, "decode" if decode else "prefill", 4, 1 if decode else 128)["fc1"]
    ends, states = [], []
    for book in (
        lambda e: book_split(e, gpu, cpu, split_module(op, alpha, cpu_dtype)),
        lambda e: _split_as_booked_per_call(e, gpu, cpu, op, alpha, cpu_dtype),
    ):
        engine = Engine(p.rig)
        if busy_bytes:  # earlier work still running: a copy and a CPU op drawing on the same DRAM
            engine.book_transfer(cpu, gpu, busy_bytes, pinned=True)
            engine.book_compute(cpu, op)
        ends.append(book(engine))
        states.append(_engine_state(engine))
    assert ends[0] == ends[1]
    assert states[0] == states[1]
