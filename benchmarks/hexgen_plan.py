"""Time HexGen's two-level CP-SAT scheduler on the 58-GPU full-budget rig (target: < 30 s on 2 cores).

Usage: python benchmarks/hexgen_plan.py [--requests N]
Reports the solver alone (shape enumeration + inner layouts + one outer solve per latency cap) and
the whole search with every candidate confirmed by a serving run in the engine (N requests at
4 req/s, deadline 3x the single-request A100 latency).
"""

from __future__ import annotations

import sys
import time

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.hexgen_cpsat import (
    CostTable,
    Demand,
    candidates,
    enumerate_shapes,
    machine_classes,
    reference_plan,
    search_serving,
)
from hetsim.serving.serve import Reference, deadlines_for
from hetsim.serving.workload import poisson_requests


def main(argv: list[str]) -> int:
    n = int(argv[argv.index("--requests") + 1]) if "--requests" in argv else 200
    model, rig = get_model("llama2-70b"), load_rig("hexgen-full-budget")
    demand = Demand(prompt_len=75, output_len=75, kv_sequences=8, context=256, act_tokens=1024)

    t0 = time.perf_counter()
    table = CostTable(rig, model, demand, machine_classes(rig))
    shapes = enumerate_shapes(table)
    t1 = time.perf_counter()
    cands = candidates(rig, model, demand, max_candidates=6)
    t2 = time.perf_counter()
    print(f"{len(rig.gpus())} GPUs, {len(table.classes)} machine classes, {len(shapes)} replica shapes")
    print(f"shapes + inner CP-SAT layouts: {t1 - t0:.2f} s")
    print(f"candidates (outer solve per latency cap, layouts cached): {t2 - t1:.2f} s, {len(cands)} plans")

    homog = load_rig("hexgen-homogeneous")
    t3 = time.perf_counter()
    ref = Reference.build(homog, model, reference_plan(homog, model))
    reqs = poisson_requests(4.0, n=n, seed=0)
    found = search_serving(rig, model, reqs, deadlines_for(reqs, slo_scale=3.0, reference=ref))
    t4 = time.perf_counter()
    assert found is not None
    plan, res = found
    att = res.attainment(deadlines_for(reqs, slo_scale=3.0, reference=ref))
    print(
        f"search with engine confirmation ({n} requests per candidate): {t4 - t3:.2f} s; "
        f"best plan {len(plan.replicas)} replicas, attainment {att:.3f}"
    )
    total = (t2 - t0) + (t4 - t3)
    print(f"total planning time: {total:.2f} s ({'OK' if total < 30 else 'OVER'} the 30 s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
