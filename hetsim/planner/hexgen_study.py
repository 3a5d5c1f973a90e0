"""Same-budget comparisons of rigs under serving load (HexGen's Fig. 'SLO attainment vs rate /
deadline'): per operating point the planner's candidates are all run in the engine and the best is
kept, as HexGen's scheduler re-plans for the workload it is given."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetsim.hardware.loader import load_rig
from hetsim.hardware.rig import Rig
from hetsim.models.spec import ModelSpec
from hetsim.planner.hexgen_cpsat import Demand, candidates, reference_plan
from hetsim.serving.batching import MAX_IN_FLIGHT
from hetsim.serving.metrics import ServeResult
from hetsim.serving.serve import Reference, min_scale, serve_plan
from hetsim.serving.workload import PAPER_LENGTHS, Request
from hetsim.strategies.hexgen import HexGenPlan


@dataclass
class RigStudy:
    name: str
    rig: Rig
    model: ModelSpec
    plans: list[HexGenPlan]

    @property
    def price_per_hour(self) -> float:
        return self.rig.price_per_hour

    def run_all(self, requests: list[Request]) -> list[ServeResult]:
        return [serve_plan(p, self.rig, self.model, requests) for p in self.plans]


def make_study(
    rig_name: str,
    model: ModelSpec,
    *,
    symmetric: bool = False,
    max_batch: int = 8,
    max_candidates: int = 4,
) -> RigStudy:
    mean = round(float(np.mean(PAPER_LENGTHS)))
    demand = Demand(
        prompt_len=mean,
        output_len=mean,
        kv_sequences=max_batch,
        max_in_flight=MAX_IN_FLIGHT,
        context=2 * max(PAPER_LENGTHS),
        act_tokens=max_batch * max(PAPER_LENGTHS),
    )
    rig = load_rig(rig_name)
    cands = candidates(
        rig, model, demand, symmetric=symmetric, max_candidates=max_candidates, max_batch=max_batch
    )
    return RigStudy(rig_name, rig, model, [c.plan for c in cands])


def make_reference(rig_name: str, model: ModelSpec, max_batch: int = 8) -> Reference:
    rig = load_rig(rig_name)
    return Reference.build(rig, model, reference_plan(rig, model, max_batch))


def best_attainment(results: list[ServeResult], deadlines: np.ndarray) -> float:
    return max((r.attainment(deadlines) for r in results if r.feasible), default=0.0)


def best_min_scale(results: list[ServeResult], reference: Reference, target: float) -> float:
    return min((min_scale(r, reference, target) for r in results if r.feasible), default=float("inf"))
