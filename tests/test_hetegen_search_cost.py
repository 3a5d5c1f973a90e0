"""HeteGen's search spares engine runs whose answer is known: one alpha bisection per module shape
(the same alphas as one per module kind, measured kernels included), and no bisection at all for a
GPU whose working set alone is over its budget (its run is infeasible: the same plan is chosen)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.api import problem
from hetsim.planner import hetegen_knapsack as hk
from hetsim.planner.ranking import best_plan, estimate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.hetegen import HeteGenPlan, module_ops, working_set

HETEGEN = get_strategy("hetegen")


def _each_kind(p, wl, gpu):
    """The alphas bisected once per module kind and phase (what split_plan did before)."""
    cpu = p.rig.host_cpu(gpu)
    return {
        phase: {
            k: round(hk.balanced_alpha(p.rig, gpu, cpu, op), 6)
            for k, op in module_ops(p.model, phase, wl.batch, seq).items()
        }
        for phase, seq in (("prefill", wl.prompt_len), ("decode", 1))
    }


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    hw=st.sampled_from(["mixed-lab", "a100-80g-measured", "hetegen-a10", "h100-sxm-measured"]),
    name=st.sampled_from(["opt-6.7b", "llama2-13b", "llama2-70b", "llama3-8b"]),
    batch=st.sampled_from([1, 3, 64, 300]),
    prompt=st.sampled_from([1, 128, 700]),
)
def test_alphas_bisected_per_shape_equal_those_per_kind(hw, name, batch, prompt):
    """Rigs with measured GEMM tables too (there out_proj is timed by its own measured kernel, q_proj
    by the roofline: alike in shape, not in time, so they are bisected apart)."""
    p = problem(name, hw, batch=batch, prompt_len=prompt)
    for g in p.rig.gpus()[:2]:
        base, _ = hk.split_plan(p.rig, p.model, p.workload, g.name, g.mem_bytes)
        want = _each_kind(p, p.workload, g.name)
        assert base.alpha_prefill == want["prefill"] and base.alpha_decode == want["decode"]


def test_llama_bisects_five_shapes_per_phase(monkeypatch):
    """Llama's eight module kinds are five shapes a phase (q/out, k/v, gate/up, down, lm_head), the
    LM head's the same in both (the last token's row): 9 bisections, not 16. On a measured rig
    out_proj selects its own kernel: q_proj and out_proj are then bisected apart (11)."""
    calls = []
    bisect = hk.balanced_alpha
    monkeypatch.setattr(hk, "balanced_alpha", lambda *a: calls.append(a[3].name) or bisect(*a))
    p = problem("llama2-70b", "mixed-lab", batch=4)
    hk.split_plan(p.rig, p.model, p.workload, "n0.gpu0", 80e9)
    assert len(calls) == 9
    calls.clear()
    p = problem("llama2-70b", "a100-80g-measured", batch=4)
    hk.split_plan(p.rig, p.model, p.workload, p.rig.gpus()[0].name, 80e9)
    assert len(calls) == 11 and calls.count("out_proj") == 2 and calls.count("q_proj") == 2


def _search_noting_splits(p, wl, monkeypatch):
    """HeteGen's throughput search on ``wl`` by estimates: its pick, the GPUs whose split ratios it
    bisected (``split_plan`` calls), and the estimate it ranked by."""
    split = []
    plan_split = hk.split_plan
    monkeypatch.setattr(hk, "split_plan", lambda *a, **k: split.append(a[3]) or plan_split(*a, **k))

    def evaluate(plan):
        return estimate(HETEGEN, plan, p.rig, p.model, wl)

    return hk.search(p.rig, p.model, wl, "throughput", evaluate), split, evaluate


def test_over_budget_gpus_are_not_bisected(lab, monkeypatch):
    """llama2-70b on mixed-lab at batch 256: the KV cache and activations alone are over the 24 GB
    and 48 GB GPUs' memory, so only the 80 GB GPU's alphas are bisected; the others' plans (bisected
    here) are indeed infeasible, and the search picks what estimating every plan picks."""
    p = lab
    wl = replace(p.workload, batch=256)
    got, split, evaluate = _search_noting_splits(p, wl, monkeypatch)
    assert split == ["n0.gpu0"]
    plans = [
        hk.plan_hetegen(p.rig, p.model, wl, g, p.rig.devices[g].mem_bytes) for g in ("n0.gpu1", "n1.gpu0")
    ]
    assert not any(evaluate(plan).feasible for plan in plans)
    full = hk.plan_hetegen(p.rig, p.model, wl, "n0.gpu0", p.rig.devices["n0.gpu0"].mem_bytes)
    assert got == best_plan([full, *plans], evaluate, "throughput") == full


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(["opt-6.7b", "llama2-13b"]),
    batch=st.sampled_from([1, 64]),
    eps=st.sampled_from([-1e-3, -1e-10, 0.0, 1e-12, 1e-6, 0.05, 1.0]),
)
def test_budgets_at_the_working_sets_edge(name, batch, eps):
    """mixed-lab with its two smaller GPU kinds cut to (1 + eps) x the working set with nothing
    resident and no weight buffer (the A100 keeps its 80 GB, so its run is the feasible best the
    others are asked about): a GPU is skipped only where its plan is infeasible, never where that
    working set fits (eps >= 0; within the shortcut's 1e-9 margin it is run), and the search picks
    what the full search (no GPU skipped, one bisection per module kind) picks."""
    p = problem(name, "mixed-lab", batch=batch, prompt_len=128, gen_len=8)
    a100 = p.rig.gpus()[0]
    bare = HeteGenPlan(gpu=a100.name, cpu=p.rig.host_cpu(a100.name), gpu_mem_budget=1.0)
    need = sum(working_set(bare, p.model, p.workload).values())
    devices = {
        k: replace(d, mem_bytes=need * (1 + eps)) if d.kind == "gpu" and d.model != a100.model else d
        for k, d in p.rig.devices.items()
    }
    rig = replace(p.rig, devices=devices)

    def evaluate(plan):
        return estimate(HETEGEN, plan, rig, p.model, p.workload)

    kinds = {(g.model, g.mem_bytes): g for g in rig.gpus()}.values()
    assert len(kinds) == 3
    for g in kinds:
        c = hk._Candidate(rig, p.model, p.workload, g.name, g.mem_bytes)
        assert c._over_budget() == (g is not a100 and eps < -1e-9)
        if c._over_budget():
            assert not evaluate(c.plan).feasible
    got = hk.search(rig, p.model, p.workload, "throughput", evaluate)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(hk._Candidate, "_over_budget", lambda self: False)
        m.setattr(hk, "_alike", lambda op, measured, issued=False: (op, None, 0.0))
        assert got == hk.search(rig, p.model, p.workload, "throughput", evaluate)


@pytest.mark.parametrize("model", ["llama2-7b", "opt-13b", "llama3-8b"])
def test_on_an_eager_gpu_modules_share_a_bisection_only_where_their_alphas_are_the_same(model):
    """On a GPU with a measured host issue, op costs read the op's name (its eager passes:
    ``hetsim.models.kernel_bytes``): modules that share one bisection (``_alike``) must still be
    those whose own bisections agree. The session-19 H200 profile (kernel_issue, 10 GiB)."""
    from hetsim.hardware.loader import load_rig
    from hetsim.models import get_model
    from hetsim.workload import Workload

    rig = load_rig(Path(__file__).resolve().parents[1] / "validate/results/h200/s19/gpu-10g.yaml")
    gpu = rig.gpus()[0]
    assert rig.devices[gpu.name].efficiency.kernel_issue_s > 0
    spec, work = get_model(model), Workload(batch=1, prompt_len=128, gen_len=8)
    shared, _ = hk.split_plan(rig, spec, work, gpu.name, gpu.mem_bytes)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(hk, "_alike", lambda op, measured, issued=False: (op, None, 0.0))
        alone, _ = hk.split_plan(rig, spec, work, gpu.name, gpu.mem_bytes)
    assert shared.alpha_prefill == alone.alpha_prefill and shared.alpha_decode == alone.alpha_decode


def test_an_infeasible_best_leaves_over_budget_gpus_unbisected(lab, monkeypatch):
    """llama2-70b on mixed-lab at batch 331 (one past the default plan's 330): the 80 GB
    GPU's plan is over its memory too, so the best so far is infeasible; the 24 GB and 48 GB GPUs,
    over their budgets by their working sets alone, could only tie with it (every infeasible result
    ranks alike): their alphas are not bisected (they were at bae097f: 3 bisections), and the search
    returns what estimating every plan returns."""
    p = lab
    wl = replace(p.workload, batch=331)
    got, split, evaluate = _search_noting_splits(p, wl, monkeypatch)
    assert split == ["n0.gpu0"]
    plans = [
        hk.plan_hetegen(p.rig, p.model, wl, g, p.rig.devices[g].mem_bytes)
        for g in ("n0.gpu0", "n0.gpu1", "n1.gpu0")
    ]
    assert not any(evaluate(plan).feasible for plan in plans)
    for objective in ("throughput", "latency", "cost"):
        assert best_plan(plans, evaluate, objective) == plans[0]
    assert got == plans[0]


@pytest.mark.parametrize("objective", ["throughput", "latency", "cost"])
def test_best_plan_skips_what_cannot_run_while_its_best_is_infeasible(objective):
    """``beaten(plan, inf)``: the plan cannot run. While the best so far is infeasible such a plan is
    not evaluated (it could only tie, and the earlier wins); once a feasible best exists, only a
    finite bound prunes, and only for throughput and latency."""
    from hetsim.sim.result import Result

    runs = []

    def evaluate(plan):
        runs.append(plan)
        if plan == "ok":
            return Result(strategy="s", feasible=True, e2e_s=1.0, throughput_tok_s=1.0, cost_usd_per_mtok=1.0)
        return Result.infeasible("s", "out of memory")

    def beaten(plan, t):
        return plan.startswith("never")

    assert best_plan(["bad", "never1", "ok", "never2"], evaluate, objective, beaten) == "ok"
    pruned_after = objective in ("throughput", "latency")
    assert runs == (["bad", "ok"] if pruned_after else ["bad", "ok", "never2"])
