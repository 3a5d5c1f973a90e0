"""Time one HeteGen split module part by part on this host and GPU, beside what hetsim books.

The recorded HeteGen runs on the H200 host (``validate/results/h200/after/hetegen-*.json``) decode
1.7-2.1x slower than hetsim predicts, and each split module is ~1.3-1.7 ms over its booking in
both phases. This separates the runner's split module (``validate.offload.split_matmul``) into
its parts, each timed alone and then together, so that the part that is off shows:

- ``cpu_dram``: the CPU share's matmul in the main thread, rotating over as many distinct weight
  copies as the plan splits (and at least ``--rotate-gib`` of them): read from DRAM, as in a run;
- ``cpu_cached``: the same matmul on one copy again and again (cache-resident where the share fits
  the last-level cache, as calibrate's 2 x 8 MiB GEMV weights do on a 300 MiB L3);
- ``cpu_pool``: ``cpu_dram`` submitted to a one-thread pool, as the runner does;
- ``h2d`` / ``h2d_cached``: the GPU share's pinned copy alone (rotating / one copy);
- ``both``: the CPU share on the pool and the pinned copy on a side stream at once (``both_cpu``:
  when the CPU share ended, ``both_h2d``: when the copy ended, from the same start);
- ``x_d2h``, ``y_h2d``, ``cat``: the activation's trip to the host and the partial output's trip
  back, through pinned buffers as the runner stages them (``x_d2h_pageable`` / ``y_h2d_pageable``:
  the same from pageable memory, as the runner copied before session 20), the join;
- ``runner``: ``split_matmul`` itself, rotating, synchronised after each module (a split module
  ends at a barrier);
- ``dram_copy`` / ``cached_copy``: host memcpy rates over 1 GiB (far above an LLC) and over
  calibrate's 64 MiB STREAM arrays.

hetsim's side comes from the profile: the CPU share's ``op_cost``, the copy's route time, and a lone
split module in the engine (``measure_split``: both paths with the DRAM they share, the round trip and
the barrier). ``python -m validate.split_parts`` (defaults: the OPT-6.7B run's fc1 on the H200
profile) prints one table per phase; ``--out FILE.json`` keeps the numbers. ``--device cpu`` runs
the same code with the "GPU" on the host (no copies), for tests; ``--scale`` shrinks the module.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hetsim.textfiles import write_text_atomic

REPORT = "validate/results/h200/after/hetegen-opt-6.7b.json"
PROFILE = "validate/results/h200/after/gpu-10g.yaml"


def _median_pass(fn, n: int, reps: int, sync) -> float:
    """Median over ``reps`` passes of seconds per call, a pass being ``fn(i)`` for i in range(n)
    with ``sync()`` after each call (a split module ends at a barrier); one pass warms up first."""
    out = []
    for r in range(reps + 1):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
            sync()
        if r:
            out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def booked(profile: str, report: dict[str, Any], module: str, phase: str, scale: float = 1.0) -> dict:
    """What hetsim books for one ``module`` split of the recorded run in ``phase`` (seconds), and the
    module's shape: rows, in/out features, the plan's alpha and how many such modules a step splits."""
    import dataclasses

    from hetsim.costs.op_cost import op_cost
    from hetsim.hardware import load_rig
    from hetsim.models.spec import ModelSpec
    from hetsim.strategies.hetegen import LM_HEAD, measure_split, module_ops, split_module

    run = report["runs"][0]
    plan, w = run["plan"], run["workload"]
    spec = ModelSpec(**run["model"])
    if scale != 1.0:  # a smaller model of the same family (tests): every width scaled alike
        spec = dataclasses.replace(
            spec,
            hidden=max(8, round(spec.hidden * scale)),
            intermediate=max(8, round(spec.intermediate * scale)),
            vocab=max(8, round(spec.vocab * scale)),
            heads=max(1, round(spec.heads * scale)),
            kv_heads=max(1, round(spec.kv_heads * scale)),
        )
    seq = 1 if phase == "decode" else int(w["prompt_len"])
    op = module_ops(spec, phase, int(w["batch"]), seq, plan.get("weight_dtype", "fp16"))[module]
    alpha = float(plan[f"alpha_{phase}"].get(module, 0.0))
    cpu_dtype = plan.get("cpu_dtype", "fp16")
    rig = load_rig(profile)
    gpu, cpu = plan["gpu"], plan["cpu"]
    sm = split_module(op, alpha, cpu_dtype)
    esize = 2 if op.compute_dtype in ("fp16", "bf16") else 4
    rows = int(op.rows)
    layers = 1 if module == LM_HEAD else spec.layers
    total, cpu_end, gpu_end = measure_split(
        rig, gpu, cpu, op, alpha, float(plan.get("split_sync_s", 0.0)), cpu_dtype
    )
    return {
        "rows": rows,
        "k": round(op.act_in_bytes / (rows * esize)),
        "n": round(op.act_out_bytes / (rows * esize)),
        "alpha": alpha,
        "split_modules_per_step": layers - int(plan.get("resident", {}).get(module, 0)),
        "cpu_s": op_cost(rig.devices[cpu], sm.cpu_part).time_s if sm.cpu_part is not None else 0.0,
        "h2d_s": rig.route(cpu, gpu).time(sm.weight_bytes),
        "gpu_gemm_s": op_cost(rig.devices[gpu], sm.gpu_part).time_s if sm.gpu_part is not None else 0.0,
        "x_d2h_s": rig.route(gpu, cpu).time(op.act_in_bytes),
        "y_h2d_s": rig.route(cpu, gpu).time(sm.out_bytes),
        "module_s": total,
        "module_cpu_end_s": cpu_end,
        "module_gpu_end_s": gpu_end,
    }


def recorded(report: dict[str, Any], profile: str) -> dict[str, float]:
    """The recorded run's TTFT and TPOT, measured and as hetsim predicts its plan on ``profile``."""
    from hetsim.models.spec import ModelSpec
    from hetsim.strategies.base import get_strategy
    from hetsim.workload import Workload
    from validate.report import predict_plan

    run = report["runs"][0]
    w = run["workload"]
    plan = get_strategy("hetegen").plan_from_dict(run["plan"])
    workload = Workload(w["batch"], w["prompt_len"], w["gen_len"])
    p = predict_plan(profile, "hetegen", plan, ModelSpec(**run["model"]), workload)
    m = run["measured"]
    return {
        "ttft_s": m["ttft_s"],
        "tpot_s": m["tpot_s"],
        "ttft_pred_s": p["ttft_s"],
        "tpot_pred_s": p["tpot_s"],
    }


def measure(
    rows: int, k: int, n: int, alpha: float, copies: int, *, device: str = "cuda", reps: int = 5
) -> dict[str, float]:
    """Each part of one split module (x (rows, k) @ w (k, n), the GPU share ``alpha``), seconds."""
    import torch

    from validate.offload import Staging, _Split, split_matmul

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    cols = round(alpha * n)
    splits = []
    # one random weight, copied: the copies hold the same values in distinct memory (a rotation
    # through them reads DRAM as a step's modules do; timing does not depend on the values)
    base = (torch.rand(k, n, generator=gen, dtype=torch.float32) * 0.04 - 0.02).half()
    for _ in range(copies):  # as HeteGenRun._place: the GPU share pinned, the CPU share plain
        src = base[:, :cols].contiguous()
        splits.append(_Split(cols, src.pin_memory() if cuda else src, base[:, cols:].contiguous(), None))
    del base
    x = (torch.rand(rows, k, generator=gen) - 0.5).half().to(dev)
    x_host = x.cpu()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hetegen-cpu")
    stream = torch.cuda.Stream() if cuda else None
    staging = Staging(pin=cuda)  # the runner's pinned buffers, one set for every module
    out: dict[str, float] = {
        "copies": copies,
        "threads_main": torch.get_num_threads(),
        "threads_pool": pool.submit(torch.get_num_threads).result(),
    }
    cpu_cols = n - cols
    with torch.inference_mode():
        # calibrate's quick GEMV (1 x 1024 @ 1024 x 4096, two copies): the profile's long-row rate
        cal = [torch.rand(1024, 4096, generator=gen).half() for _ in range(2)]
        a = x_host[:1, :1024] if k >= 1024 else torch.rand(1, 1024, generator=gen).half()
        t_cal = _median_pass(lambda i: a @ cal[i % 2], 2, reps, lambda: None)
        out["cpu_calibrate_shape_bw"] = 1024 * 4096 * 2 / t_cal
        if cpu_cols:
            out["cpu_dram_s"] = _median_pass(
                lambda i: x_host @ splits[i].cpu_part, copies, reps, lambda: None
            )
            out["cpu_cached_s"] = _median_pass(
                lambda i: x_host @ splits[0].cpu_part, copies, reps, lambda: None
            )
            out["cpu_pool_s"] = _median_pass(
                lambda i: pool.submit(torch.matmul, x_host, splits[i].cpu_part).result(),
                copies,
                reps,
                lambda: None,
            )
            part = x_host @ splits[0].cpu_part
            x_pin = staging.get("x", tuple(x.shape), x.dtype)
            y_pin = staging.get("y", tuple(part.shape), part.dtype).copy_(part)
            out["x_d2h_s"] = _median_pass(lambda i: x_pin.copy_(x, non_blocking=cuda), copies, reps, sync)
            out["y_h2d_s"] = _median_pass(lambda i: y_pin.to(dev, non_blocking=cuda), copies, reps, sync)
            out["x_d2h_pageable_s"] = _median_pass(lambda i: x.to("cpu"), copies, reps, sync)
            out["y_h2d_pageable_s"] = _median_pass(
                lambda i: part.to(dev, non_blocking=cuda), copies, reps, sync
            )
        if cols and cuda:
            assert stream is not None
            dst = torch.empty(k, cols, dtype=torch.float16, device=dev)

            def h2d(i: int, src: int | None = None) -> None:
                with torch.cuda.stream(stream):
                    dst.copy_(splits[i if src is None else src].gpu_src, non_blocking=True)
                stream.synchronize()

            out["h2d_s"] = _median_pass(h2d, copies, reps, sync)
            out["h2d_cached_s"] = _median_pass(lambda i: h2d(i, 0), copies, reps, sync)
            if cpu_cols:
                ends: dict[str, list[float]] = {"cpu": [], "h2d": [], "both": []}

                def both(i: int) -> None:
                    sp = splits[i]
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    t0 = time.perf_counter()

                    def cpu_share() -> float:
                        torch.matmul(x_host, sp.cpu_part)
                        return time.perf_counter()

                    fut = pool.submit(cpu_share)
                    with torch.cuda.stream(stream):
                        start.record(stream)
                        dst.copy_(sp.gpu_src, non_blocking=True)
                        end.record(stream)
                    # as the runner: the main thread sleeps on the CPU share first (a CUDA wait may
                    # spin on a core the CPU share's threads need), then reads the copy's own time
                    t_cpu = fut.result() - t0
                    end.synchronize()
                    t_h2d = start.elapsed_time(end) / 1e3  # the copy stream was idle: it began at issue
                    ends["cpu"].append(t_cpu)
                    ends["h2d"].append(t_h2d)
                    ends["both"].append(max(t_cpu, t_h2d))

                _median_pass(both, copies, reps, sync)
                for key, vals in ends.items():
                    tail = vals[copies:]  # after the warm-up pass
                    out[f"both_{key}_s" if key != "both" else "both_s"] = statistics.median(tail)
            del dst
        if cols and cpu_cols:
            g = x @ (splits[0].gpu_src.to(dev))
            c = (x_host @ splits[0].cpu_part).to(dev)
            out["cat_s"] = _median_pass(lambda i: torch.cat([g, c], dim=-1), copies, reps, sync)
        out["runner_s"] = _median_pass(
            lambda i: split_matmul(x, splits[i], pool, dev, stream, staging), copies, reps, sync
        )
        # the result is the module's: the runner's split equals the whole matmul
        i = copies - 1
        whole = torch.cat([splits[i].gpu_src, splits[i].cpu_part], dim=-1).to(dev)
        got = split_matmul(x, splits[i], pool, dev, stream, staging)
        out["max_abs_diff"] = float((got.float() - (x @ whole).float()).abs().max())
    pool.shutdown()
    return out


def host_copy(nbytes: int, reps: int = 5) -> float:
    """Host memcpy bytes per second (read + write) over ``nbytes`` buffers."""
    import torch

    a = torch.ones(nbytes, dtype=torch.uint8)
    b = torch.empty_like(a)
    return 2 * nbytes / _median_pass(lambda i: b.copy_(a), 1, reps, lambda: None)


def run(
    report_path: str,
    profile: str,
    module: str,
    *,
    device: str = "cuda",
    rotate_gib: float = 2.0,
    scale: float = 1.0,
    phases: tuple[str, ...] = ("decode", "prefill"),
    host_copy_mib: tuple[int, int] = (1024, 64),
    reps: int = 5,
) -> dict[str, Any]:
    import torch

    report = json.loads(Path(report_path).read_text())
    doc: dict[str, Any] = {
        "host": platform.node(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "report": report_path,
        "profile": profile,
        "module": module,
        "host_copy_bw": {f"{mib}MiB": host_copy(mib * 2**20, reps) for mib in host_copy_mib},
        "phases": {},
    }
    doc["recorded"] = recorded(report, profile) if scale == 1.0 else None
    for phase in phases:
        b = booked(profile, report, module, phase, scale)
        module_bytes = b["k"] * b["n"] * 2
        copies = max(b["split_modules_per_step"], math.ceil(rotate_gib * 2**30 / module_bytes))
        m = measure(b["rows"], b["k"], b["n"], b["alpha"], copies, device=device, reps=reps)
        doc["phases"][phase] = {"booked": b, "measured": m}
    return doc


ROWS = [  # (label, measured key, booked key)
    ("CPU share, DRAM (main thread)", "cpu_dram_s", "cpu_s"),
    ("CPU share, cached (one copy)", "cpu_cached_s", "cpu_s"),
    ("CPU share on the pool thread", "cpu_pool_s", "cpu_s"),
    ("pinned H2D of the GPU share", "h2d_s", "h2d_s"),
    ("pinned H2D, one copy", "h2d_cached_s", "h2d_s"),
    ("both at once: CPU share ends", "both_cpu_s", "module_cpu_end_s"),
    ("both at once: H2D ends", "both_h2d_s", "module_gpu_end_s"),
    ("both at once", "both_s", None),
    ("x to the host (pinned D2H, the runner's)", "x_d2h_s", "x_d2h_s"),
    ("CPU output back (pinned H2D, the runner's)", "y_h2d_s", "y_h2d_s"),
    ("x to the host, pageable", "x_d2h_pageable_s", "x_d2h_s"),
    ("CPU output back, pageable", "y_h2d_pageable_s", "y_h2d_s"),
    ("cat", "cat_s", None),
    ("the runner's split module", "runner_s", "module_s"),
]


def table(doc: dict[str, Any]) -> str:
    rates = ", ".join(f"{size} {bw / 1e9:.1f} GB/s" for size, bw in doc["host_copy_bw"].items())
    lines = [f"host memcpy (read + write): {rates}"]
    if rec := doc.get("recorded"):
        lines.append(
            f"recorded run: TTFT {rec['ttft_s'] * 1e3:.1f} ms (hetsim {rec['ttft_pred_s'] * 1e3:.1f}), "
            f"TPOT {rec['tpot_s'] * 1e3:.1f} ms (hetsim {rec['tpot_pred_s'] * 1e3:.1f}): a step is "
            f"{(rec['ttft_s'] - rec['ttft_pred_s']) * 1e3:+.1f} / "
            f"{(rec['tpot_s'] - rec['tpot_pred_s']) * 1e3:+.1f} ms over hetsim (prefill / decode)"
        )
    for phase, d in doc["phases"].items():
        b, m = d["booked"], d["measured"]
        lines.append(
            f"\n{doc['module']} {phase}: rows {b['rows']}, {b['k']} x {b['n']}, alpha {b['alpha']:.4f}, "
            f"{b['split_modules_per_step']} split per step; {m['copies']} copies rotated; torch threads "
            f"main {m['threads_main']}, pool {m['threads_pool']}; calibrate's fp16 GEMV shape "
            f"{m['cpu_calibrate_shape_bw'] / 1e9:.1f} GB/s"
        )
        lines.append("| part | measured ms | hetsim books ms | measured / booked |")
        lines.append("|---|---|---|---|")
        for label, mk, bk in ROWS:
            if mk not in m:
                continue
            ref = b.get(bk) if bk else None
            ratio = f"{m[mk] / ref:.2f}" if ref else "-"
            lines.append(f"| {label} | {m[mk] * 1e3:.3f} | {ref * 1e3:.3f} | {ratio} |" if ref else
                         f"| {label} | {m[mk] * 1e3:.3f} | - | - |")  # fmt: skip
        extra = (m["runner_s"] - b["module_s"]) * b["split_modules_per_step"]
        lines.append(
            f"per step: {b['split_modules_per_step']} x (runner - booked) = {extra * 1e3:+.1f} ms "
            f"(max |split - whole| {m['max_abs_diff']:.2g})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", default=REPORT, help="a validate report of a hetegen run (its plan)")
    ap.add_argument("--hw", default=PROFILE, help="the profile hetsim predicted the run on")
    ap.add_argument("--module", default="fc1", help="module kind (fc1, up_proj, lm_head, ...)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--rotate-gib", type=float, default=2.0, help="distinct weights rotated, GiB (>> LLC)")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the model's widths (tests)")
    ap.add_argument("--phases", default="decode,prefill")
    ap.add_argument("--reps", type=int, default=5, help="timed passes per part (median)")
    ap.add_argument("--out", help="write the numbers as JSON")
    a = ap.parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("validate.split_parts: --device cuda needs CUDA (torch.cuda.is_available() is False)")
        return 2
    phases = tuple(p for p in a.phases.split(",") if p)
    mib = (1024, 64) if a.scale == 1.0 else (8, 1)
    doc = run(a.report, a.hw, a.module, device=a.device, rotate_gib=a.rotate_gib, scale=a.scale,
              phases=phases, host_copy_mib=mib, reps=a.reps)  # fmt: skip
    print(table(doc))
    if a.out:
        write_text_atomic(a.out, json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
