"""hetsim's predictions over FlexGen's Tab. 2 grid and HeteGen's Fig. 8 grid, one markdown row each.

    .venv/bin/python tools/offload_grid.py [flexgen|hetegen]   # both by default

FlexGen Tab. 2 (arXiv 2303.06865) cells: OPT-6.7B/30B/175B on flexgen-t4, prompt 512 and 1024, gen 32:
FlexGen's own search (no flags), the 4-bit search (--allow-compression), Accelerate and DeepSpeed at
the largest batch one pass holds and at fixed batches. HeteGen Fig. 8 (arXiv 2403.01164): OPT-6.7B/
13B/30B on hetegen-a10, batch 1, 512 + 64, HeteGen and FlexGen at GPU budgets 2..24 GB (24 is above
the A10's 23.2 GB: it runs as 23.2, and the row says so). Each row gives throughput, the chosen plan,
each phase's busiest resource (busy share of the phase's time) and the peak memory against the
device's capacity. Prints no published values.
"""

from __future__ import annotations

import math
import sys

from hetsim import api
from hetsim.sim.memory import usable_bytes
from hetsim.sim.result import Result
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.workload import Workload

GB = 1e9
T4_MODELS = ("opt-6.7b", "opt-30b", "opt-175b")
A10_MODELS = ("opt-6.7b", "opt-13b", "opt-30b")
BUDGETS = (2, 3, 4, 6, 8, 12, 16, 20, 24)
FIXED = {"accelerate": (1, 4, 8), "deepspeed": (1, 4, 8)}


def _short(resource: str) -> str:
    return resource.replace("n0.", "").replace(":compute", " compute").replace(":dram", " dram")


def busiest(r: Result, prefill: Result | None) -> str:
    """Each phase's busiest resource: prefill from a run of the same plan with gen_len 1, decode as
    the whole run's busy time less prefill's."""
    if prefill is None or not prefill.feasible:
        k = max(r.utilization, key=r.utilization.get)
        return f"{_short(k)} {r.utilization[k]:.0%}"
    tp, tt = prefill.e2e_s, r.e2e_s
    pre = max(prefill.utilization, key=prefill.utilization.get)
    dec = {k: (u * tt - prefill.utilization.get(k, 0.0) * tp) / (tt - tp) for k, u in r.utilization.items()}
    d = max(dec, key=dec.get)
    return f"pre {_short(pre)} {prefill.utilization[pre]:.0%}; dec {_short(d)} {dec[d]:.0%}"


def mem(r: Result, rig) -> str:
    out = []
    caps = rig.capacities()
    for name, used in sorted(r.peak_mem_bytes.items()):
        cap = caps.get(name, float("nan"))
        out.append(f"{_short(name).split('.')[-1]} {used / GB:.1f}/{cap / GB:.4g}")
    return ", ".join(out)


def plan_text(plan) -> str:
    p = plan if isinstance(plan, dict) else dict(plan)
    if "gpu_batch_size" in p:
        wd = 100 - p["wg"] - p["wc"]
        cd = 100 - p["cg"] - p["cc"]
        s = (
            f"{p['gpu_batch_size']}x{p['num_gpu_batches']} w {p['wg']:g}/{p['wc']:g}/{wd:g} "
            f"c {p['cg']:g}/{p['cc']:g}/{cd:g} h {p['hg']:g}/{p['hc']:g}"
        )
        s += " cpu-att" if p["cpu_attention"] else ""
        s += " 4bit-w" if p["compress_weight"] else ""
        s += " 4bit-kv" if p["compress_cache"] else ""
        return s
    if "gpu_layers" in p:  # accelerate
        layers = f"{p['gpu_layers']}/{p['cpu_layers']}/{p['disk_layers']}"
        return f"layers {layers} (gpu/cpu/disk), pass {p['batch_per_pass']}"
    if "batch_per_pass" in p:  # deepspeed
        return f"offload {p.get('offload', 'cpu')}, pass {p['batch_per_pass']}"
    keep = {k: v for k, v in p.items() if not isinstance(v, (list, dict)) and k not in ("gpu", "cpu")}
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def prefill_of(strategy, r: Result, p: api.Problem) -> Result | None:
    if not r.feasible:
        return None
    try:
        plan = strategy.plan_from_dict(dict(r.plan)) if hasattr(strategy, "plan_from_dict") else None
    except Exception:  # a plan that does not round-trip: whole-run utilisation
        plan = None
    if plan is None:
        return None
    w = Workload(r.batch or p.workload.batch or 1, p.workload.prompt_len, 1)
    return simulate(strategy, plan, p.rig, p.model, w)


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(r: Result) -> str:
    return f"{r.throughput_tok_s:.3g}" if r.feasible else "refused"


def flexgen_grid() -> None:
    print(row(["model", "prompt", "run", "batch", "tok/s", "plan", "busiest resource", "peak GB / capacity"]))
    print(row(["---"] * 8))
    for model in T4_MODELS:
        for prompt in (512, 1024):
            p = api.problem(model, "flexgen-t4", batch=None, prompt_len=prompt, gen_len=32)
            runs: list[tuple[str, str, Result]] = []
            fg = get_strategy("flexgen")
            runs.append(("flexgen", "FlexGen search", api.best_result(fg, p, "throughput")))
            runs.append(
                ("flexgen", "FlexGen 4-bit search", api.best_result(fg, p, "throughput", allow_lossy=True))
            )
            for name in ("accelerate", "deepspeed"):
                s = get_strategy(name)
                runs.append((name, f"{name} free batch", api.best_result(s, p, "throughput")))
                for b in FIXED[name]:
                    q = api.problem(model, "flexgen-t4", batch=b, prompt_len=prompt, gen_len=32)
                    runs.append((name, f"{name} batch {b}", api.best_result(s, q, "throughput")))
            for name, label, r in runs:
                s = get_strategy(name)
                pre = prefill_of(s, r, p)
                print(row([
                    model, prompt, label, r.batch, fmt(r),
                    plan_text(r.plan) if r.feasible else r.reason[:90],
                    busiest(r, pre) if r.feasible else "", mem(r, p.rig) if r.feasible else "",
                ]), flush=True)  # fmt: skip


def hetegen_grid() -> None:
    sys.path.insert(0, ".")
    from hetsim.planner.hetegen_knapsack import plan_hetegen
    from hetsim.strategies.hetegen import split_weight_bytes
    from paper_figs.hetegen import flexgen_at_budget, hetegen_at_budget, hetegen_floor, workload_problem

    print(row(["model", "budget GB", "run", "tok/s", "plan", "busiest resource", "peak GB / capacity"]))
    print(row(["---"] * 7))
    for model in A10_MODELS:
        p = workload_problem(model)
        floor = hetegen_floor(p) / GB
        cap = p.rig.gpus()[0].mem_bytes
        for budget in (math.ceil(floor * 100) / 100, *BUDGETS):
            # a budget above the GPU runs as the GPU's own size (``usable_bytes``): the row says so
            shown = (
                budget
                if usable_bytes(cap, budget * GB) == budget * GB
                else f"{budget} (GPU holds {cap / GB:.4g})"
            )
            for name, run in (("hetegen", hetegen_at_budget), ("flexgen", flexgen_at_budget)):
                r = run(p, budget * GB)
                s = get_strategy(name)
                pre = prefill_of(s, r, p)
                text = plan_text(r.plan) if r.feasible else r.reason[:90]
                if name == "hetegen" and r.feasible:
                    plan = plan_hetegen(p.rig, p.model, p.workload, p.rig.gpus()[0].name, budget * GB)
                    split = split_weight_bytes(plan, p.model) / GB
                    text = f"split weights {split:.1f} GB (read from host per token)"
                print(row([
                    model, shown, name, fmt(r), text,
                    busiest(r, pre) if r.feasible else "", mem(r, p.rig) if r.feasible else "",
                ]), flush=True)  # fmt: skip


if __name__ == "__main__":
    which = sys.argv[1:] or ["flexgen", "hetegen"]
    for w in which:
        {"flexgen": flexgen_grid, "hetegen": hetegen_grid}[w]()
        print()
