"""Turn microbenchmarks into a hardware profile (a rig YAML that ``load_rig`` reads), and refit its
efficiencies to validate-run reports.

How a small box is described: one CPU entry per rank, each with ``threads`` cores. Ranks that are
slices of one socket share what the slices really share, measured by running the same GEMM and
STREAM on every rank at once (``cpu_sharing``): if co-running ranks together get less than 1.3x
one rank's GEMM rate, they are SMT-like siblings that share one compute stream and the DRAM
("core"); if only their bandwidth falls short of linear (5 % slack), they share the DRAM ("dram"),
at the rate the slowest co-running rank sets for the lockstep group. The all-reduce
between ranks is the measured gloo alpha-beta on an ``shm`` link. Each rank alone gets the full
single-rank rates, so the same profile predicts the one-rank baseline and the multi-rank run.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hetsim.textfiles import write_text_atomic
from validate import microbench as mb

BASE_CPU = "ryzen-7950x"  # catalogue entry every field of which calibrate overrides (Zen family)
# Co-running compute speed-up below this: ranks share cores (SMT siblings get 1.0-1.3x together).
# Separate cores on a shared VM measure 1.5-2.3x here, so the margin keeps the class stable.
SHARING_THRESHOLD = 1.3
INDEPENDENT_FRACTION = 0.95  # co-running bandwidth below this share of linear: ranks share the DRAM
STRAGGLER_MAX = 1.0  # a straggler wait is a share of the compute segment: at most all of it


def _stamp(threads: int, dtypes: tuple[str, ...] | list[str] | None = None) -> str:
    import torch

    day = _dt.date.today().isoformat()
    return (
        f"{platform.node() or 'host'} ({cpu_name()}), {day}, torch {torch.__version__}, "
        f"{threads} thread(s) per rank, {'/'.join(dtypes or MATMUL_DTYPES)}"
    )


def _q(value: Any, source: str, grade: str) -> dict[str, Any]:
    return {"value": value, "source": source, "grade": grade}


def _gbps(x: float) -> str:
    return f"{x / 1e9:.3f} GB/s"


def _gflops(x: float) -> str:
    return f"{x / 1e9:.3f} GFLOPS"


def host_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---- measuring ------------------------------------------------------------------------------------
# GEMV (m = 1) over weight-row lengths n: streaming bandwidth vs row bytes (the n-half fit), per dtype.
GEMV_SHAPES = [
    (4096, 128),
    (4096, 256),
    (4096, 512),
    (2048, 1024),
    (2048, 2048),
    (1024, 4096),
    (1024, 8192),
    (512, 16384),
    (512, 32768),
]
# GEMM over rows m >= 2: FLOP/s vs m (the m-half fit), per dtype, up to a long prompt's rows.
GEMM_ROWS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
GEMM_KN = ((2048, 2048), (2048, 8192))
GEMM_BIG_ROWS = 256  # rows above this run on the first K x N only (compute-bound: one width says it)
MATMUL_DTYPES = ("fp32", "bf16")  # what torch runs a decoder in on a CPU
QUICK_GEMV = [(2048, 256), (1024, 1024), (1024, 4096)]
# --quick's GEMM rows reach a prompt's (128, the validate runs' prefill): a Hockney fit over m <= 32
# alone extrapolates its many-row limit. The H200 host's fp16 (session 19: m_half 38.5 fitted on m =
# 2, 8, 32) booked HeteGen's CPU share 1157 GFLOP/s at 128 rows; the one share timed at 128 rows on
# that host type ran 607 (validate/results/h200/final/split_parts.json, OPT-6.7B fc1).
QUICK_ROWS, QUICK_KN = (2, 8, 32, 128), ((1024, 1024),)
# Attention: prefill over fresh prompts of these lengths (the half-length fit), decode over KV
# caches of these lengths (the KV streaming rate).
PREFILL_SEQS, DECODE_KV = (32, 128, 512, 1024), (256, 1024, 4096)
QUICK_PREFILL_SEQS, QUICK_DECODE_KV = (32, 128), (256, 1024)


SWEEP_PASSES = 3


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time among repeated runs of one shape. Not the fastest: on a busy machine a
    short pass finds a quiet moment far more often than a whole decoder's run does, and the fastest
    passes then predict every decoder ~30% fast (docs/cpu-calibration.md)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def sweep_shapes(quick: bool) -> list[tuple[int, int, int]]:
    gemv, rows, kn = (QUICK_GEMV, QUICK_ROWS, QUICK_KN) if quick else (GEMV_SHAPES, GEMM_ROWS, GEMM_KN)
    gemm = [(m, k, n) for i, (k, n) in enumerate(kn) for m in rows if i == 0 or m <= GEMM_BIG_ROWS]
    return [(1, k, n) for k, n in gemv] + gemm


def measure(
    *,
    threads: int = 1,
    ranks: int = 2,
    quick: bool = False,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every microbenchmark; returns the raw numbers (saved next to the profile)."""
    import torch

    torch.set_num_threads(threads)
    say = progress or (lambda _msg: None)
    # The CUDA runners keep fp16 weights on the host (HeteGen's CPU share multiplies them there).
    dtypes = (*MATMUL_DTYPES, "fp16") if device == "cuda" else MATMUL_DTYPES
    shapes = sweep_shapes(quick)
    raw: dict[str, Any] = {
        "threads": threads, "ranks": ranks, "quick": quick, "cpu": cpu_name(),
        "torch": torch.__version__, "dtypes": list(dtypes),
        "host_cpus": dict(zip(("logical", "physical"), mb.host_cores(), strict=True)),
    }  # fmt: skip
    todo = [(s, dt) for dt in dtypes for s in shapes]
    # Interleaved passes, median per shape: a shared VM's bandwidth drifts by several per cent
    # over seconds, and one pass per shape would bake that drift into the fitted curves.
    passes: list[list[dict[str, Any]]] = []
    for p in range(1 if quick else SWEEP_PASSES):
        passes.append([])
        for s, dt in todo:
            say(f"GEMM {dt} {s[0]}x{s[1]}x{s[2]} (pass {p + 1})")
            passes[-1].append(mb.matmul_rate(*s, dt, quick=quick))
    raw["gemm"] = [_median_run([run[i] for run in passes]) for i in range(len(todo))]
    say("STREAM copy/add")
    raw["stream"] = mb.stream(mb.QUICK_STREAM if quick else mb.WORKING_SET, quick=quick)
    say("per-op overhead (a tiny decoder's step)")
    raw["overhead"] = mb.small_op_overhead(quick=quick)
    raw["decoder_overhead"] = {dt: mb.decoder_step_overhead(dt, quick=quick) for dt in dtypes}
    say("attention (SDPA): prefill lengths, decode KV lengths")
    seqs, kvs = (QUICK_PREFILL_SEQS, QUICK_DECODE_KV) if quick else (PREFILL_SEQS, DECODE_KV)
    raw["attention"] = {
        "prefill": [mb.attention_prefill(s, quick=quick) for s in seqs],
        "decode": [mb.attention_decode(kv, quick=quick) for kv in kvs],
    }
    if ranks > 1:
        say(f"gloo all-reduce and co-running, {ranks} processes")
        raw["multiprocess"] = mb.multiprocess(ranks, threads, quick=quick)
    if device == "cuda":
        say("CUDA copies, GEMM, launch")
        raw["cuda"] = mb.cuda_bench(quick=quick)
    return raw


def fit_half(lengths: list[float], rates: list[float]) -> tuple[float, float]:
    """Hockney's (r_inf, n_half): rate(n) = r_inf * n / (n + n_half), by least squares on
    1 / rate = 1 / r_inf + (n_half / r_inf) / n, relative residuals. Falls back to (best rate, 0)
    when the points show no length dependence (or too few lengths)."""
    n = np.asarray(lengths, dtype=float)
    r = np.asarray(rates, dtype=float)
    if len(set(n.tolist())) < 2:
        return float(r.max()), 0.0
    inv_r, slope = mb.relative_line(1.0 / n, 1.0 / r)
    if inv_r <= 0 or slope <= 0:
        return float(r.max()), 0.0
    return float(1.0 / inv_r), float(slope / inv_r)


def _dtypes(raw: dict[str, Any]) -> list[str]:
    """Dtypes with a GEMV and a GEMM sweep (older sidecars measured bf16 at two points only)."""
    out = []
    for dt in dict.fromkeys(g["dtype"] for g in raw["gemm"]):
        ms = {g["m"] for g in raw["gemm"] if g["dtype"] == dt}
        if dt == "fp32" or (1 in ms and len(ms - {1}) >= 2):
            out.append(dt)
    return out


def _matmul_curve(runs: list[dict[str, Any]]) -> dict[str, float]:
    """One dtype's Hockney curves: GEMV weight streaming vs row bytes, GEMM FLOP/s vs rows."""
    esize = {"fp32": 4, "bf16": 2, "fp16": 2}[runs[0]["dtype"]]
    gemv = [g for g in runs if g["m"] == 1]
    gemm = [g for g in runs if g["m"] > 1]
    stream_inf, row_half = fit_half([g["n"] * esize for g in gemv], [g["weight_bw"] for g in gemv])
    best = max(g["flops"] for g in runs)
    flops_inf, rows_half = (
        fit_half([g["m"] for g in gemm], [g["flops"] for g in gemm]) if gemm else (best, 0.0)
    )
    # the fitted many-row limit may lie just above the largest GEMM run: it is the peak then
    rows = (min(g["m"] for g in gemm), max(g["m"] for g in gemm)) if gemm else (1, 1)
    # The rate at each m run, the geometric mean over the K x N widths run there: what the profile
    # books at those rows (MatmulCurve.rows) instead of Hockney's curve, which misses the measured
    # points and, fitted on few rows, runs far past the largest one.
    by_m: dict[int, list[float]] = {}
    for g in gemm:
        by_m.setdefault(g["m"], []).append(g["flops"])
    points = [(m, float(np.exp(np.mean(np.log(f))))) for m, f in sorted(by_m.items())]
    return {"peak": max(best, flops_inf), "flops_inf": flops_inf, "rows_half": rows_half,
            "stream_inf": stream_inf, "row_half": row_half, "best": best, "rows": rows,
            "points": points}  # fmt: skip


def rows_fit(curve: dict[str, Any]) -> tuple[str, str]:
    """Where a dtype's GEMM curve was fitted (``m = lo..hi``, said in its sources) and the grade of its
    many-row limit: "assumed" where the fitted m_half lies past the largest m measured (the limit, and
    every rate at more rows than were run, is then an extrapolation), else "fitted"."""
    lo, hi = curve["rows"]
    if curve["rows_half"] > hi and curve["flops_inf"] > curve["best"]:
        return f"m = {lo}..{hi}; extrapolated: m_half {curve['rows_half']:.0f} is past m = {hi}", "assumed"
    return f"m = {lo}..{hi}", "fitted"


def _attention_fit(att: dict[str, Any], peak: float, mem_bw: float) -> tuple[float, float, float]:
    """(compute efficiency, query-row half-length, KV streaming efficiency) of SDPA: prefill FLOP/s
    against prompt length (Hockney), decode time against KV bytes (a line: fixed cost + bytes/rate)."""
    if "prefill" not in att:  # an older sidecar: one prefill point
        return min(1.0, att["flops"] / peak), 0.0, 1.0
    pre = att["prefill"]
    flops_inf, half = fit_half([a["seq"] for a in pre], [a["flops"] for a in pre])
    dec = att["decode"]
    _, inv_bw = mb.relative_line([a["bytes"] for a in dec], [a["seconds"] for a in dec])
    kv_bw = 1.0 / inv_bw if inv_bw > 0 else max(a["bytes"] / a["seconds"] for a in dec)
    return min(1.0, flops_inf / peak), half, max(1e-3, min(1.0, kv_bw / mem_bw))


# ---- deriving the profile ---------------------------------------------------------------------------
def derive(raw: dict[str, Any]) -> dict[str, Any]:
    """The numbers the profile needs, from the raw measurements."""
    fp32 = [g for g in raw["gemm"] if g["dtype"] == "fp32"]
    curves = {dt: _matmul_curve([g for g in raw["gemm"] if g["dtype"] == dt]) for dt in _dtypes(raw)}
    c32 = curves["fp32"]
    mem_bw = max(
        [c["stream_inf"] for c in curves.values()] + [raw["stream"]["copy_bw"], raw["stream"]["add_bw"]]
    )
    peak = c32["peak"]
    att_eff, att_half, att_mem = _attention_fit(raw["attention"], peak, mem_bw)
    per_dtype = {dt: o["per_op_s"] for dt, o in raw.get("decoder_overhead", {}).items()}
    over = per_dtype.get("fp32", raw["overhead"]["median"])
    d: dict[str, Any] = {
        "peak_fp32": peak,
        "peak_bf16": curves["bf16"]["peak"] if "bf16" in curves else 0.0,
        "mem_bw": mem_bw,
        "eff_matmul": c32["flops_inf"] / peak,
        "matmul_half_rows": c32["rows_half"],
        "eff_memory": min(1.0, c32["stream_inf"] / mem_bw),
        "stream_half_row_bytes": c32["row_half"],
        "eff_attention": att_eff,
        "attention_half_rows": att_half,
        "attention_memory": att_mem,
        "overhead_s": over,
        "overhead_by_dtype": per_dtype,
        "curves": {
            dt: {**c, "compute": c["flops_inf"] / c["peak"], "memory": min(1.0, c["stream_inf"] / mem_bw)}
            for dt, c in curves.items()
        },
        "sharing": "none",
    }
    mp = raw.get("multiprocess")
    if mp:
        d["alpha_s"], d["beta_bps"] = mb.fit_alpha_beta(mp["allreduce"])
        loops = mp.get("allreduce_in_loop")
        if loops:
            # What an all-reduce adds where TP issues it (behind a GEMV), less its bytes:
            # extra = alpha + straggler x segment, a line through the two GEMV sizes.
            loops = loops if isinstance(loops, list) else [loops]
            seg = np.array([lp["gemv_s"] for lp in loops])
            extra = np.array([lp["both_s"] - lp["gemv_s"] - lp["bytes"] / d["beta_bps"] for lp in loops])
            slope = float(np.polyfit(seg, extra, 1)[0]) if len(loops) > 1 and np.ptp(seg) > 0 else 0.0
            slope = max(0.0, slope)
            d["alpha_isolated_s"] = d["alpha_s"]
            d["alpha_s"] = max(d["alpha_s"], float(np.mean(extra - slope * seg)))
            # A share of the segment lies in [0, 1] (the profile loader's bound); a fit above 1 means
            # the in-loop timings were swamped by other load (seen: 1.43 with --quick on a busy box),
            # so it is clipped and the profile's source says so, rather than written and refused.
            d["straggler"] = min(slope, STRAGGLER_MAX)
            if slope > STRAGGLER_MAX:
                d["straggler_clipped_from"] = slope
        alone = {(g["m"], g["k"], g["n"]): g for g in fp32}
        ranks = mp["corun"]

        def lockstep_scale(pick, rate: str) -> float:
            """What co-running ranks deliver together, in units of one rank alone. A TP group moves
            at its slowest rank's pace, so that rank's rate counts for all of them."""
            shape = pick(ranks[0]["gemm"], key=lambda g: g["m"])
            solo = alone.get((shape["m"], shape["k"], shape["n"])) or mb.matmul_rate(
                shape["m"], shape["k"], shape["n"]
            )
            slowest = min(pick(r["gemm"], key=lambda g: g["m"])[rate] for r in ranks)
            return len(ranks) * slowest / solo[rate]

        # The compute-heavier co-run shape tells whether ranks share cores (SMT siblings); decode's
        # GEMV weight streaming tells whether they share the DRAM (the STREAM co-run stays in the
        # sidecar for reference).
        compute_scale = lockstep_scale(max, "flops")
        memory_scale = lockstep_scale(min, "weight_bw")
        d["compute_scale"], d["memory_scale"] = compute_scale, memory_scale
        if compute_scale < SHARING_THRESHOLD:
            d["sharing"] = "core"
        elif memory_scale < INDEPENDENT_FRACTION * len(ranks):
            d["sharing"] = "dram"
    return d


def rank_cores(raw: dict[str, Any], meas: str) -> tuple[int, str, str]:
    """One rank's cores (value, source, grade): its torch threads, but no more than the physical cores
    the process may run on. Hardware threads of one SMT core share its units, so a profile that reads
    ``cores`` as parallel compute (``packed_unrelay_cost``, ``kernel_cycles``) must not count them
    twice; the logical count stays in the source (and the raw sidecar's ``host_cpus``)."""
    threads = raw["threads"]
    host = raw.get("host_cpus") or {}
    logical, physical = host.get("logical", 0), host.get("physical", 0)
    if not physical:  # an older sidecar, or sysfs silent: the threads, as before
        return threads, f"{meas}: torch threads per rank", "measured"
    where = f"{physical} physical core(s) of {logical} logical CPU(s) (sysfs thread_siblings_list)"
    return min(threads, physical), f"{meas}: torch threads per rank, at most the {where}", "measured"


def _peak_flops(dt: str, curve: dict[str, Any], meas: str, fit: str) -> dict[str, Any]:
    """A dtype's peak FLOP/s: the best GEMM run (measured), or the fitted many-row limit above it
    (fitted; assumed where that limit is extrapolated past the rows run: ``rows_fit``)."""
    if curve["peak"] <= curve["best"]:
        return _q(_gflops(curve["peak"]), f"{meas}: best {dt} torch.matmul over the GEMM sweep", "measured")
    where, grade = rows_fit(curve)
    return _q(_gflops(curve["peak"]), f"{fit}: {dt} GEMM many-row limit (Hockney r_inf over {where})", grade)


def _matmul_entry(dt: str, c: dict[str, Any], meas: str, fit: str) -> dict[str, Any]:
    """A dtype's ``matmul_by_dtype`` entry: its GEMM curve (graded by ``rows_fit``), the measured rates
    that replace it at and between the rows run (``by_rows``; past them Hockney's shape from the nearest),
    and GEMV streaming."""
    where, grade = rows_fit(c)
    by_rows = (
        {"by_rows": {
            "rows": [m for m, _ in c["points"]],
            "compute": [float(f"{r / c['peak']:.5g}") for _, r in c["points"]],
            "source": f"{meas}: {dt} torch.matmul FLOP/s at each m run (geometric mean over the K x N run "
                      f"there) / peak; a power law between them, Hockney's shape past m = {c['rows'][1]}",
            "grade": "measured",
        }}
        if c.get("points") else {}
    )  # fmt: skip
    return {
        "compute": _q(round(c["compute"], 4), f"{fit}: {dt} GEMM many-row rate ({where}) / peak", grade),
        "half_rows": _q(round(c["rows_half"], 3), f"{fit}: {dt} GEMM rows at half rate ({where})", grade),
        "memory": _q(
            round(max(1e-3, c["memory"]), 4),
            f"{fit}: {dt} GEMV weight streaming with long rows / memory_bandwidth",
            "fitted",
        ),
        "stream_half_row": _q(f"{c['row_half']:.0f} B", f"{fit}: {dt} GEMV row bytes at half rate", "fitted"),
        **by_rows,
    }


def build_profile(raw: dict[str, Any], d: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """A rig document: one node, ``ranks`` CPU entries (overrides of a catalogue CPU), an shm link."""
    threads, ranks = raw["threads"], max(1, raw["ranks"])
    stamp = _stamp(threads, raw.get("dtypes", MATMUL_DTYPES))
    meas = f"measured by hetsim calibrate ({stamp})"
    fit = f"fitted by hetsim calibrate ({stamp})"
    rows32, grade32 = rows_fit(d["curves"]["fp32"])
    cpu = {
        "model": BASE_CPU,
        "description": f"{raw['cpu']}: one rank's slice ({threads} thread(s)); numbers from hetsim calibrate",
        "cores": _q(*rank_cores(raw, meas)),
        "peak_flops": {dt: _peak_flops(dt, c, meas, fit) for dt, c in d["curves"].items()},
        "memory_bandwidth": _q(
            _gbps(d["mem_bw"]),
            f"{meas}: max of STREAM copy/add and GEMV weight streaming (long rows, fitted limit)",
            "measured",
        ),
        "memory_channels": _q(1, "assumed: not visible inside a VM; informational only", "assumed"),
        "efficiency": {
            "compute": {
                "matmul": _q(
                    round(d["eff_matmul"], 4),
                    f"{fit}: GEMM rate for many rows (Hockney r_inf over {rows32}) / peak",
                    grade32,
                ),
                "attention": _q(
                    round(d["eff_attention"], 4),
                    f"{fit}: causal SDPA FLOP rate, long prompts (Hockney r_inf over prompt lengths) / peak",
                    "fitted",
                ),
            },
            "attention_half_rows": _q(
                round(d.get("attention_half_rows", 0.0), 3),
                f"{fit}: prompt length at half the long-prompt SDPA rate (Hockney n_half)",
                "fitted",
            ),
            "memory_by_kind": {
                "attention": _q(
                    round(d.get("attention_memory", 1.0), 4),
                    f"{fit}: decode SDPA KV-cache bytes per second (line over KV lengths) / memory_bandwidth",
                    "fitted",
                ),
            },
            "matmul_by_dtype": {dt: _matmul_entry(dt, c, meas, fit) for dt, c in d["curves"].items()},
            "memory": _q(
                round(d["eff_memory"], 4),
                f"{fit}: GEMV weight streaming with long rows / memory_bandwidth",
                "fitted",
            ),
            "matmul_half_rows": _q(
                round(d["matmul_half_rows"], 3),
                f"{fit}: GEMM rows at half the many-row rate (Hockney m_half over {rows32})",
                grade32,
            ),
            "stream_half_row": _q(
                f"{d['stream_half_row_bytes']:.0f} B",
                f"{fit}: weight-row bytes at half the long-row GEMV streaming rate (Hockney n_half)",
                "fitted",
            ),
            "overhead": _q(
                f"{d['overhead_s'] * 1e6:.3f} us",
                f"{meas}: a tiny llama-style fp32 decoder's decode step / the ops hetsim costs for it",
                "measured",
            ),
            "overhead_by_dtype": {
                dt: _q(f"{o * 1e6:.3f} us", f"{meas}: the tiny decoder's step in {dt} / its ops", "measured")
                for dt, o in d.get("overhead_by_dtype", {}).items()
            },
        },
    }
    node: dict[str, Any] = {
        "description": f"{raw['cpu']}, {ranks} rank(s) of {threads} thread(s); cpu_sharing measured",
        "cpus": [copy.deepcopy(cpu) for _ in range(ranks)],
        "host_memory": _q(
            f"{host_memory_bytes() / 2**30:.2f} GiB", f"{meas}: /proc/meminfo MemTotal", "measured"
        ),
    }
    if ranks > 1:
        node["cpu_sharing"] = d["sharing"]
        if d["sharing"] != "none" and "memory_scale" in d:
            node["shared_memory_bandwidth"] = _q(
                _gbps(d["memory_scale"] * d["mem_bw"]),
                f"{meas}: GEMV weight streaming on all ranks at once (x{d['memory_scale']:.2f} of one)",
                "measured",
            )
        if "straggler" in d:
            clipped = d.get("straggler_clipped_from")
            why = (
                f"; the fit gave {clipped:.3f}, clipped to {STRAGGLER_MAX:g} (a share of the segment; "
                "other load on the machine swamped the timings: recalibrate when it is idle)"
                if clipped is not None
                else ""
            )
            node["straggler_fraction"] = _q(
                round(d["straggler"], 4),
                f"{fit}: all-reduce cost behind a GEMV grows by this share of the GEMV's time "
                f"(two GEMV sizes){why}",
                "fitted" if clipped is None else "assumed",
            )
        node["upi"] = {
            "link": "shm",
            "bandwidth": _q(
                _gbps(d["beta_bps"]), f"{fit}: gloo all-reduce alpha-beta least squares", "fitted"
            ),
            "latency": _q(
                f"{d['alpha_s'] * 1e6:.3f} us",
                f"{fit}: gloo all-reduce latency as issued behind a GEMV in a loop "
                f"(back to back: {d.get('alpha_isolated_s', d['alpha_s']) * 1e6:.0f} us)",
                "fitted",
            ),
        }
    if raw.get("cuda"):
        node["gpus"] = [gpu_entry(raw["cuda"], meas, fit)]
    return {
        "name": name or f"calibrated-{platform.node() or 'host'}",
        "description": (
            f"{raw['cpu']} measured by hetsim calibrate. Each CPU entry is one rank; cpu_sharing says what "
            f"co-running ranks share (compute x{d.get('compute_scale', 1):.2f}, "
            f"memory x{d.get('memory_scale', 1):.2f} when all run)."
        ),
        "source": f"hetsim calibrate ({stamp})",
        "nodes": [node],
    }


# Catalogue GPU each device name maps to (first match wins); its datasheet peaks stay, calibrate
# measures how much of them torch reaches.
GPU_BASES = (
    (("h200",), "h200"), (("h100", "pcie"), "h100-pcie"), (("h100",), "h100-sxm"),
    (("a100", "80"), "a100-80g"), (("a100",), "a100-40g"), (("l40s",), "l40s"), (("l4",), "l4"),
    (("a10",), "a10"), (("4090",), "rtx-4090"), (("t4",), "t4"), (("v100",), "v100"),
)  # fmt: skip
FALLBACK_GPU = "h100-sxm"


def gpu_base(device_name: str) -> str:
    low = device_name.lower()
    return next((base for keys, base in GPU_BASES if all(k in low for k in keys)), FALLBACK_GPU)


def _runtime_reserved(cuda: dict[str, Any], meas: str) -> dict[str, Any]:
    """The GPU memory the CUDA context and cuBLAS hold, as measured (sidecars from before it was
    measured have none: the catalogue's assumed reserve stands)."""
    if "runtime_bytes" not in cuda:
        return {}
    context = cuda["context_bytes"] / 2**30
    return {
        "runtime_reserved": _q(
            f"{cuda['runtime_bytes'] / 2**30:.3f} GiB",
            f"{meas}: torch.cuda.mem_get_info total - free after a first cuBLAS GEMM, its tensors freed"
            f" (the context alone: {context:.3f} GiB)",
            "measured",
        )
    }


def gpu_entry(cuda: dict[str, Any], meas: str, fit: str) -> dict[str, Any]:
    """The GPU as a catalogue entry with measured overrides: memory, the share of the datasheet
    FLOP/s and bandwidth that torch reaches, launch cost, GEMM row curve, host copy rates."""
    from hetsim.hardware.catalog import load_catalog

    base = gpu_base(cuda["name"])
    spec = load_catalog().resolve("gpus", base).spec
    peak16 = spec.peak_flops["fp16"].si
    # The compute curve from GEMMs that reuse each weight enough to be compute-bound: a 16-row GEMM
    # runs at the weights' streaming rate (32 TFLOP/s on the H200), which pulled the fitted
    # many-row limit to 99 % of the datasheet where the largest GEMM reached 78 %.
    fp16 = [g for g in cuda["gemm"] if g["dtype"] == "fp16" and g["m"] >= mb.COMPUTE_BOUND_ROWS]
    flops_inf, rows_half = fit_half([g["m"] for g in fp16], [g["flops"] for g in fp16])
    copies = cuda["copies"]
    # The host's time issuing one kernel as the eager decoder issues them (the tiny decoder's cost
    # per op over the kernels its ops launch): the engine lets the host issue ahead of the GPU
    # (hetsim.costs.op_cost), so an op costs max(issue, roofline), not a launch added to it. The
    # tiny add_'s launch (``overhead``, 9.3 us on the H200 host) leaves out the host work between
    # kernels (views, Python, dispatch). Timed as the host issues a step behind a busy GPU
    # (microbench.decoder_step_overhead: steps back to back gave 14.0 and 20.0 us a kernel on two
    # H200 hosts whose Llama-2-7B steps were paced at 10.8 and 9.2).
    decoder = cuda.get("decoder_overhead")
    aside = f"; a tiny fp16 decoder pays {decoder['per_op_s'] * 1e6:.1f} us per costed op" if decoder else ""
    overhead = _q(f"{cuda['launch_s'] * 1e6:.3f} us", f"{meas}: tiny kernel launches{aside}", "measured")
    issue = (
        {"kernel_issue": _q(f"{mb.kernel_issue_s(decoder) * 1e6:.3f} us",
                            f"{meas}: a tiny fp16 decoder's step per kernel it launches (slope over layers;"
                            f" {decoder.get('regime', 'queued steps')})",
                            "measured")}
        if decoder and round(mb.kernel_issue_s(decoder) * 1e6, 3) > 0 else {}  # 0: overhead per op
    )  # fmt: skip
    return {
        "model": base,
        "socket": 0,
        "description": f"{cuda['name']} measured by hetsim calibrate on datasheet {base}",
        "memory": _q(f"{cuda['memory_bytes'] / 2**30:.2f} GiB", f"{meas}: torch total_memory", "measured"),
        **_runtime_reserved(cuda, meas),
        "efficiency": {
            "compute": {
                "matmul": _q(
                    round(min(1.0, flops_inf / peak16), 4),
                    f"{fit}: fp16 GEMM many-row rate (m >= {mb.COMPUTE_BOUND_ROWS}) / datasheet fp16 peak",
                    "fitted",
                ),
            },
            "memory": _q(
                round(min(1.0, cuda["mem_bw"] / spec.memory_bandwidth.si), 4),
                f"{meas}: device-to-device copy / datasheet bandwidth",
                "measured",
            ),
            "overhead": overhead,
            **issue,
            "matmul_half_rows": _q(
                round(rows_half, 3),
                f"{fit}: fp16 GEMM rows at half rate (m >= {mb.COMPUTE_BOUND_ROWS})",
                "fitted",
            ),
        },
        "host_link": {
            "link": spec.host_interface,
            "bandwidth": _q(
                _gbps(copies["h2d_pinned"]), f"{meas}: host-to-device from pinned memory", "measured"
            ),
            "pageable_bandwidth": _q(
                _gbps(copies["h2d_pageable"]), f"{meas}: host-to-device from pageable memory", "measured"
            ),
        },
    }


def write_profile(doc: dict[str, Any], raw: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, yaml.safe_dump(doc, sort_keys=False, width=110))
    write_text_atomic(out.with_suffix(".microbench.json"), json.dumps(raw, indent=1))
    return out


# ---- refitting to validate runs ---------------------------------------------------------------------
def fit_runs(
    profile: str | Path, reports: list[str | Path], out: str | Path | None = None
) -> dict[str, float]:
    """Least-squares refit to measured step times of validate reports that used this profile's
    device: op overhead, 1/eff(matmul), 1/eff(attention), 1/eff(memory) and, from multi-rank runs,
    the collective latency as TP issues it (linear once each op's bound is fixed; bounds are
    re-assigned from the current fit and the solve repeated). The half-performance lengths, the
    straggler share and the DRAM sharing stay as calibrated."""
    from hetsim.hardware import load_rig

    rig = load_rig(profile)
    dev = next(iter(rig.cpus()))
    node = rig.nodes[dev.node]
    link = rig.links[next(iter(rig.links))] if rig.links else None
    steps = [s for rep in reports for s in _report_steps(Path(rep), node, link)]
    if len(steps) < 4:
        raise ValueError(f"need at least 2 runs (4 step times) to fit, got {len(steps) // 2}")
    eff = dev.efficiency
    x = np.array([eff.overhead_s, 1 / eff.compute["matmul"], 1 / eff.compute["attention"], 1 / eff.memory,
                  link.latency_s if link else 0.0])  # fmt: skip
    for _ in range(5):
        rows, target = [], []
        for step in steps:
            f, rest = _step_features(step, dev, x)
            t = step.measured
            rows.append(f / t)
            target.append((t - rest) / t)  # relative residuals: every step counts the same
        a, y = np.array(rows), np.array(target)
        # Fit only what the runs can tell apart: a term under 5 % of the measured time (attention at
        # short prompts, say) would otherwise soak up noise and come out absurd; it keeps its prior.
        used = (a * x).mean(axis=0) >= 0.05
        used[4] = bool((a[:, 4] > 0).any())  # the collective latency: whenever multi-rank runs exist
        sol, *_ = np.linalg.lstsq(a[:, used], y, rcond=None)
        new = x.copy()
        new[used] = sol
        new[0], new[4] = max(new[0], 0.0), max(new[4], 0.0)
        # Real runs may beat the microbenchmarks (>100 % "efficiency"): kept here, folded into the
        # profile's peak rates on writing. The floor only stops a noisy fit from going non-physical.
        new[1:4] = np.maximum(new[1:4], 0.5)
        if np.allclose(new, x, rtol=1e-6):
            break
        x = new
    fitted = {
        "overhead_s": float(x[0]),
        "matmul": float(1 / x[1]),
        "attention": float(1 / x[2]),
        "memory": float(1 / x[3]),
        "collective_latency_s": float(x[4]),
    }
    if out is not None:
        _write_fitted(profile, fitted, [str(r) for r in reports], len(steps), out)
    return fitted


@dataclass(frozen=True)
class _Step:
    ops: tuple  # one rank's ops (every rank's, when ranks share one compute stream)
    measured: float  # seconds
    collectives: int  # latency-bound collectives in the step
    bytes_s: float  # their bandwidth terms
    stretch: float  # 1 + straggler share (multi-rank)
    dram_share: float  # the share of one rank's bandwidth it gets with the others streaming


def _report_steps(path: Path, node, link) -> list[_Step]:
    from hetsim.models.sharding import embed_ops, head_ops, layer_blocks
    from hetsim.strategies.cpu_tp import ALLREDUCE_BYTES, TOKEN_PAIR_BYTES
    from validate.report_file import cpu_runs

    beta = link.bw if link else 1.0
    out = []
    for run in cpu_runs(path):  # checked: a malformed run is one line naming the file and runs[i]
        spec, world, plan = run.spec, run.world, run.plan
        b, p, gen_len = run.workload.batch, run.workload.prompt_len, run.workload.gen_len
        ttft, tpot = run.ttft_s, run.tpot_s
        wd, kd, ad = plan.weight_dtype, plan.kv_dtype, plan.act_dtype
        reduce_bytes = ALLREDUCE_BYTES[plan.allreduce_dtype] if world > 1 else 0.0
        serial = world if node.cpu_sharing == "core" else 1
        shared = node.cpu_sharing != "none" and node.shared_dram_bw > 0 and world > 1
        mid = max(1, (gen_len - 1) // 2)
        for phase, seq, kv, measured in (("prefill", p, p, ttft), ("decode", 1, p + mid, tpot)):
            blk = layer_blocks(spec, phase, b, seq, kv, world, wd, kd, ad)
            ops = (*embed_ops(spec, b, seq, wd, ad), *(blk.whole * spec.layers),
                   *head_ops(spec, phase, b, seq, world, wd, ad))  # fmt: skip
            n_coll, bytes_s = 0, 0.0
            if world > 1:  # two all-reduces per layer, then the top-1 gather ((world - 1) hops)
                msg = b * seq * spec.hidden * reduce_bytes
                n_coll = 2 * spec.layers + world - 1
                bytes_s = 2 * spec.layers * msg / beta + (world - 1) * TOKEN_PAIR_BYTES * b / beta
            out.append(_Step(
                ops=ops * serial, measured=measured, collectives=n_coll, bytes_s=bytes_s,
                stretch=1.0 + (node.straggler_fraction if world > 1 else 0.0),
                dram_share=node.shared_dram_bw / world if shared else 0.0,
            ))  # fmt: skip
    return out


def _step_features(step: _Step, dev, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients of x (per op count, FLOP-time, byte-time, collective count) and the fixed rest."""
    from hetsim.costs.op_cost import op_cost

    eff, peak = dev.efficiency, dev.flops("fp32")
    bw = dev.mem_bw if step.dram_share <= 0 else min(dev.mem_bw, step.dram_share / eff.memory)
    f, rest = np.zeros(5), 0.0
    for op in step.ops:
        f[0] += 1
        kind = op.kind.value
        # the half-performance lengths stay as calibrated; the fit scales the rates they shape
        c_peak, m_bw = peak, bw
        if kind == "matmul":
            c_peak *= eff.matmul_compute(op.rows) / eff.compute_for("matmul")
            m_bw *= eff.matmul_memory(op.weight_row_bytes) / eff.memory
        mem = op.mem_bytes / m_bw * x[3]
        if kind in ("matmul", "attention"):
            if op.flops / c_peak * (x[1] if kind == "matmul" else x[2]) >= mem:
                f[1 if kind == "matmul" else 2] += op.flops / c_peak
                continue
            f[3] += op.mem_bytes / m_bw
        else:
            c = op_cost(dev, op)
            if c.compute_s >= c.memory_s:
                rest += c.compute_s
            else:
                f[3] += op.mem_bytes / bw
    f[:4] *= step.stretch
    f[4] = step.collectives
    return f, rest * step.stretch + step.bytes_s


def _scale_quantity(text: str, factor: float) -> str:
    """'22.9 GB/s' x 1.05 -> '24.045 GB/s' (the unit strings calibrate writes)."""
    value, unit = str(text).split(maxsplit=1)
    return f"{float(value) * factor:.3f} {unit}"


def _write_fitted(profile: str | Path, fitted: dict[str, float], reports: list[str], n: int, out) -> None:
    doc = yaml.safe_load(Path(profile).read_text())
    day = _dt.date.today().isoformat()
    src = f"fitted by hetsim calibrate --fit to {n} measured step times ({', '.join(reports)}), {day}"
    # An efficiency above 1 means the runs reached more than the microbenchmarks' peak: the peak
    # moves up by that factor (fitted) and the efficiencies are re-expressed against it.
    flops_up = max(1.0, fitted["matmul"], fitted["attention"])
    bw_up = max(1.0, fitted["memory"])
    for cpu in doc["nodes"][0]["cpus"]:
        e = cpu.setdefault("efficiency", {})
        e.setdefault("compute", {})
        e["compute"]["matmul"] = _q(round(float(fitted["matmul"] / flops_up), 4), src, "fitted")
        e["compute"]["attention"] = _q(round(float(fitted["attention"] / flops_up), 4), src, "fitted")
        e["memory"] = _q(round(float(fitted["memory"] / bw_up), 4), src, "fitted")
        if flops_up > 1.0:
            peak = _scale_quantity(cpu["peak_flops"]["fp32"]["value"], flops_up)
            cpu["peak_flops"]["fp32"] = _q(
                peak, f"{src}: x{flops_up:.3f} of the microbenchmark peak", "fitted"
            )
        if bw_up > 1.0:
            bw = _scale_quantity(cpu["memory_bandwidth"]["value"], bw_up)
            cpu["memory_bandwidth"] = _q(bw, f"{src}: x{bw_up:.3f} of the microbenchmark rate", "fitted")
        e["overhead"] = _q(f"{fitted['overhead_s'] * 1e6:.3f} us", src, "fitted")
    upi = doc["nodes"][0].get("upi")
    if upi is not None and fitted.get("collective_latency_s", 0.0) > 0:
        upi["latency"] = _q(f"{fitted['collective_latency_s'] * 1e6:.3f} us", src, "fitted")
    write_text_atomic(out, yaml.safe_dump(doc, sort_keys=False, width=110))
