"""Busy seconds per lane of FlexGen plans in the engine: the prefill, and one decode step (the middle one).

    .venv/bin/python tools/flexgen_lanes.py [MODEL RIG PROMPT GEN]   # default opt-30b flexgen-t4 512 32

Runs the paper's OPT-30B policy (48 x 3, weights 20/80, KV and activations on the CPU, CPU attention),
the plan hetsim's own search picks there (96 x 1, weights 0/100, KV 4/95/1, activations on the GPU),
the paper's 4-bit policy (64 x 8, everything on the CPU, the KV 4-bit, GPU attention) and the plan the
search picks with --allow-compression (64 x 8, weights 5/95, activations on the GPU, 4-bit KV), each
step by step with a trace, and sums each lane's spans (and each label's) inside each window; then the
GPU's kernel seconds in each window by what they do (FlexGen's 4-bit (de)compression kernels, GEMMs,
attention, the rest): docs/offloading-baselines.md, "FlexGen's own search against the paper's policy"
and "FlexGen's 4-bit policy, term by term".
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import NoReturn

from hetsim import api
from hetsim.costs.op_cost import op_cost
from hetsim.errors import InputError
from hetsim.models.spec import OpKind
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import _Runner
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload

PLANS = {
    "paper 48x3 w 20/80 c 0/100 h 0/100": FlexGenPlan(48, 3, 20, 80, 0, 100, 0, 100, cpu_attention=True),
    "search 96x1 w 0/100 c 4/95 h 100/0": FlexGenPlan(96, 1, 0, 100, 4, 95, 100, 0, cpu_attention=True),
    "paper 4-bit 64x8 w 0/100 c 0/100 h 0/100": FlexGenPlan(
        64, 8, 0, 100, 0, 100, 0, 100, cpu_attention=False, compress_cache=True
    ),
    "4-bit search 64x8 w 5/95 c 0/100 h 100/0": FlexGenPlan(
        64, 8, 5, 95, 0, 100, 100, 0, cpu_attention=False, compress_cache=True
    ),
}


def spans(plan: FlexGenPlan, p: api.Problem) -> tuple[list[tuple[str, str, float, float]], float, float]:
    """(lane, label, start, end) of every span of a traced run, its first-token time and its end."""
    wl = Workload(plan.block_size, p.workload.prompt_len, p.workload.gen_len)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        r = simulate(get_strategy("flexgen"), plan, p.rig, p.model, wl, trace_path=str(path))
        if not r.feasible:
            raise SystemExit(f"{plan}: {r.reason}")
        events = json.loads(path.read_text())["traceEvents"]
    lanes = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    out = [
        (lanes[e["tid"]], e["name"].split("[")[0].split(" ")[0], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
        for e in events
        if e["ph"] == "X"
    ]
    return out, r.ttft_s, r.e2e_s


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
    for name, plan in PLANS.items():
        p = api.problem(model, rig, batch=plan.block_size, prompt_len=int(prompt), gen_len=n)
        events, ttft, e2e = spans(plan, p)
        step = (e2e - ttft) / (n - 1)
        tok_s = plan.block_size * n / e2e
        print(f"== {name}: {tok_s:.3f} tok/s, prefill {ttft:.1f} s, decode step {step:.3f} s")
        middle = ttft + (n // 2 - 1) * step
        for what, (t0, t1) in (("prefill", (0.0, ttft)), ("decode step", (middle, middle + step))):
            lane: dict[str, float] = defaultdict(float)
            label: dict[tuple[str, str], float] = defaultdict(float)
            for ln, lb, s0, s1 in events:
                overlap = min(s1, t1) - max(s0, t0)
                if overlap > 0:
                    lane[ln] += overlap
                    label[(ln, lb)] += overlap
            per_seq = (t1 - t0) / plan.block_size * 1e3
            print(f"  {what}: {t1 - t0:.3f} s ({per_seq:.2f} ms a sequence)")
            for ln in sorted(lane, key=lambda k: -lane[k]):
                parts = ", ".join(f"{lb} {v:.3f}" for (l2, lb), v in sorted(label.items()) if l2 == ln)
                print(f"    {ln:24s} {lane[ln]:9.3f} s  {lane[ln] / (t1 - t0):6.1%}  ({parts})")
        for what, i in (("prefill", 0), ("decode step", n // 2)):
            split = kernel_classes(plan, p, Workload(plan.block_size, int(prompt), n), i)
            parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1]))
            print(f"  GPU kernels, {what}: {sum(split.values()):.3f} s ({parts})")


if __name__ == "__main__":
    if len(sys.argv) > 5:
        fail("usage: flexgen_lanes.py [MODEL RIG PROMPT GEN]")
    try:
        main(*sys.argv[1:])
    except InputError as exc:
        fail(exc.line())
