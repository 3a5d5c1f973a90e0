"""HexGen's GA (as the paper's scheduler) beside the CP-SAT scheduler on the 58-GPU full-budget rig:
plan quality (SLO attainment in the engine, HexGen's runtime: static batch 1, drop-late) and search
time, same rig, same cost model, same requests.

Usage: python benchmarks/hexgen_ga_vs_cpsat.py [--requests N]
Deadlines are 5x the single-request latency on the 16 x A100 reference (HexGen, arXiv 2311.11514).
The GA ranks individuals with the fast estimate (``hetsim.serving.estimate``), as HexGen ranks them
with its simulator; CP-SAT confirms each candidate in the engine. Times are wall-clock on this
machine (noisy on a shared VM).
"""

from __future__ import annotations

import sys
import time

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.hexgen_cpsat import reference_plan, search_serving
from hetsim.planner.hexgen_ga import search_ga
from hetsim.serving.estimate import estimate_attainment
from hetsim.serving.serve import Reference, deadlines_for, serve_plan
from hetsim.serving.workload import poisson_requests

SCALE = 5.0
RATES = (1.0, 2.0, 4.0)


def shape(plan) -> str:
    return "; ".join(
        " > ".join(f"{s.devices[0].split('.')[0]} tp{len(s.devices)}x{s.layers}" for s in r.stages)
        for r in plan.replicas
    )


def main(argv: list[str]) -> int:
    n = int(argv[argv.index("--requests") + 1]) if "--requests" in argv else 100
    model, full, homog = (
        get_model("llama2-70b"),
        load_rig("hexgen-full-budget"),
        load_rig("hexgen-homogeneous"),
    )
    ref = Reference.build(homog, model, reference_plan(homog, model, 1))
    print("| rate (req/s) | planner | search s | attainment (engine) | attainment (estimate) | replicas |")
    print("|---|---|---|---|---|---|")
    for rate in RATES:
        reqs = poisson_requests(rate, n=n, seed=0)
        dl = deadlines_for(reqs, slo_scale=SCALE, reference=ref)
        t = time.perf_counter()
        ga = search_ga(full, model, reqs, dl)
        t_ga = time.perf_counter() - t
        t = time.perf_counter()
        found = search_serving(full, model, reqs, dl, max_batch=1, mode="hexgen", drop_late=True)
        t_cp = time.perf_counter() - t
        for name, plan, secs in (("GA", ga.plan, t_ga), ("CP-SAT", found[0] if found else None, t_cp)):
            if plan is None:
                print(f"| {rate} | {name} | {secs:.1f} | no plan | | |")
                continue
            eng = serve_plan(plan, full, model, reqs, mode="hexgen", deadlines=dl, drop_late=True)
            est = estimate_attainment(plan, full, model, reqs, dl)
            att, reps = eng.attainment(dl), len(plan.replicas)
            print(f"| {rate} | {name} | {secs:.1f} | {att:.2f} | {est:.2f} | {reps} |")
            print(f"<!-- {name} @ {rate}: {shape(plan)} -->", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
