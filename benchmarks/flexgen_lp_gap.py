"""FlexGen's search on 52 fixed-batch problems (rigs whose GPU is smaller than the model): the LP's
best optimum against the engine time of the plan the search emits, split into where it goes.

    .venv/bin/python benchmarks/flexgen_lp_gap.py [--out FILE.jsonl] [--no-record]

For each problem (rig, model, gbs x nb sequences, prompt + generation; seeded): the LP's best time
(``lp_candidates``' first), the optimum of the emitted plan's own (gbs, nb, flags), that plan's time
in the LP at the placement the runtime makes (``released_time_per_seq``: whole tensors by the
midpoint rule, whole percents), and its engine time (``simulate``). The emitted plan's gap to the
LP's best is then (its optimum / the best) x (its placed time / its optimum: the rounding to the
runtime's placement) x (engine / placed time: the LP against the engine). One JSON line a problem to
``--out``; the summary is appended to ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from record import append

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.planner import flexgen_lp as lp
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import scheduling_layer_tensors
from hetsim.workload import Workload

RIGS = ("mixed-lab", "flexgen-t4", "hetegen-a10", "a40-measured", "hexgen-homogeneous")
MODELS = ("opt-13b", "opt-30b", "opt-66b", "llama2-13b", "llama2-70b", "llama3-8b", "mixtral-8x7b")
# session 21's named case first: the relaxation 27.5 % under the best plan confirmed at 16 x 2
NAMED = ("mixed-lab", "llama2-70b", 16, 2, 256, 32)


def problems(n: int = 52, seed: int = 22) -> list[tuple[str, str, int, int, int, int]]:
    """``NAMED``, then the (rig, model) pairs whose fp16 weights exceed the GPU and fit 90 % of the
    host and disk, in turn, each with a seeded gbs, nb, prompt and generation length."""
    rnd = random.Random(seed)
    pairs = []
    for r in RIGS:
        rig = load_rig(r)
        gpu, cpu, disk = endpoints(rig)
        cap = rig.devices[cpu].mem_bytes + (rig.disks[disk].capacity_bytes if disk else 0)
        for m in MODELS:
            weights = 2 * sum(k for layer in scheduling_layer_tensors(get_model(m)) for k, _ in layer)
            if rig.devices[gpu].mem_bytes < weights < 0.9 * cap:
                pairs.append((r, m))
    out = [NAMED]
    while len(out) < n:
        r, m = pairs[len(out) % len(pairs)]
        out.append(
            (
                r,
                m,
                rnd.choice([4, 8, 16, 32, 64]),
                rnd.choice([1, 2, 4, 8]),
                rnd.choice([128, 256, 512, 1024]),
                rnd.choice([16, 32, 64]),
            )
        )
    return out


def measure(problem: tuple[str, str, int, int, int, int]) -> dict[str, object]:
    r, m, gbs, nb, prompt, gen = problem
    rig, model = load_rig(r), get_model(m)
    wl, ends = Workload(gbs * nb, prompt, gen), endpoints(rig)
    t0 = time.process_time()
    plan = lp.search_policy(rig, model, wl).plan
    cpu_s = time.process_time() - t0
    sols, _ = lp.lp_candidates(rig, model, wl, ends, None)
    row: dict[str, object] = {
        "problem": problem,
        "lp": sols[0].time_per_seq_s * wl.batch,
        "search_cpu_s": cpu_s,
    }
    if plan is None:
        return row
    fl = lp.Flags(
        plan.cpu_attention,
        plan.compress_cache,
        plan.kv_home if plan.compress_cache else "",
        plan.compress_weight,
        plan.pin_weight,
    )
    own = lp.solve_lp(rig, model, wl, plan.gpu_batch_size, plan.num_gpu_batches, fl, ends)
    placed = lp.released_time_per_seq(own, plan, rig, model, wl, ends, None) if own else None
    row.update(
        plan=[
            plan.gpu_batch_size,
            plan.num_gpu_batches,
            plan.wg,
            plan.wc,
            plan.cg,
            plan.cc,
            plan.cpu_attention,
        ],
        own=own.time_per_seq_s * wl.batch if own else None,
        placed=placed * wl.batch if placed else None,
        engine=simulate(get_strategy("flexgen"), plan, rig, model, wl).e2e_s,
    )
    return row


def _spread(xs: list[float]) -> str:
    return f"{100 * min(xs):+.1f} / {100 * statistics.median(xs):+.1f} / {100 * max(xs):+.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="one JSON line a problem")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    rows = []
    for p in problems():
        rows.append(measure(p))
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    full = [r for r in rows if r.get("placed")]
    gap = [r["engine"] / r["lp"] - 1 for r in full]
    own = _spread([r["own"] / r["lp"] - 1 for r in full])
    rounding = _spread([r["placed"] / r["own"] - 1 for r in full])
    engine = _spread([r["engine"] / r["placed"] - 1 for r in full])
    over = " / ".join(str(sum(g > t for g in gap)) for t in (0.02, 0.05, 0.1, 0.2))
    cpu = [r["search_cpu_s"] for r in rows]
    table = "\n".join(
        [
            "| emitted plan against the LP's best, min / median / max | share |",
            "|---|---|",
            f"| engine / LP best ({len(full)} of {len(rows)} problems) | {_spread(gap)} |",
            f"| its (gbs, nb, flags)' optimum / LP best | {own} |",
            f"| placed / its optimum (the runtime's placement) | {rounding} |",
            f"| engine / placed (the LP against the engine) | {engine} |",
            f"| problems over 2 / 5 / 10 / 20 % | {over} |",
            f"| search CPU s, sum / median | {sum(cpu):.2f} / {statistics.median(cpu):.3f} |",
        ]
    )
    append("`flexgen_lp_gap.py`", table, write=not args.no_record)


if __name__ == "__main__":
    main()
