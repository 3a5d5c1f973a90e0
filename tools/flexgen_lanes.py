"""Busy seconds per lane of FlexGen plans in the engine: the prefill, and one decode step (the middle one).

    .venv/bin/python tools/flexgen_lanes.py [MODEL RIG PROMPT GEN]   # default opt-30b flexgen-t4 512 32

Runs the paper's OPT-30B policy (48 x 3, weights 20/80, KV and activations on the CPU, CPU attention),
the plan hetsim's own search picks there (`compare --objective throughput`, no flags), the paper's
4-bit policy (64 x 8, everything on the CPU, the KV 4-bit, GPU attention) and the plan the search
picks with --allow-compression (on OPT-30B 512 + 32: 64 x 8, weights 5/95, activations on the GPU,
4-bit KV), each step by step with a trace, and sums each lane's spans (and each label's) inside each
window, then the GPU's kernel seconds in each window by what they do (FlexGen's 4-bit (de)compression
kernels, GEMMs, attention, the rest). Then the ladder of plans between the lossless two, one change at
a time (activations to the GPU, weights all on the CPU, one GPU batch, the search's KV split), with
each one's time a sequence in the prefill and a decode step: docs/offloading-baselines.md, "FlexGen's
own search against the paper's policy" and "FlexGen's 4-bit policy, term by term".
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import replace
from typing import NoReturn

from flexgen_disk import traced  # the sibling tool: tools/ is on sys.path when a tool runs

from hetsim import api
from hetsim.costs.op_cost import op_cost
from hetsim.errors import InputError
from hetsim.models.spec import OpKind
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import _Runner
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload

PAPER = FlexGenPlan(48, 3, 20, 80, 0, 100, 0, 100, cpu_attention=True)
# the paper's 4-bit policy (--compress-cache only, --percent 0 100 0 100 0 100)
PAPER_4BIT = FlexGenPlan(64, 8, 0, 100, 0, 100, 0, 100, cpu_attention=False, compress_cache=True)
# one change at a time from the paper's policy towards the search's (OPT-30B 512 + 32: 96 x 1, KV 3/96/1);
# main() adds the search's own batching and KV split
LADDER = {
    "paper 48x3 w 20/80 c 0/100 h 0/100": PAPER,
    "activations on the GPU (h 100/0)": replace(PAPER, hg=100, hc=0),
    "weights all on the CPU (w 0/100)": replace(PAPER, wg=0, wc=100, hg=100, hc=0),
}


def searched(p: api.Problem, allow_lossy: bool = False) -> FlexGenPlan:
    """The plan `compare --objective throughput` runs for FlexGen with no flags but model and rig (and
    ``--allow-compression`` where ``allow_lossy``)."""
    r = api.best_result(get_strategy("flexgen"), p, "throughput", allow_lossy=allow_lossy)
    if not r.feasible:
        fail(f"the search found no plan: {r.reason}")
    return FlexGenPlan(**r.plan)


def label(plan: FlexGenPlan) -> str:
    return (
        f"{plan.gpu_batch_size}x{plan.num_gpu_batches} w {plan.wg:g}/{plan.wc:g} c {plan.cg:g}/{plan.cc:g} "
        f"h {plan.hg:g}/{plan.hc:g}"
    )


def spans(plan: FlexGenPlan, p: api.Problem) -> tuple[list[tuple[str, str, float, float]], float, float]:
    """(lane, label, start, end) of every span of a traced run, its first-token time and its end
    (``flexgen_disk.traced``, the one reader of a run's trace for both tools)."""
    out, ttft, e2e, _ = traced(plan, p)
    return [s[:4] for s in out], ttft, e2e


def kernel_classes(plan: FlexGenPlan, p: api.Problem, wl: Workload, step: int) -> dict[str, float]:
    """The GPU's kernel seconds of one step (0: the prefill) of one block, by what the kernels do, each
    op at its cost alone (``op_cost``): what the GPU compute lane's spans of that step are made of."""
    runner = _Runner(plan, p.rig, p.model, wl)
    gpu = p.rig.devices[runner.gpu]
    out: dict[str, float] = defaultdict(float)
    for j in range(runner.nl):
        o = runner.ops(runner.steps[step], j, plan.gpu_batch_size)
        for op in (*o.gpu_pre, *o.gpu_post):
            if op.name.startswith(("dequant_", "compress_")):
                what = "4-bit " + op.name.split(".")[0]
            else:
                what = {OpKind.MATMUL: "GEMM", OpKind.ATTENTION: "attention"}.get(op.kind, "other")
            out[what] += op_cost(gpu, op).time_s * plan.num_gpu_batches
    return out


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit 2 (as the CLI)."""
    print(f"flexgen_lanes.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(model: str = "opt-30b", rig: str = "flexgen-t4", prompt: str = "512", gen: str = "32") -> None:
    # a decode step is (e2e - prefill) / (GEN - 1): GEN needs two tokens at least
    if not (prompt.isdigit() and int(prompt) > 0 and gen.isdigit() and int(gen) > 1):
        fail(f"PROMPT must be a positive integer and GEN one above 1, got {prompt} {gen}")
    n = int(gen)
    free = api.problem(model, rig, batch=None, prompt_len=int(prompt), gen_len=n)
    search, search_4bit = searched(free), searched(free, allow_lossy=True)
    for name, plan in (
        (f"paper {label(PAPER)}", PAPER),
        (f"search {label(search)}", search),
        (f"paper 4-bit {label(PAPER_4BIT)}", PAPER_4BIT),
        (f"4-bit search {label(search_4bit)}", search_4bit),
    ):
        p = api.problem(model, rig, batch=plan.block_size, prompt_len=int(prompt), gen_len=n)
        events, ttft, e2e = spans(plan, p)
        step = (e2e - ttft) / (n - 1)
        tok_s = plan.block_size * n / e2e
        print(f"== {name}: {tok_s:.3f} tok/s, prefill {ttft:.1f} s, decode step {step:.3f} s")
        middle = ttft + (n // 2 - 1) * step
        for what, (t0, t1) in (("prefill", (0.0, ttft)), ("decode step", (middle, middle + step))):
            lane: dict[str, float] = defaultdict(float)
            label_s: dict[tuple[str, str], float] = defaultdict(float)
            for ln, lb, s0, s1 in events:
                overlap = min(s1, t1) - max(s0, t0)
                if overlap > 0:
                    lane[ln] += overlap
                    label_s[(ln, lb)] += overlap
            per_seq = (t1 - t0) / plan.block_size * 1e3
            print(f"  {what}: {t1 - t0:.3f} s ({per_seq:.2f} ms a sequence)")
            for ln in sorted(lane, key=lambda k: -lane[k]):
                parts = ", ".join(f"{lb} {v:.3f}" for (l2, lb), v in sorted(label_s.items()) if l2 == ln)
                print(f"    {ln:24s} {lane[ln]:9.3f} s  {lane[ln] / (t1 - t0):6.1%}  ({parts})")
        for what, i in (("prefill", 0), ("decode step", n // 2)):
            split = kernel_classes(plan, p, Workload(plan.block_size, int(prompt), n), i)
            parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1]))
            print(f"  GPU kernels, {what}: {sum(split.values()):.3f} s ({parts})")
    print("== one change at a time (a sequence: prefill ms, decode ms a step)")
    # the search's batching on the last rung's placement (96 x 1 on OPT-30B 512 + 32), then its KV split
    batched = replace(
        LADDER["weights all on the CPU (w 0/100)"],
        gpu_batch_size=search.gpu_batch_size,
        num_gpu_batches=search.num_gpu_batches,
    )
    batching = f"the search's batching ({search.gpu_batch_size} x {search.num_gpu_batches})"
    rungs = (*LADDER.items(), (batching, batched), (f"the search's KV split ({label(search)})", search))
    for name, plan in rungs:
        wl = Workload(plan.block_size, int(prompt), n)
        p = api.problem(model, rig, batch=plan.block_size, prompt_len=int(prompt), gen_len=n)
        r = simulate(get_strategy("flexgen"), plan, p.rig, p.model, wl)
        if not r.feasible:
            print(f"  {name:48s} infeasible: {r.reason}")
            continue
        b, peak = plan.block_size, max(v for k, v in r.peak_mem_bytes.items() if "gpu" in k)
        print(
            f"  {name:48s} {r.throughput_tok_s:7.3f} tok/s  prefill {r.ttft_s / b * 1e3:7.1f}  "
            f"decode {r.tpot_s / b * 1e3:6.2f}  GPU peak {peak / 1e9:5.2f} GB"
        )


if __name__ == "__main__":
    if len(sys.argv) > 5:
        fail("usage: flexgen_lanes.py [MODEL RIG PROMPT GEN]")
    try:
        main(*sys.argv[1:])
    except InputError as exc:
        fail(exc.line())
