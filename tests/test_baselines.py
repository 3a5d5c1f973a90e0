"""gpu-only and accelerate: feasibility, closed forms, memory, determinism."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hetsim.api import compare, problem
from hetsim.costs.op_cost import op_cost
from hetsim.models.memory import hf_eager_workspace, layer_bytes
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks
from hetsim.planner import search
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.workload import steps


def test_gpu_only_reports_why_a_model_does_not_fit():
    p = problem("llama2-70b", "flexgen-t4", batch=1, prompt_len=128, gen_len=4)
    strategy = get_strategy("gpu-only")
    result = simulate(strategy, strategy.default_plan(p.rig, p.model, p.workload), p.rig, p.model, p.workload)
    assert not result.feasible
    assert "out of memory on n0.gpu0" in result.reason
    assert search(strategy, p.rig, p.model, p.workload, "throughput") is None


def test_gpu_only_fits_llama70b_on_the_mixed_lab_and_stays_within_memory():
    p = problem("llama2-70b", "mixed-lab", batch=4, prompt_len=512, gen_len=16)
    strategy = get_strategy("gpu-only")
    plan = search(strategy, p.rig, p.model, p.workload, "throughput")
    result = simulate(strategy, plan, p.rig, p.model, p.workload)
    assert result.feasible
    assert sum(s.layers for s in plan.stages) == p.model.layers
    for device, peak in result.peak_mem_bytes.items():
        assert peak <= p.rig.devices[device].mem_bytes
    # decode on GPUs is HBM-bound: per-token time is at least weights / aggregate stage bandwidth
    assert result.tpot_s > 0.0
    assert result.throughput_tok_s == pytest.approx(4 * 16 / result.e2e_s)


def test_single_gpu_decode_is_the_closed_form_sum_of_op_costs():
    p = problem("llama2-7b", "mixed-lab", batch=1, prompt_len=64, gen_len=3)
    strategy = get_strategy("gpu-only")
    plan = strategy.plan_type(stages=(strategy_stage("n0.gpu0", p.model.layers),), micro_batches=1)
    result = simulate(strategy, plan, p.rig, p.model, p.workload)
    gpu = p.rig.devices["n0.gpu0"]
    expected = 0.0
    for step in steps(p.workload):
        blocks = layer_blocks(p.model, step.phase, 1, step.seq_len, step.kv_len)
        ops = embed_ops(p.model, 1, step.seq_len) + blocks.whole * p.model.layers
        ops += head_ops(p.model, step.phase, 1, step.seq_len)
        expected += sum(op_cost(gpu, o).time_s for o in ops)
    assert result.e2e_s == pytest.approx(expected, rel=1e-9)


def strategy_stage(device: str, layers: int):
    from hetsim.strategies.gpu_only import Stage

    return Stage((device,), layers)


def test_accelerate_never_overlaps_copies_with_compute():
    p = problem("opt-30b", "flexgen-t4", batch=2, prompt_len=64, gen_len=2)
    strategy = get_strategy("accelerate")
    plan = search(strategy, p.rig, p.model, p.workload, "throughput")
    assert 0 < plan.gpu_layers < p.model.layers
    result = simulate(strategy, plan, p.rig, p.model, p.workload)
    route = p.rig.route(plan.cpu, plan.gpu)
    copies = (p.model.layers - plan.gpu_layers) * p.workload.gen_len
    copy_time = copies * route.time(layer_bytes(p.model), pinned=False)
    # the run is at least the copies plus the GPU's own work, back to back
    busy = result.utilization[f"{plan.gpu}:compute"] * result.e2e_s
    assert result.e2e_s == pytest.approx(copy_time + busy, rel=1e-6)


def test_accelerate_is_pcie_bound_when_most_layers_are_offloaded():
    p = problem("opt-30b", "flexgen-t4", batch=8, prompt_len=512, gen_len=4)
    [result] = compare(p, ["accelerate"], "throughput")
    assert result.feasible
    assert "pcie" in result.bottleneck


def test_compare_ranks_feasible_results_first_and_is_deterministic():
    p = problem("llama2-7b", "mixed-lab", batch=1, prompt_len=128, gen_len=8)
    names = ["cpu-tp", "gpu-only", "accelerate"]
    first = compare(p, names, "latency")
    second = compare(p, names, "latency")
    assert json.dumps([r.to_dict() for r in first]) == json.dumps([r.to_dict() for r in second])
    feasible = [r for r in first if r.feasible]
    assert [r.e2e_s for r in feasible] == sorted(r.e2e_s for r in feasible)
    by_name = {r.strategy: r for r in first}
    # a 7B model fits the A100: running it there alone is as fast as anything else on the rig
    assert by_name["gpu-only"].e2e_s == pytest.approx(first[0].e2e_s, rel=1e-9)
    assert by_name["gpu-only"].e2e_s < by_name["cpu-tp"].e2e_s


def test_a_plan_on_unpriced_devices_has_an_unknown_cost_not_a_free_one():
    """hexgen rigs price their GPUs only: CPU sockets there cost nothing on paper, so cpu-tp's cost
    is unknown (NaN) and must not win a cost ranking."""
    import math

    p = problem("llama2-7b", "hexgen-half-budget", batch=1, prompt_len=64, gen_len=4)
    results = {r.strategy: r for r in compare(p, ["cpu-tp", "gpu-only"], "cost")}
    assert math.isnan(results["cpu-tp"].cost_usd_per_mtok)
    assert results["gpu-only"].cost_usd_per_mtok > 0
    assert compare(p, ["cpu-tp", "gpu-only"], "cost")[0].strategy == "gpu-only"


def test_compare_in_parallel_processes_gives_the_same_results():
    p = problem("llama2-7b", "mixed-lab", batch=1, prompt_len=64, gen_len=4)
    names = ["cpu-tp", "gpu-only", "accelerate"]
    serial = [r.to_dict() for r in compare(p, names, "throughput")]
    parallel = [r.to_dict() for r in compare(p, names, "throughput", workers=2)]
    assert json.dumps(parallel) == json.dumps(serial)


@pytest.mark.parametrize("name", ["accelerate", "deepspeed"])
def test_hf_baselines_reserve_what_hf_transformers_holds_and_refuse_one_sequence_more(name):
    """The GPU workspace of the HF-based baselines is HF's measured eager peak; the free batch is the
    largest whose footprint fits the GPU, so one sequence more overflows it."""
    p = problem("opt-30b", "flexgen-t4", batch=64, prompt_len=512, gen_len=32)
    strategy = get_strategy(name)
    plan = next(iter(strategy.candidates(p.rig, p.model, p.workload)))
    b = plan.batch_per_pass
    fp = strategy.footprint(plan, p.rig, p.model, p.workload)
    wl = p.workload
    assert fp[plan.gpu]["activations"] == hf_eager_workspace(p.model, b, wl.prompt_len, wl.context_len)
    capacity = p.rig.devices[plan.gpu].mem_bytes
    assert sum(fp[plan.gpu].values()) <= capacity
    bigger = dataclasses.replace(plan, batch_per_pass=b + 1)
    if name == "accelerate":  # one layer fewer on the GPU frees room; none resident is the floor
        bigger = dataclasses.replace(bigger, gpu_layers=0, cpu_layers=p.model.layers)
    assert sum(strategy.footprint(bigger, p.rig, p.model, p.workload)[plan.gpu].values()) > capacity
