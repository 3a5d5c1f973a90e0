"""``search``: the best plan of one strategy for an objective (None when no plan fits)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from hetsim.hardware.rig import Rig
from hetsim.models.spec import LOSSY_DTYPES, ModelSpec
from hetsim.planner.ranking import best_plan, evaluator
from hetsim.strategies.base import Objective, Strategy
from hetsim.workload import Workload

Search = Callable[..., Any]  # (rig, model, workload, objective, evaluate, *, allow_lossy) -> plan | None

# Strategies with a solver-backed search: "module:function" (imported on use: OR-Tools is slow to load).
SOLVER_SEARCHES = {
    "flexgen": "hetsim.planner.flexgen_lp:search",
    "hetegen": "hetsim.planner.hetegen_knapsack:search",
    "hexgen": "hetsim.planner.hexgen_cpsat:search",
}


def preload(names: list[str]) -> None:
    """Import the solver searches of these strategies now: a parent about to fork workers loads
    OR-Tools (and the pandas it imports, ~0.5 s of CPU) once for all of them instead of once each."""
    for name in names:
        if name in SOLVER_SEARCHES:
            import_module(SOLVER_SEARCHES[name].split(":")[0])


def search(
    strategy: Strategy,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    objective: Objective,
    *,
    allow_lossy: bool = False,
) -> Any:
    """The plan that ranks first for ``objective``; None when no candidate fits. Lossy options
    (compressed weights or KV cache) are tried only with ``allow_lossy``."""
    evaluate = evaluator(strategy, rig, model, workload)
    # a lossy weight precision the user named (--dtype q4_k_m) is asked for, not chosen for them
    allow_lossy = allow_lossy or workload.weight_dtype in LOSSY_DTYPES
    target = SOLVER_SEARCHES.get(strategy.name)
    if target is None:
        plans = strategy.candidates(rig, model, workload)
        return best_plan((p for p in plans if allow_lossy or not strategy.lossy(p)), evaluate, objective)
    module, function = target.split(":")
    solver: Search = getattr(import_module(module), function)
    return solver(rig, model, workload, objective, evaluate, allow_lossy=allow_lossy)
