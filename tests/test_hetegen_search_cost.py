"""HeteGen's search spares engine runs whose answer is known: no alpha bisection for a GPU whose
working set alone is over its budget (its run is infeasible: the same plan is chosen)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hetsim.api import problem
from hetsim.planner import hetegen_knapsack as hk
from hetsim.planner.ranking import best_plan, estimate
from hetsim.strategies.base import get_strategy

HETEGEN = get_strategy("hetegen")


@pytest.fixture(scope="module")
def lab():
    return problem("llama2-70b", "mixed-lab")


def test_over_budget_gpus_are_not_bisected(lab, monkeypatch):
    """llama2-70b on mixed-lab at batch 256: the KV cache and activations alone are over the 24 GB
    and 48 GB GPUs' memory, so only the 80 GB GPU's alphas are bisected; the others' plans (bisected
    here) are indeed infeasible, and the search picks what estimating every plan picks."""
    p = lab
    wl = replace(p.workload, batch=256)
    split = []
    plan_split = hk.split_plan
    monkeypatch.setattr(hk, "split_plan", lambda *a, **k: split.append(a[3]) or plan_split(*a, **k))

    def evaluate(plan):
        return estimate(HETEGEN, plan, p.rig, p.model, wl)

    got = hk.search(p.rig, p.model, wl, "throughput", evaluate)
    assert split == ["n0.gpu0"]
    plans = [
        hk.plan_hetegen(p.rig, p.model, wl, g, p.rig.devices[g].mem_bytes) for g in ("n0.gpu1", "n1.gpu0")
    ]
    assert not any(evaluate(plan).feasible for plan in plans)
    full = hk.plan_hetegen(p.rig, p.model, wl, "n0.gpu0", 80e9)
    assert got == best_plan([full, *plans], evaluate, "throughput") == full
