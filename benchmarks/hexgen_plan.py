"""Time HexGen's two-level CP-SAT scheduler on the 58-GPU full-budget rig (target: < 30 s on 2 cores).

Usage: python benchmarks/hexgen_plan.py [--requests N]
Reports the solver alone (shape enumeration + inner layouts; then the whole candidate list: the
same again plus one outer solve per latency cap) and two serving searches on N requests at 4 req/s,
deadline 3x the single-request A100 latency: continuous batching (batch 8; every candidate served
in the engine) and HexGen's runtime (batch 1, drop-late; candidates screened by the estimate and
confirmed best-first). Run it with PYTHONPATH pointing at another tree to compare commits.
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
    homog = load_rig("hexgen-homogeneous")
    ref = Reference.build(homog, model, reference_plan(homog, model))  # imports, routes: off the clock
    demand = Demand(prompt_len=75, output_len=75, kv_sequences=8, context=256, act_tokens=1024)

    t0 = time.perf_counter()
    table = CostTable(rig, model, demand, machine_classes(rig))
    shapes = enumerate_shapes(table)
    t1 = time.perf_counter()
    cands = candidates(rig, model, demand, max_candidates=6)
    t2 = time.perf_counter()
    print(f"{len(rig.gpus())} GPUs, {len(table.classes)} machine classes, {len(shapes)} replica shapes kept")
    print(f"cost table + shapes + inner CP-SAT layouts: {t1 - t0:.2f} s")
    print(
        f"candidates (all of the above again, then an outer solve per latency cap): {t2 - t1:.2f} s, "
        f"{len(cands)} plans"
    )

    reqs = poisson_requests(4.0, n=n, seed=0)
    dl = deadlines_for(reqs, slo_scale=3.0, reference=ref)
    total = t2 - t0
    for label, kw in (
        ("continuous batching, batch 8", {}),
        ("HexGen runtime, batch 1, drop-late", {"max_batch": 1, "mode": "hexgen", "drop_late": True}),
    ):
        t3 = time.perf_counter()
        found = search_serving(rig, model, reqs, dl, **kw)
        t4 = time.perf_counter()
        assert found is not None
        plan, res = found
        print(
            f"serving search, {label} ({n} requests): {t4 - t3:.2f} s; "
            f"best plan {len(plan.replicas)} replicas, attainment {res.attainment(dl):.3f}"
        )
        total += t4 - t3
    print(f"total planning time: {total:.2f} s ({'OK' if total < 30 else 'OVER'} the 30 s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
