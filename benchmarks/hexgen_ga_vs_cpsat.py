"""HexGen's GA (as the paper's scheduler) beside the CP-SAT scheduler on the 58-GPU full-budget rig:
plan quality (SLO attainment in the engine, HexGen's runtime: static batch 1, drop-late) and search
time, same rig, same cost model, same requests.

Usage: python benchmarks/hexgen_ga_vs_cpsat.py [--requests N] [--repeats K]
Deadlines are 5x the single-request latency on the 16 x A100 reference (HexGen, arXiv 2311.11514).
The GA ranks individuals with the fast estimate (``hetsim.serving.estimate``), as HexGen ranks them
with its simulator; CP-SAT scores its candidates with the same estimate and confirms them in the
engine best-first (``search_serving``), so its time includes at least one engine run.

Every search runs in a fresh process (imports and the reference rig's plan done before the clock
starts, nothing cached from another search), GA and CP-SAT alternating K times per rate (default
3); the table gives the minimum and the median of each (a shared VM is noisy).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

SCALE = 5.0
RATES = (1.0, 2.0, 4.0)


def shape(plan) -> str:
    return "; ".join(
        " > ".join(f"{s.devices[0].split('.')[0]} tp{len(s.devices)}x{s.layers}" for s in r.stages)
        for r in plan.replicas
    )


def one(planner: str, rate: float, n: int) -> dict:
    """One search in this process: its time, and its plan served in the engine and estimated."""
    from hetsim.hardware.loader import load_rig
    from hetsim.models import get_model
    from hetsim.planner.hexgen_cpsat import reference_plan, search_serving
    from hetsim.planner.hexgen_ga import search_ga
    from hetsim.serving.estimate import estimate_attainment
    from hetsim.serving.serve import Reference, deadlines_for, serve_plan
    from hetsim.serving.workload import poisson_requests

    model, full, homog = (
        get_model("llama2-70b"),
        load_rig("hexgen-full-budget"),
        load_rig("hexgen-homogeneous"),
    )
    ref = Reference.build(homog, model, reference_plan(homog, model, 1))
    reqs = poisson_requests(rate, n=n, seed=0)
    dl = deadlines_for(reqs, slo_scale=SCALE, reference=ref)
    t = time.perf_counter()
    if planner == "GA":
        plan = search_ga(full, model, reqs, dl).plan
    else:
        found = search_serving(full, model, reqs, dl, max_batch=1, mode="hexgen", drop_late=True)
        plan = found[0] if found else None
    secs = time.perf_counter() - t
    if plan is None:
        return {"secs": secs, "plan": None}
    eng = serve_plan(plan, full, model, reqs, mode="hexgen", deadlines=dl, drop_late=True)
    est = estimate_attainment(plan, full, model, reqs, dl)
    return {
        "secs": secs,
        "plan": shape(plan),
        "att": eng.attainment(dl),
        "est": est,
        "replicas": len(plan.replicas),
    }


def main(argv: list[str]) -> int:
    n = int(argv[argv.index("--requests") + 1]) if "--requests" in argv else 100
    if "--one" in argv:
        rate = float(argv[argv.index("--rate") + 1])
        print(json.dumps(one(argv[argv.index("--one") + 1], rate, n)))
        return 0
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 3
    print(
        "| rate (req/s) | planner | search s, min / median | attainment (engine) "
        "| attainment (estimate) | replicas |"
    )
    print("|---|---|---|---|---|---|")
    for rate in RATES:
        runs: dict[str, list[dict]] = {"GA": [], "CP-SAT": []}
        for _ in range(repeats):
            for name in runs:
                cmd = [sys.executable, __file__, "--one", name, "--rate", str(rate), "--requests", str(n)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
        for name, rs in runs.items():
            secs = [r["secs"] for r in rs]
            assert all(r["plan"] == rs[0]["plan"] for r in rs), "a seeded search gave different plans"
            r = rs[0]
            if r["plan"] is None:
                print(f"| {rate} | {name} | {min(secs):.2f} / {statistics.median(secs):.2f} | no plan | | |")
                continue
            print(
                f"| {rate} | {name} | {min(secs):.2f} / {statistics.median(secs):.2f} | {r['att']:.2f} | "
                f"{r['est']:.2f} | {r['replicas']} |"
            )
            print(f"<!-- {name} @ {rate}: {r['plan']} -->", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
