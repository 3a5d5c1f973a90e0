"""``search``: the best plan of one strategy for an objective (None when no plan fits)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from importlib import import_module
from typing import Any

from hetsim.hardware.rig import Rig
from hetsim.models.spec import LOSSY_DTYPES, ModelSpec
from hetsim.planner.ranking import best_plan, evaluator, remembering
from hetsim.sim.result import rank_key
from hetsim.sim.run import fits
from hetsim.strategies.base import Objective, Strategy
from hetsim.workload import MAX_WORK, Workload, largest_batch_where

Search = Callable[..., Any]  # (rig, model, workload, objective, evaluate, *, allow_lossy) -> plan | None

# Searches with the batch free as well: "module:function" -> (plan, batch) | None.
FREE_BATCH_SEARCHES = {"flexgen": "hetsim.planner.flexgen_lp:search_free"}

# Strategies with a solver-backed search: "module:function" (imported on use: OR-Tools is slow to load).
SOLVER_SEARCHES = {
    "flexgen": "hetsim.planner.flexgen_lp:search",
    "hetegen": "hetsim.planner.hetegen_knapsack:search",
    "hexgen": "hetsim.planner.hexgen_cpsat:search",
}


def _solver(target: str) -> Search:
    """The search function a "module:function" names, its module imported now."""
    module, function = target.split(":")
    return getattr(import_module(module), function)


# Lower bounds of the estimated e2e_s of any plan a strategy's search returns that runs, with nothing
# searched: "module:function" -> (rig, model, workload) -> seconds. ``_Ladder`` leaves out a
# neighbour rung such a bound shows cannot rank first.
SEARCH_FLOORS = {"hetegen": "hetsim.planner.hetegen_knapsack:search_floor"}

# Searches that load CP-SAT when they solve (~0.1 s of CPU on import, without pandas: ``planner.cpsat``;
# HeteGen's on its first knapsack, HexGen's with its module).
CP_SAT_SEARCHES = frozenset({"hetegen", "hexgen"})


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
    # a lossy precision the user named (--dtype q4_k_m, --kv-dtype int8) is asked for, not chosen for
    # them: candidates carry the workload's precisions; a solver reads them from the workload and
    # chooses further lossy options (FlexGen's 4-bit KV) only with ``allow_lossy``
    asked = bool({workload.weight_dtype, workload.kv_dtype} & LOSSY_DTYPES)
    target = SOLVER_SEARCHES.get(strategy.name)
    if target is None:
        plans = strategy.candidates(rig, model, workload)
        ok = (p for p in plans if allow_lossy or asked or not strategy.lossy(p))
        return best_plan(ok, evaluate, objective)
    return _solver(target)(rig, model, workload, objective, evaluate, allow_lossy=allow_lossy)


def largest_batch(strategy: Strategy, rig: Rig, model: ModelSpec, workload: Workload) -> int:
    """The largest batch (<= ``MAX_WORK``) at which the strategy's default plan fits in memory, by
    bisection on the footprint alone (no run); 1 when not even that fits (the search then says why)."""

    def ok(batch: int) -> bool:
        wl = replace(workload, batch=batch)
        plan = strategy.default_plan(rig, model, wl)
        one_pass = strategy.pass_batch(plan)
        return (one_pass is None or one_pass >= batch) and fits(strategy, plan, rig, model, wl)

    return max(1, largest_batch_where(ok))


def search_free_batch(
    strategy: Strategy,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    objective: Objective,
    *,
    allow_lossy: bool = False,
) -> tuple[Any, int] | None:
    """The best plan and the batch it runs at when the user fixed no batch (throughput or cost).

    FlexGen searches its GPU batch size and number of GPU batches jointly with its placement (its
    own policy search). Every other strategy runs at the batch of ``best_batch`` (a larger offline
    batch shares each weight read among more sequences, but not always to its profit); when no rung's
    searched plan fits by its estimate, the batch is halved from the winner until one does."""
    with remembering():
        return _search_free_batch(strategy, rig, model, workload, objective, lossy=allow_lossy)


def _search_free_batch(
    strategy: Strategy, rig: Rig, model: ModelSpec, workload: Workload, objective: Objective, lossy: bool
) -> tuple[Any, int] | None:
    target = FREE_BATCH_SEARCHES.get(strategy.name)
    if target is not None:
        return _solver(target)(
            rig, model, workload, objective,
            lambda w: evaluator(strategy, rig, model, w), allow_lossy=lossy,
        )  # fmt: skip
    ladder = _Ladder(strategy, rig, model, workload, objective, lossy)
    batch = ladder.best()
    while True:
        plan, fits_ = ladder.searched(batch)
        if batch == 1:
            return (plan, batch) if plan is not None else None
        # a search returns its best candidate even when none fits (the run then says why): at a batch
        # the user did not ask for, halve instead
        if plan is not None and fits_:
            return plan, batch
        batch //= 2


def best_batch(
    strategy: Strategy,
    rig: Rig,
    model: ModelSpec,
    workload: Workload,
    objective: Objective,
    *,
    allow_lossy: bool = False,
) -> int:
    """The batch whose searched plan ranks best for ``objective`` (``_Ladder``)."""
    return _Ladder(strategy, rig, model, workload, objective, allow_lossy).best()


STOP_AFTER_WORSE = 2  # ladder rungs past the best (16x its batch) that rank worse before it stops
BISECT_TO = 16  # the ladder's last bisection stops within 1/16 of the batch (~6%)


class _Ladder:
    """Batches up to the largest one pass holds, each scored by the plan the strategy's search picks
    there (not its default plan: the search may place a batch so differently that the default plan's
    ranking misleads, e.g. gpu-only on hexgen-full-budget: 1549 ranked first by its default plan, yet
    its searched plan ran at half the rate of 774's). Rungs: powers of 4 and the largest, estimated in
    the engine from the smallest up until two in a row rank below the best so far (the searched rate
    rises with the batch, then falls: searches cost), then the neighbours at half and twice the
    winner, each unless a lower bound of its search's plans shows it cannot rank first
    (``beaten``); past the largest while the searched plan holds more (``climb``); and last by
    bisection up to the next larger batch tried (``bisect``). Larger is not always better: a
    CPU-bound prefill or a KV scan that grows with the batch can make the largest batch slower per
    token than a small one."""

    def __init__(
        self,
        strategy: Strategy,
        rig: Rig,
        model: ModelSpec,
        workload: Workload,
        objective: Objective,
        allow_lossy: bool,
    ):
        self.args = (strategy, rig, model, workload)
        self.objective, self.allow_lossy = objective, allow_lossy
        self.key = rank_key(objective)
        self.scores: dict[int, tuple] = {}
        self.plans: dict[int, tuple[Any, bool]] = {}
        self.pruned: set[int] = set()  # batches ``beaten`` left out: they rank below a searched one
        self.top = 0  # ``largest_batch``: above it, a batch counts only where ``holds`` it (``best``)

    def searched(self, batch: int) -> tuple[Any, bool]:
        """(the searched plan at ``batch`` or None, whether it fits by its estimate)."""
        if batch not in self.plans:
            strategy, rig, model, workload = self.args
            wl = replace(workload, batch=batch)
            plan = search(strategy, rig, model, wl, self.objective, allow_lossy=self.allow_lossy)
            if plan is None:
                self.plans[batch], self.scores[batch] = (None, False), (2,)
            else:
                r = evaluator(strategy, rig, model, wl)(plan)
                self.plans[batch], self.scores[batch] = (plan, r.feasible), self.key(r)
        return self.plans[batch]

    def score(self, batch: int) -> tuple:
        self.searched(batch)
        return self.scores[batch]

    def best(self) -> int:
        top = self.top = largest_batch(*self.args)
        best, worse = 1, 0
        for b in sorted({top, *(4**k for k in range(12) if 4**k < top)}):
            if self.score(b) <= self.score(best):
                best, worse = b, 0
            else:
                worse += 1
                if worse == STOP_AFTER_WORSE:  # each search costs: stop once two rungs up lose
                    break
        for b in (best // 2, best * 2):
            fresh = 1 <= b <= top and b not in self.scores and not self.beaten(b, best)
            if fresh and self.score(b) < self.score(best):
                best = b
        if best == top:
            best = self.climb(best)
        return self.bisect(best)

    def holds(self, batch: int) -> bool:
        """Whether the searched plan at ``batch`` fits by its estimate and runs it in one pass."""
        plan, fits_ = self.searched(batch)
        if plan is None or not fits_:
            return False
        one_pass = self.args[0].pass_batch(plan)
        return one_pass is None or one_pass >= batch

    def climb(self, best: int) -> int:
        """Past ``largest_batch``, the cap of the strategy's default plan: its search may place a
        larger batch (gpu-only on mixed-lab: the default plan holds 11 sequences of llama2-70b, the
        searched one over 200). A sixteenth more is tried (one more batch could rank a hair worse by
        its plan's rounding and end the climb where a far larger batch runs faster: mixtral-8x7b on
        a40-measured, 3111 lost to the cap's 3110 while 4400 ran 19 % faster); while the searched plan
        holds it and ranks better, the batch doubles (``bisect`` then fills the gap below the double
        that lost)."""
        b = best + max(1, best // BISECT_TO)
        while b <= MAX_WORK["batch"] and self.holds(b) and self.score(b) < self.score(best):
            best, b = b, b * 2
        return best

    def bisect(self, best: int) -> int:
        """The best batch between ``best`` and the next larger one estimated, which ranked worse
        (or did not fit), by bisection: rungs and neighbours are powers of two apart, and between
        them the rate can still rise (hexgen on hexgen-full-budget: 512 ran 722.3 tok/s, 1024 lost,
        704 runs 730.1). Past ``largest_batch`` only batches the searched plan ``holds`` count, as in
        ``climb``. Stops once the gap is within 1/BISECT_TO of the batch: each search costs."""
        above = [b for b in (*self.scores, *self.pruned) if b > best]  # the same with pruning or without
        if not above:
            return best
        lo, hi = best, min(above)
        while hi - lo > max(1, lo // BISECT_TO):
            mid = (lo + hi) // 2
            held = not self.beaten(mid, best) and (mid <= self.top or self.holds(mid))
            if held and self.score(mid) < self.score(best):
                best = lo = mid
            else:
                hi = mid
        return best

    def beaten(self, batch: int, best: int) -> bool:
        """True (and ``batch`` remembered in ``pruned``) when no plan the search may return at
        ``batch`` ranks above ``best``'s, by a lower bound of its estimated ``e2e_s``
        (``SEARCH_FLOORS``; throughput only, where a rung's score is its tokens over that time): at
        least the time in which ``batch``'s tokens come at ``best``'s rate, and a part in 1e12 more
        (the rounding of that quotient), leaves its rate below ``best``'s, however its own quotient
        rounds."""
        target = SEARCH_FLOORS.get(self.args[0].name)
        top = self.scores[best]
        if target is None or self.objective != "throughput" or top[0] != 0:
            return False
        _, rig, model, workload = self.args
        wl = replace(workload, batch=batch)
        tokens = batch * workload.gen_len
        if _solver(target)(rig, model, wl) >= tokens / -top[1] * (1 + 1e-12):
            self.pruned.add(batch)
            return True
        return False
