"""Searching plans: each strategy's best plan for an objective, confirmed in the engine.

Strategies enumerate plans (``Strategy.candidates``) and run them; the planner chooses. Strategies
whose plan space needs a solver have one here: FlexGen's LP (``flexgen_lp``), HeteGen's knapsack
(``hetegen_knapsack``), HexGen's two-level CP-SAT (``hexgen_cpsat``). Every search ranks through
``ranking.best_plan`` with an injected ``evaluate(plan) -> Result``, so a planner never imports a
strategy's engine code back.
"""

from hetsim.planner.search import search, search_free_batch

__all__ = ["search", "search_free_batch"]
