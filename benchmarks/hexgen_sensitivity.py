"""Sensitivity of the full-budget / homogeneous max-rate ratio to what the homogeneous baseline is,
under HexGen's runtime (static batch 1, drop-late; HexGen, arXiv 2311.11514).

Usage: python benchmarks/hexgen_sensitivity.py [--requests N] [--keep] [--dispatch POLICY] [--scales 5,10]
(``--keep``: late requests are served rather than dropped; default dispatch earliest-available)
Max rate at 99 % and 90 % SLO attainment, deadline 5x (and 10x) the single-request latency of the
best A100 layout, Poisson arrivals with lengths 32/64/128 (seed 0), bisected on a log scale.
Homogeneous layouts: hetsim's planner (two TP-8 replicas, one per p4d machine) and one replica over
both machines (TP 8 x PP 2): the paper does not say how its 16-A100 baseline was laid out.
"""

from __future__ import annotations

import sys

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.hexgen_cpsat import Demand, candidates, reference_plan
from hetsim.serving.batching import MAX_IN_FLIGHT
from hetsim.serving.serve import Reference, attainment_at, max_rate
from hetsim.strategies.hexgen import HexGenPlan, Replica
from hetsim.strategies.pipeline import Stage


def main(argv: list[str]) -> int:
    n = int(argv[argv.index("--requests") + 1]) if "--requests" in argv else 100
    drop = "--keep" not in argv
    dispatch = argv[argv.index("--dispatch") + 1] if "--dispatch" in argv else "earliest-available"
    scales = (
        [float(x) for x in argv[argv.index("--scales") + 1].split(",")] if "--scales" in argv else [5.0, 10.0]
    )
    print(f"drop_late={drop}, dispatch={dispatch}, {n} requests")
    model, full, homog = (
        get_model("llama2-70b"),
        load_rig("hexgen-full-budget"),
        load_rig("hexgen-homogeneous"),
    )
    ref_plan = reference_plan(homog, model, 1)
    ref = Reference.build(homog, model, ref_plan)
    gpus = [[g for g in homog.nodes[node].gpus] for node in homog.nodes]
    one = HexGenPlan((Replica((Stage(tuple(gpus[0]), 40), Stage(tuple(gpus[1]), 40))),), max_batch=1)
    two = HexGenPlan(tuple(Replica((Stage(tuple(g), 80),)) for g in gpus), max_batch=1)
    demand = Demand(kv_sequences=1, max_in_flight=MAX_IN_FLIGHT)
    full_plans = [c.plan for c in candidates(full, model, demand, max_batch=1, max_candidates=4)]
    print(
        "| deadline | target | full budget (best CP-SAT candidate) | 16 A100: 2 x TP8 | 16 A100: TP8 x PP2 |"
    )
    print("|---|---|---|---|---|")
    for scale in scales:
        for target in (0.99, 0.9):

            def rate(plan, rig, scale=scale, target=target):
                return max_rate(
                    lambda r: attainment_at(
                        plan,
                        rig,
                        model,
                        r,
                        n=n,
                        seed=0,
                        slo_scale=scale,
                        reference=ref,
                        mode="hexgen",
                        drop_late=drop,
                        dispatch=dispatch,
                    ),
                    target,
                    lo=0.05,
                    hi=1.0,
                    iterations=6,
                )

            f = max(rate(p, full) for p in full_plans)
            a, b = rate(two, homog), rate(one, homog)
            print(
                f"| {scale:g}x | {target:.0%} | {f:.3g} | {a:.3g} ({f / a:.2f}x) | {b:.3g} ({f / b:.2f}x) |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
