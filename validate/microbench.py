"""torch microbenchmarks of the machine hetsim simulates: GEMM/GEMV rates, DRAM bandwidth, the fixed
cost of a small op, gloo all-reduce latency/bandwidth, and (with CUDA) copies, GEMM and launch cost.

Weights in the GEMM/GEMV benchmarks rotate through a working set several times the last-level
cache, as an LLM's layers do, so the rates are DRAM rates, not cache rates. Every function returns
plain dicts (JSON-able) and takes the thread count explicitly.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hetsim.textfiles import write_text_atomic

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def llc_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest cache one core sees (Linux sysfs), 0 where unknown."""
    best = 0
    for path in root.glob("index*/size"):
        text = path.read_text().strip()  # e.g. "32768K"
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * scale)
    return best


def host_cores(
    root: Path = Path("/sys/devices/system/cpu"), cpus: Iterable[int] | None = None
) -> tuple[int, int]:
    """(logical CPUs, physical cores) this process may run on: ``cpus`` (default its affinity set)
    and the cores they sit on, counted by distinct sysfs ``topology/thread_siblings_list`` (an SMT
    core's hardware threads list each other). Physical is 0 where sysfs does not say for every CPU.
    A guest sees what its hypervisor exposes: vCPUs shown as one thread per core count as cores."""
    if cpus is None:  # no affinity call off Linux: every CPU (and no sysfs there, so physical 0)
        affinity = getattr(os, "sched_getaffinity", None)
        cpus = affinity(0) if affinity else range(os.cpu_count() or 1)
    usable = sorted(cpus)
    siblings: set[frozenset[int]] = set()
    for cpu in usable:
        try:
            group = _cpu_list((root / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text())
        except (OSError, ValueError):
            return len(usable), 0
        if cpu not in group:  # empty, or not this CPU's core: sysfs says nothing we can use
            return len(usable), 0
        siblings.add(group)
    return len(usable), len(siblings)


def _cpu_list(text: str) -> frozenset[int]:
    """A sysfs CPU list (``0-3,8,10-11``) as a set; ValueError if it is not one."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


# Bytes of rotating weights (and STREAM arrays): several times the LLC, so the rates are DRAM's.
# 256 MiB fit an Emerald Rapids socket's 300 MiB L3 (the H200 host's): 4x the LLC where larger.
WORKING_SET = max(256 * 2**20, 4 * llc_bytes())
QUICK_STREAM = max(64 * 2**20, 2 * llc_bytes())  # --quick's STREAM arrays, still past the LLC
# From this many rows a GEMM reuses each weight enough to be compute-bound: two rotating copies keep
# it out of the cache without making one timed call take seconds.
COMPUTE_BOUND_ROWS = 64


def _dt(name: str):
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def timeit(fn: Callable[[], Any], *, min_time: float = 0.05, reps: int = 3, sync=None) -> float:
    """Median seconds per call over ``reps`` batches of calls lasting at least ``min_time`` each."""
    sync = sync or (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(min_time / one))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def matmul_rate(m: int, k: int, n: int, dtype: str = "fp32", *, device: str = "cpu", quick: bool = False):
    """FLOP/s and weight-streaming bytes/s of (m x k) @ (k x n) with weights rotating through DRAM."""
    import torch

    dt = _dt(dtype)
    esize = torch.empty((), dtype=dt).element_size()
    # Enough copies to rotate through the whole working set: at most 16 (as was) put a 2-16 MiB GEMV's
    # rotation at 32-256 MiB, inside the H200 host's 300 MiB L3 (its fp32 GEMV read 107 GB/s, above
    # the 87 GB/s 16 threads read from DRAM: dram_read.log).
    copies = 1 if device != "cpu" else max(2, -(-WORKING_SET // max(1, k * n * esize)))
    if m >= COMPUTE_BOUND_ROWS:  # quick too: two copies of a small GEMV's weights sit in a large L3
        copies = min(copies, 2)
    ws = [torch.empty(k, n, dtype=dt, device=device).uniform_(-0.02, 0.02) for _ in range(copies)]
    a = torch.empty(m, k, dtype=dt, device=device).uniform_(-1, 1)
    sync = torch.cuda.synchronize if device != "cpu" else None

    def run() -> None:
        for w in ws:
            a @ w

    t = timeit(run, min_time=0.02 if quick else 0.1, reps=2 if quick else 3, sync=sync) / copies
    return {
        "m": m,
        "k": k,
        "n": n,
        "dtype": dtype,
        "seconds": t,
        "flops": 2.0 * m * k * n / t,
        "weight_bw": k * n * esize / t,
    }


def stream(nbytes: int = WORKING_SET, *, quick: bool = False) -> dict[str, float]:
    """STREAM-like copy (2 x bytes moved) and add (3 x) in fp32 over arrays far larger than the LLC."""
    import torch

    n = nbytes // 4
    x = torch.empty(n).uniform_(0, 1)
    y = torch.empty(n).uniform_(0, 1)
    z = torch.empty(n)
    kw = {"min_time": 0.02 if quick else 0.1, "reps": 2 if quick else 3}
    copy = timeit(lambda: z.copy_(x), **kw)
    add = timeit(lambda: torch.add(x, y, out=z), **kw)
    return {"copy_bw": 2 * nbytes / copy, "add_bw": 3 * nbytes / add, "bytes": float(nbytes)}


def small_op_overhead(*, quick: bool = False) -> dict[str, float]:
    """Fixed cost of a tiny op: dispatch, allocation, threading — what every op pays."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(1, 64)
    w = torch.randn(64, 64)
    g = torch.ones(64)
    kw = {"min_time": 0.01 if quick else 0.05, "reps": 3}
    ops = {
        "add": timeit(lambda: x + x, **kw),
        "matmul": timeit(lambda: x @ w, **kw),
        "rms_norm": timeit(lambda: F.rms_norm(x, (64,), g), **kw),
        "silu_mul": timeit(lambda: F.silu(x) * x, **kw),
    }
    return {**ops, "median": statistics.median(ops.values())}


def attention_prefill(
    seq: int, dtype: str = "fp32", *, heads: int = 16, head_dim: int = 128, quick: bool = False
) -> dict[str, float]:
    """Causal SDPA over a fresh prompt of ``seq`` tokens (one sequence); FLOPs as hetsim counts them
    (4 x heads x seq x kv x head_dim, the causal half not subtracted)."""
    import torch.nn.functional as F

    q = torch_randn((1, heads, seq, head_dim), dtype)
    t = timeit(
        lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True),
        min_time=0.01 if quick else 0.05,
        reps=2 if quick else 3,
    )
    return {"seq": seq, "dtype": dtype, "seconds": t, "flops": 4.0 * heads * seq * seq * head_dim / t}


def attention_decode(
    kv_len: int,
    dtype: str = "fp32",
    *,
    batch: int = 1,
    heads: int = 16,
    head_dim: int = 128,
    quick: bool = False,
) -> dict[str, float]:
    """One query token per sequence over a KV cache of ``kv_len`` tokens; caches rotate through a
    working set larger than the LLC, as a model's layers do. Returns seconds and KV bytes read."""
    import torch
    import torch.nn.functional as F

    esize = torch.empty((), dtype=_dt(dtype)).element_size()
    kv_bytes = 2 * batch * heads * kv_len * head_dim * esize
    copies = max(2, min(16, WORKING_SET // max(1, kv_bytes)))
    if quick:
        copies = min(copies, 4)
    caches = [torch_randn((batch, heads, kv_len, head_dim), dtype) for _ in range(2 * copies)]
    q = torch_randn((batch, heads, 1, head_dim), dtype)

    def run() -> None:
        for i in range(copies):
            F.scaled_dot_product_attention(q, caches[2 * i], caches[2 * i + 1])

    t = timeit(run, min_time=0.01 if quick else 0.05, reps=2 if quick else 3) / copies
    return {"kv_len": kv_len, "batch": batch, "dtype": dtype, "seconds": t, "bytes": float(kv_bytes)}


def torch_randn(shape: tuple[int, ...], dtype: str):
    import torch

    return torch.randn(*shape).to(_dt(dtype))


def decode_step_ops(spec, batch: int, kv_len: int) -> int:
    """The ops hetsim costs for one decode step of ``spec`` (embedding, every layer, head)."""
    from hetsim.models.sharding import embed_ops, head_ops, layer_blocks

    layer = layer_blocks(spec, "decode", batch, 1, kv_len).whole
    return len(embed_ops(spec, batch, 1)) + spec.layers * len(layer) + len(head_ops(spec, "decode", batch, 1))


def tiny_decoder(layers: int):
    """The llama-style decoder ``decoder_step_overhead`` times: tensors so small that a step is all
    host work (dispatch, allocation, kernel issue)."""
    import dataclasses

    from hetsim.models import get_model

    return dataclasses.replace(
        get_model("llama2-7b"), name="tiny", layers=layers, hidden=128, heads=2, kv_heads=2,
        head_dim=64, intermediate=256, vocab=256,
    )  # fmt: skip


def kernel_issue_s(decoder: dict[str, Any]) -> float:
    """The host's time per kernel issuing the eager decoder (``decoder_step_overhead`` on CUDA): its
    cost per costed op spread over the kernels those ops launch (``hetsim.models.kernels``; a
    layer's ops and kernels, as the slope over layer counts is per layer)."""
    from hetsim.models.kernels import op_kernels
    from hetsim.models.sharding import layer_blocks

    spec = tiny_decoder(1)
    layer = layer_blocks(spec, "decode", 1, 1, 9).whole
    return decoder["per_op_s"] * len(layer) / op_kernels(spec, layer)


# Layer counts of the tiny decoder whose step times calibrate fits a line through on CUDA: the slope
# (seconds per costed op) is the host's issue, the intercept the step's fixed round trip. Two points
# (2 and 8 layers) gave 28.0 and 36.7 us per op in two calibrations on one H200 host (one with a
# negative intercept: validate/results/h200/README.md); five points and a median of pairwise slopes
# keep one disturbed point from setting the slope.
DECODER_LAYERS = (1, 2, 4, 8, 16)


def fit_step_line(ops: list[float], seconds: list[float]) -> tuple[float, float]:
    """Seconds per op and fixed seconds of a step, from steps of several sizes: the Theil-Sen line
    (scipy.stats.theilslopes: the median of the pairwise slopes, robust to one disturbed point)."""
    from scipy.stats import theilslopes

    fit = theilslopes(seconds, ops)
    return float(fit.slope), float(fit.intercept)


# A sleep kernel queued ahead of a step keeps the GPU busy while the host issues it (~50 ms at the
# H200's 1.98 GHz; longer at idle clocks): no launch then waits on the GPU, as in a real model's step.
BUSY_GPU_CYCLES = 100_000_000


def issue_behind_busy_gpu(step: Callable[[], Any], reps: int) -> float | None:
    """Median host seconds to issue ``step`` while a sleep kernel keeps the GPU busy; None when no rep
    ended with the GPU still busy (the issue then waited on it)."""
    import torch

    times = []
    for _ in range(reps):
        torch.cuda._sleep(BUSY_GPU_CYCLES)
        t0 = time.perf_counter()
        step()
        t = time.perf_counter() - t0
        if not torch.cuda.current_stream().query():  # still busy: nothing waited
            times.append(t)
        torch.cuda.synchronize()
    return statistics.median(times) if times else None


def _tiny_step_s(layers: int, dtype: str, device: str, quick: bool) -> tuple[float, float | None, int]:
    """One decode step of ``tiny_decoder(layers)`` on ``device``: seconds per step back to back, the
    host's seconds issuing it behind a busy GPU (CUDA only, else None), and the ops hetsim costs."""
    import torch

    from validate.torch_model import TorchDecoder

    cuda = device != "cpu"
    spec = tiny_decoder(layers)
    dec = TorchDecoder(spec, dtype=_dt(dtype), device=device)
    ids = torch.zeros(1, 8, dtype=torch.long)
    with torch.inference_mode():
        dec.reset(1, 16)
        tok = dec.step(ids, 0).view(1, 1)
        sync = torch.cuda.synchronize if cuda else None
        t = timeit(lambda: dec.step(tok, 8), min_time=0.02 if quick else 0.1, reps=3, sync=sync)
        issue = issue_behind_busy_gpu(lambda: dec.step(tok, 8), 5 if quick else 11) if cuda else None
    return t, issue, decode_step_ops(spec, 1, 9)


def decoder_step_overhead(dtype: str = "fp32", *, quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Per-op fixed cost as a decoder pays it: one decode step of a llama-style decoder whose tensors
    are tiny (so the step is all dispatch, allocation and small-kernel cost: the rotary embedding,
    cache writes, views and casts that a single tiny op leaves out), divided by the number of ops
    hetsim costs for that step.

    On CUDA the cost per op is the slope over ``DECODER_LAYERS`` (``fit_step_line``) of the host's
    time issuing a step while the GPU is busy (``issue_behind_busy_gpu``): what the engine's
    ``kernel_issue`` means (the host issuing ahead of the GPU). Steps timed back to back gave 28.0
    and 40.0 us per op on two H200 hosts whose whole Llama-2-7B steps were paced at 10.8 and 9.2 us
    a kernel (validate/results/h200/README.md): the tiny decoder's kernels leave the GPU idle
    between them, and what each then costs is not the host's issue alone. Their line is kept
    (``queued_per_op_s``, ``steps``' ``step_s``) beside it; where no issue could be timed behind a
    busy GPU the queued line stands in (``regime``). ``step_s`` and ``ops`` are the 8-layer step's.
    """
    if device == "cpu":
        t, _, n = _tiny_step_s(4, dtype, device, quick)
        return {"dtype": dtype, "step_s": t, "ops": float(n), "per_op_s": t / n}
    points = {layers: _tiny_step_s(layers, dtype, device, quick) for layers in DECODER_LAYERS}
    ops = [float(n) for _, _, n in points.values()]
    queued, queued_fixed = fit_step_line(ops, [t for t, _, _ in points.values()])
    issued = [i for _, i, _ in points.values() if i is not None]
    behind = len(issued) == len(points)
    slope, fixed = fit_step_line(ops, issued) if behind else (queued, queued_fixed)
    t8, _, n8 = points[8]
    steps = [{"layers": k, "ops": float(n), "step_s": t, "issue_s": i} for k, (t, i, n) in points.items()]
    regime = "issue behind a busy GPU" if behind else "queued steps"
    return {"dtype": dtype, "step_s": t8, "ops": float(n8), "per_op_s": max(0.0, slope),
            "fixed_step_s": fixed, "regime": regime, "queued_per_op_s": queued, "steps": steps}  # fmt: skip


# ---- multi-process: all-reduce and co-running ranks ----------------------------------------------
def _dist_worker(rank: int, world: int, init: str, threads: int, quick: bool, out: str) -> None:
    import json

    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        sizes = [4 * 2**i for i in range(0, 21, 4 if quick else 2)]  # 4 B .. 4 MiB
        res = []
        for size in sizes:
            t = torch.zeros(size // 4)
            for _ in range(3):
                dist.all_reduce(t)
            reps = 5 if quick else (50 if size < 2**16 else 10)
            times = []
            for _ in range(3):
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(reps):
                    dist.all_reduce(t)
                times.append((time.perf_counter() - t0) / reps)
            res.append({"bytes": size, "seconds": statistics.median(times)})
        # An all-reduce as a TP layer issues it: right after each rank's GEMV, at two GEMV sizes.
        # Back-to-back all-reduces (above) flatter gloo; behind compute, gloo's threads competing
        # for the cores and the wait for the slower rank show up: a fixed part and a part that
        # grows with the compute segment (the straggler wait), which calibrate separates.
        buf = torch.randn(1, 1024)
        in_loop = []
        for k in (512, 2048) if quick else (1024, 8192):
            ws = [torch.randn(k, 4096) for _ in range(max(1, WORKING_SET // (k * 4096 * 4)))]
            x = torch.randn(1, k)
            n = 20 if quick else max(40, int(1.0 / (k * 4096 * 4 / 20e9)))

            def loop(fn, n=n) -> float:
                dist.barrier()
                t0 = time.perf_counter()
                for i in range(n):
                    fn(i)
                return (time.perf_counter() - t0) / n

            runs = [
                (
                    loop(lambda i: x @ ws[i % len(ws)]),  # noqa: B023 (used inside this iteration)
                    loop(lambda i: dist.all_reduce(buf)),
                    loop(lambda i: (x @ ws[i % len(ws)], dist.all_reduce(buf))),  # noqa: B023
                )
                for _ in range(1 if quick else 3)
            ]
            gemv_s, ar_s, both_s = (statistics.median(r[j] for r in runs) for j in range(3))
            in_loop.append({"gemv_s": gemv_s, "allreduce_s": ar_s, "both_s": both_s, "bytes": 4 * 1024})
        # Co-running: the same GEMV/GEMM and copy on every rank at once (shared DRAM and cores?).
        dist.barrier()
        # shapes of calibrate's solo sweep, so that co-run and solo rates compare like for like
        shapes = [(1, 2048, 2048), (16, 2048, 2048)] if not quick else [(1, 1024, 1024), (8, 1024, 1024)]
        corun = [matmul_rate(*s, quick=quick) for s in shapes]
        dist.barrier()
        st = stream(QUICK_STREAM if quick else WORKING_SET, quick=quick)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, {"gemm": corun, "stream": st})
        if rank == 0:
            doc = {"allreduce": res, "allreduce_in_loop": in_loop, "corun": gathered}
            write_text_atomic(out, json.dumps(doc))
    finally:
        dist.destroy_process_group()


def multiprocess(world: int = 2, threads: int = 1, *, quick: bool = False) -> dict[str, Any]:
    """gloo all-reduce timings over message sizes and co-running rates, ``world`` local processes."""
    import json

    import torch.multiprocessing as mp

    from validate.runners import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "mp.json")
        init = f"tcp://127.0.0.1:{free_port()}"
        mp.spawn(_dist_worker, args=(world, init, threads, quick, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def relative_line(x, y) -> tuple[float, float]:
    """Least-squares ``y = c0 + c1 * x`` in relative residuals (each point weighted by 1/y), so that
    both ends of a range spanning decades count alike."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    a = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
    (c0, c1), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return float(c0), float(c1)


def fit_alpha_beta(points: list[dict[str, float]]) -> tuple[float, float]:
    """Least-squares t = alpha + bytes / beta over the measured all-reduce sizes."""
    alpha, inv_beta = relative_line([p["bytes"] for p in points], [p["seconds"] for p in points])
    alpha = max(float(alpha), 1e-7)
    inv_beta = max(float(inv_beta), 1e-15)
    return alpha, 1.0 / inv_beta


# ---- CUDA -----------------------------------------------------------------------------------------
def _first_gemm() -> None:
    """One small fp16 GEMM on the GPU, waited for: makes the cuBLAS handle and its workspace and loads
    the kernels it runs (lazily loaded modules arrive at first use); its own tensors are then freed."""
    import torch

    a = torch.ones(256, 256, dtype=torch.float16, device="cuda")
    (a @ a).sum().item()


def cuda_runtime_bytes() -> dict[str, int]:
    """The GPU memory no tensor can have: ``torch.cuda.mem_get_info``'s total - free right after the
    CUDA context is made (``context_bytes``) and after a first cuBLAS GEMM with the GEMM's tensors
    freed and the allocator's cache emptied (``runtime_bytes``: context, loaded kernels, cuBLAS handle
    and workspace). Taken before anything else in the process allocates on the GPU; another process on
    the same GPU would count too."""
    import torch

    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    context = total - free
    _first_gemm()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free_after, _ = torch.cuda.mem_get_info()
    held = total - free_after
    return {"total_bytes": int(total), "context_bytes": int(context), "runtime_bytes": int(held)}


def cuda_bench(*, quick: bool = False) -> dict[str, Any] | None:
    """What the CUDA context and cuBLAS hold, H2D/D2H pinned and pageable copies, GPU GEMM rates and
    kernel launch cost; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    runtime = cuda_runtime_bytes()  # first: nothing of ours on the GPU yet
    sync = torch.cuda.synchronize
    nbytes = (64 if quick else 256) * 2**20
    # Written before timing: an untouched pageable buffer reads the kernel's shared zero page, which
    # stays in cache (the H200 host read 17.9 GB/s from one, 6-8 GB/s from written memory).
    host = torch.ones(nbytes, dtype=torch.uint8)
    pinned = host.pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    kw = {"min_time": 0.05, "reps": 3, "sync": sync}
    copies = {
        "h2d_pinned": nbytes / timeit(lambda: dev.copy_(pinned, non_blocking=True), **kw),
        "h2d_pageable": nbytes / timeit(lambda: dev.copy_(host), **kw),
        "d2h_pinned": nbytes / timeit(lambda: pinned.copy_(dev, non_blocking=True), **kw),
        "d2h_pageable": nbytes / timeit(lambda: host.copy_(dev), **kw),
    }
    tiny = torch.zeros(1, device="cuda")
    n_launch = 1000

    def launches() -> None:
        for _ in range(n_launch):
            tiny.add_(1)

    launch = timeit(launches, **kw) / n_launch
    gemm = [
        matmul_rate(m, k, k, dt, device="cuda", quick=quick)
        for dt in ("fp16", "bf16", "fp32")
        for m in (1, 16, 256, 4096)
        for k in ((4096,) if quick else (2048, 8192))
    ]
    decoder = decoder_step_overhead("fp16", quick=quick, device="cuda")
    big = torch.empty(nbytes // 4, device="cuda")
    big2 = torch.empty_like(big)
    mem_bw = 2 * nbytes / timeit(lambda: big2.copy_(big), **kw)
    return {
        "name": torch.cuda.get_device_name(0),
        "memory_bytes": torch.cuda.get_device_properties(0).total_memory,
        **runtime,
        "copies": copies,
        "launch_s": launch,
        "decoder_overhead": decoder,
        "gemm": gemm,
        "mem_bw": mem_bw,
    }
