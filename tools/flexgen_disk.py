"""FlexGen's disk path term by term: the plans hetsim's FlexGen search picks (lossless and 4-bit), run
step by step with a trace, per window (the prefill, the middle decode step):

- each lane's busy seconds and each label's (as tools/flexgen_lanes.py);
- the bytes the disk reads and writes, by what they are (weights, KV, hidden states), per generated
  token of the block, beside the bytes FlexGen's code reads there (weights: the disk tensors of
  ``layer_disk_copies``, once per layer per token; KV: K and V of ``s + i - 1`` tokens per GPU batch,
  flex_opt.py ``load_cache``);
- what overlaps what: the seconds the disk's read lane is busy together with the GPU's and the CPU's
  compute streams and the PCIe host-to-device lane;
- whether the host's page cache could serve the reads: the host DRAM the run leaves free beside the
  disk bytes it cycles through per decode step (Linux's LRU keeps nothing of a loop larger than it).

    .venv/bin/python tools/flexgen_disk.py [MODEL RIG PROMPT GEN]   # default opt-175b flexgen-t4 512 32

docs/flexgen-disk.md holds the OPT-175B breakdown and the check of each term against FlexGen's code.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import NoReturn

from hetsim import api
from hetsim.errors import InputError
from hetsim.planner.search import search_free_batch
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan, layer_disk_copies
from hetsim.workload import Workload

Span = tuple[str, str, float, float, float, str, str]  # lane, label, start, end, bytes, src, dst


def traced(plan: FlexGenPlan, p: api.Problem) -> tuple[list[Span], float, float, dict[str, float]]:
    """Every span of a traced run (with a copy's bytes and ends), its first-token time, its end and
    its peak memory by device."""
    wl = Workload(plan.block_size, p.workload.prompt_len, p.workload.gen_len)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        r = simulate(get_strategy("flexgen"), plan, p.rig, p.model, wl, trace_path=str(path))
        if not r.feasible:
            raise SystemExit(f"{plan}: {r.reason}")
        events = json.loads(path.read_text())["traceEvents"]
    lanes = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    out = []
    for e in events:
        if e["ph"] == "X":
            a = e["args"]
            t0 = e["ts"] / 1e6
            label = e["name"].split("[")[0].split(" ")[0]
            out.append(
                (
                    lanes[e["tid"]],
                    label,
                    t0,
                    t0 + e["dur"] / 1e6,
                    a.get("bytes", 0.0),
                    a.get("src", ""),
                    a.get("dst", ""),
                )
            )
    return out, r.ttft_s, r.e2e_s, dict(r.peak_mem_bytes)


def busy(spans: list[Span], lane: str, t0: float, t1: float) -> list[tuple[float, float]]:
    """The union of ``lane``'s spans clipped to [t0, t1], as disjoint sorted intervals."""
    cut = sorted(
        (max(s0, t0), min(s1, t1)) for ln, _, s0, s1, *_ in spans if ln == lane and s1 > t0 and s0 < t1
    )
    merged: list[tuple[float, float]] = []
    for a, b in cut:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def together(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds two lanes' busy intervals overlap."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def step_ends(spans: list[Span], gpu: str, nb: int) -> list[float]:
    """When each step (0: the prefill) ends: its last GPU batch's LM head ("output", once per GPU
    batch per step) on the GPU's compute stream."""
    heads = sorted(s1 for ln, lb, _, s1, *_ in spans if ln == f"{gpu}:compute" and lb == "output")
    return heads[nb - 1 :: nb]


def disk_bytes(spans: list[Span], disk: str, t0: float, t1: float) -> dict[tuple[str, str], float]:
    """Bytes the disk reads ("read") and writes ("write") by label, of copies that start in [t0, t1)."""
    out: dict[tuple[str, str], float] = defaultdict(float)
    for ln, label, s0, _, n, src, dst in spans:
        if s0 >= t0 and s0 < t1 and ln == f"{disk}:read" and src == disk:
            out[("read", label)] += n
        elif s0 >= t0 and s0 < t1 and ln == f"{disk}:write" and dst == disk:
            out[("write", label)] += n
    return out


def code_reads(plan: FlexGenPlan, p: api.Problem, step: int) -> dict[str, float]:
    """Bytes FlexGen's code reads from the disk in decode step ``step`` (1 .. gen - 1), fp16 KV: every
    layer's disk weight tensors once (load_weight, k == 0), and each GPU batch's K and V on its disk
    share: with CPU attention ``prompt + step - 1`` tokens (load_cache paths 1 and 2:
    ``slice(0, prompt_len + i - 1)``), with GPU attention ``prompt + step`` (path 0, the direct copy:
    ``slice(0, prompt_len + i)``)."""
    m, s = p.model, p.workload.prompt_len
    weights = sum(sum(layer) for layer in layer_disk_copies(m, plan)) if plan.wg + plan.wc < 100 else 0.0
    cd = max(0.0, 100 - plan.cg - plan.cc) / 100
    tokens = s + step - (1 if plan.cpu_attention else 0)
    kv = 2 * 2 * m.hidden * m.layers * plan.block_size * tokens * cd if not plan.compress_cache else None
    return {"weights": weights, **({"kv": kv} if kv is not None else {})}


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit 2 (as the CLI)."""
    print(f"flexgen_disk.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def report(name: str, plan: FlexGenPlan, p: api.Problem) -> None:
    """Print one plan's windows."""
    n = p.workload.gen_len
    spans, ttft, e2e, peak = traced(plan, p)
    gpu, cpu, disk = endpoints(p.rig, plan.gpu)
    ends = step_ends(spans, gpu, plan.num_gpu_batches)
    print(f"== {name}: {plan}")
    mean = (e2e - ttft) / (n - 1)
    print(
        f"  {plan.block_size * n / e2e:.4f} tok/s, prefill {ttft:.1f} s, decode step {mean:.2f} s on average"
    )
    free = p.rig.node_of(cpu).host_mem_bytes - peak.get(cpu, 0.0)
    middle = n // 2
    for what, (t0, t1) in (
        ("prefill", (0.0, ends[0])),
        (f"decode step {middle}", ends[middle - 1 : middle + 1]),
    ):
        lane: dict[str, float] = defaultdict(float)
        label: dict[tuple[str, str], float] = defaultdict(float)
        for ln, lb, s0, s1, *_ in spans:
            overlap = min(s1, t1) - max(s0, t0)
            if overlap > 0:
                lane[ln] += overlap
                label[(ln, lb)] += overlap
        print(f"  {what}: {t1 - t0:.2f} s")
        for ln in sorted(lane, key=lambda k: -lane[k]):
            parts = ", ".join(f"{lb} {v:.2f}" for (l2, lb), v in sorted(label.items()) if l2 == ln)
            print(f"    {ln:24s} {lane[ln]:9.2f} s  {lane[ln] / (t1 - t0):6.1%}  ({parts})")
        if not disk:
            continue
        moved = disk_bytes(spans, disk, t0, t1)
        for (way, lb), b in sorted(moved.items()):
            print(
                f"    disk {way:5s} {lb:18s} {b / 1e9:9.2f} GB"
                f"  {b / plan.block_size / 1e6:9.2f} MB a sequence"
            )
        if what.startswith("decode") and moved:
            code = code_reads(plan, p, middle)
            print("    FlexGen's code reads: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in code.items()))
            reads = busy(spans, f"{disk}:read", t0, t1)
            read_s = sum(b - a for a, b in reads)
            for other in (f"{gpu}:compute", f"{cpu}:compute", f"{cpu}:beside"):
                both = together(reads, busy(spans, other, t0, t1))
                print(f"    disk read {read_s:.2f} s, with {other} busy {both:.2f} s")
            cycled = sum(b for (way, _), b in moved.items() if way == "read")
            hits = "all hits after the first pass" if cycled <= free else "no hits (LRU)"
            print(
                f"    page cache: {free / 1e9:.1f} GB of host DRAM left free, {cycled / 1e9:.1f} GB read "
                f"from disk per step in a loop: {hits}"
            )


def main(model: str = "opt-175b", rig: str = "flexgen-t4", prompt: str = "512", gen: str = "32") -> None:
    # a decode step is (e2e - prefill) / (GEN - 1): GEN needs two tokens at least
    if not (prompt.isdigit() and int(prompt) > 0 and gen.isdigit() and int(gen) > 1):
        fail(f"PROMPT must be a positive integer and GEN one above 1, got {prompt} {gen}")
    p = api.problem(model, rig, prompt_len=int(prompt), gen_len=int(gen))
    objective = api.check_objective("throughput")
    for name, lossy in (("search", False), ("4-bit search", True)):
        found = search_free_batch(
            get_strategy("flexgen"), p.rig, p.model, p.workload, objective, allow_lossy=lossy
        )
        if found is None:
            print(f"== {name}: no plan fits")
            continue
        plan, batch = found
        report(name, plan, api.problem(model, rig, batch=batch, prompt_len=int(prompt), gen_len=int(gen)))


if __name__ == "__main__":
    if len(sys.argv) > 5:
        fail("usage: flexgen_disk.py [MODEL RIG PROMPT GEN]")
    try:
        main(*sys.argv[1:])
    except InputError as exc:
        fail(exc.line())
