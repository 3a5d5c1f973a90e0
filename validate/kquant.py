"""Measure llama.cpp's Q4_K and Q6_K matrix kernels on this CPU, per MAC in core cycles.

KTransformers V0.2 runs DeepSeek-V3's routed experts on the CPU with llama.cpp's quantised kernels
(Q4_K_M GGUF). Their cost is not the int8 dot-product peak: every weight is unpacked (mask, shift,
per-sub-block scale) before an 8-bit multiply-add with the Q8_K-quantised activations, and at one
token a matrix-vector product does that work once per weight read. This script times ggml's own
``mul_mat`` (the library llama.cpp and llama-cpp-python build; no model file needed) on Q4_K weights
of DeepSeek-V3's expert shapes:

* **in cache** (weights small enough to stay in this core's L2): the kernel's compute cost, expressed
  in core cycles per multiply-accumulate, the number that transfers to another CPU running the same
  instruction stream (``hetsim.hardware`` applies it as cores x clock / cycles per MAC);
* **from DRAM** (a set of expert matrices far larger than the last-level cache): what one and all
  cores of this machine reach, for the record (this VM's DRAM is not the target's).

The core clock is measured with a chain of dependent ``imul reg, reg`` (3 cycles each on every big x86
core since Core 2 and K8; see ``CHAIN_CYCLES``), compiled with the system's C compiler, and checked
against a chain of ``add reg, reg``. A file measured with another clock (or none) is refitted at a
stated, assumed one with ``--fit-only --clock-hz HZ --clock-source TEXT``.

Run with hetsim importable and llama.cpp's libraries at hand: ``pip install llama-cpp-python==0.3.36``
(it builds llama.cpp from source with ``-march=native``) into this venv, or into a scratch one and set
``GGML_LIB_DIR`` to its ``site-packages/llama_cpp/lib``::

    python -m validate.kquant --out validate/results/kquant/<machine>.json

It prints one table and writes the JSON that ``hardware_profiles/efficiency.yaml`` cites, then the
expert bytes per second a one-token DeepSeek-V3 expert layer streams from DRAM at each thread count
(``decode_layer_rates``). On a bare-metal Xeon Gold 6454S, ``--threads 1,2,4,8,16,24,32 --calls 200
--dram-mb 2048`` measures the number hetsim's KTransformers decode gap turns on (docs/ktransformers.md says
what else that run needs).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hetsim.hardware.types import log_interp
from hetsim.textfiles import write_text_atomic
from validate.calibrate import cpu_name

GGML_TYPE_F32 = 0
GGML_TYPE_Q4_K = 12
GGML_TYPE_Q6_K = 14
QK_K = 256
# ggml block sizes per 256 weights: Q4_K = 2 fp16 scales + 12 bytes of 6-bit sub-block scales + 128
# bytes of nibbles; Q6_K = 128 bytes of low nibbles + 64 of high 2-bit pairs + 16 int8 scales + fp16.
BLOCK_BYTES = {"q4_K": 144, "q6_K": 210}
GGML_TYPES = {"q4_K": GGML_TYPE_Q4_K, "q6_K": GGML_TYPE_Q6_K}

# DeepSeek-V3 routed expert: gate/up are hidden 7168 -> 2048, down is 2048 -> 7168 (K = input width).
EXPERT_SHAPES = {"gate_up": (7168, 2048), "down": (2048, 7168)}
# Same input widths, few enough output rows to stay in a 2 MB L2 (Q4_K: 0.5625 B per weight).
CACHE_SHAPES = {"gate_up": (7168, 256), "down": (2048, 896)}
TOKENS = (1, 4, 16, 64)
DRAM_TOKENS = (1, 16)  # decode, and a 500-token prefill's ~16 tokens per expert (500 x 8 / 256)


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _CPlan(ctypes.Structure):  # struct ggml_cplan (ggml-cpu.h)
    _fields_ = [
        ("work_size", ctypes.c_size_t),
        ("work_data", ctypes.c_void_p),
        ("n_threads", ctypes.c_int),
        ("threadpool", ctypes.c_void_p),
        ("abort_callback", ctypes.c_void_p),
        ("abort_callback_data", ctypes.c_void_p),
        ("use_ref", ctypes.c_bool),
    ]


def _find_lib_dir() -> Path:
    env = os.environ.get("GGML_LIB_DIR")
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        sys.exit("llama_cpp not installed: pip install llama-cpp-python (or set GGML_LIB_DIR)")
    return Path(spec.origin).parent / "lib"


class Ggml:
    """The few ggml C functions the benchmark needs, through ctypes."""

    def __init__(self, lib_dir: Path) -> None:
        mode = ctypes.RTLD_GLOBAL
        self.base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=mode)
        self.cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=mode)
        b, c, vp, i64 = self.base, self.cpu, ctypes.c_void_p, ctypes.c_int64
        b.ggml_init.argtypes, b.ggml_init.restype = [_InitParams], vp
        b.ggml_free.argtypes, b.ggml_free.restype = [vp], None
        b.ggml_new_tensor_2d.argtypes, b.ggml_new_tensor_2d.restype = [vp, ctypes.c_int, i64, i64], vp
        b.ggml_mul_mat.argtypes, b.ggml_mul_mat.restype = [vp, vp, vp], vp
        b.ggml_new_graph_custom.argtypes = [vp, ctypes.c_size_t, ctypes.c_bool]
        b.ggml_new_graph_custom.restype = vp
        b.ggml_build_forward_expand.argtypes, b.ggml_build_forward_expand.restype = [vp, vp], None
        b.ggml_get_data.argtypes, b.ggml_get_data.restype = [vp], vp
        b.ggml_nbytes.argtypes, b.ggml_nbytes.restype = [vp], ctypes.c_size_t
        b.ggml_quantize_chunk.argtypes = [ctypes.c_int, vp, vp, i64, i64, i64, vp]
        b.ggml_quantize_chunk.restype = ctypes.c_size_t
        c.ggml_graph_plan.argtypes, c.ggml_graph_plan.restype = [vp, ctypes.c_int, vp], _CPlan
        c.ggml_graph_compute.argtypes = [vp, ctypes.POINTER(_CPlan)]
        c.ggml_graph_compute.restype = ctypes.c_int
        c.ggml_cpu_init.argtypes, c.ggml_cpu_init.restype = [], None
        c.ggml_cpu_init()


def _random_floats(n: int, seed: int) -> ctypes.Array:
    import random

    rng = random.Random(seed)
    row = [rng.uniform(-1.0, 1.0) for _ in range(4096)]
    arr = (ctypes.c_float * n)()
    for start in range(0, n, 4096):
        chunk = min(4096, n - start)
        arr[start : start + chunk] = row[:chunk]
    return arr


class MatmulCase:
    """``copies`` Q4_K weight matrices K x N (distinct memory, same content), each multiplied by an
    f32 K x m activation block in a graph of its own: one timed call is one ggml mul_mat."""

    def __init__(self, g: Ggml, qtype: str, k: int, n: int, m: int, copies: int) -> None:
        self.g, self.qtype, self.k, self.n, self.m, self.copies = g, qtype, k, n, m, copies
        gtype = GGML_TYPES[qtype]
        wbytes = n * (k // QK_K) * BLOCK_BYTES[qtype]
        mem = copies * (wbytes + 4 * k * m + 4 * n * m + 64 * 1024) + 64 * 2**20
        self.ctx = g.base.ggml_init(_InitParams(mem, None, False))
        if not self.ctx:
            raise MemoryError("ggml_init failed")
        src = _random_floats(k * n, seed=1)
        first = None
        self.graphs = []
        for _ in range(copies):
            w = g.base.ggml_new_tensor_2d(self.ctx, gtype, k, n)
            if first is None:
                g.base.ggml_quantize_chunk(gtype, src, g.base.ggml_get_data(w), 0, n, k, None)
                first = w
            else:
                ctypes.memmove(g.base.ggml_get_data(w), g.base.ggml_get_data(first), wbytes)
            x = g.base.ggml_new_tensor_2d(self.ctx, GGML_TYPE_F32, k, m)
            ctypes.memmove(g.base.ggml_get_data(x), src, 4 * k * m)
            graph = g.base.ggml_new_graph_custom(self.ctx, 16, False)
            g.base.ggml_build_forward_expand(graph, g.base.ggml_mul_mat(self.ctx, w, x))
            self.graphs.append(graph)
        self.weight_bytes = wbytes
        self._plans: dict[tuple[int, int], _CPlan] = {}
        self._work: list[ctypes.Array] = []

    def _plan(self, i: int, threads: int) -> _CPlan:
        """ggml's compute plan with a work buffer of our own (the Q8_K-quantised activations)."""
        key = (i, threads)
        if key not in self._plans:
            plan = self.g.cpu.ggml_graph_plan(self.graphs[i], threads, None)
            if plan.work_size:
                buf = ctypes.create_string_buffer(plan.work_size + 64)
                self._work.append(buf)
                plan.work_data = ctypes.addressof(buf)
            self._plans[key] = plan
        return self._plans[key]

    def run(self, i: int, threads: int) -> float:
        """One mul_mat on copy ``weight_copy(i, copies)``: 0 for the warm-up (i = 0), timed calls cycle
        over the others."""
        c = weight_copy(i, self.copies)
        graph, plan = self.graphs[c], self._plan(c, threads)
        t0 = time.perf_counter()
        rc = self.g.cpu.ggml_graph_compute(graph, ctypes.byref(plan))
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"ggml_graph_compute failed: {rc}")
        return dt

    @property
    def macs(self) -> float:
        return float(self.k) * self.n * self.m

    def close(self) -> None:
        self.g.base.ggml_free(self.ctx)


# The clock probe: a chain of dependent 32-bit ``imul reg, reg``, 3 cycles each on the big x86 cores:
# Intel from Core 2 (Merom) to Golden/Raptor Cove (Sapphire/Emerald Rapids, Alder/Raptor Lake P-cores),
# AMD K8, K10 and Zen 1-4 (Agner Fog, "Instruction tables", agner.org/optimize/instruction_tables.pdf,
# IMUL r32,r32; uops.info, IMUL_R32_R32). Exceptions in those tables: P6 and Pentium M (4 cycles),
# NetBurst, AMD Bulldozer family (4). (Recalled from the tables, not re-read here: no network.) A multiply
# is not done at register renaming, and its other operand is a run-time register, not an immediate.
# The old probe's chain of ``add reg, imm`` (taken as 1 cycle "since the P6") runs several per cycle on
# Golden Cove and later Intel cores, whose renamer folds additions of small immediates (reported by Chips
# and Cheese, "Popping the Hood on Golden Cove", 2021; not re-read here): it read 10.1-11.2 GHz on an
# Emerald Rapids VM (validate/results/kquant/xeon-emr-kvm16.log). A chain of ``add reg, reg`` (1 cycle,
# no immediate) is timed beside it: the two clocks must agree, or the probe says so.
CHAIN_CYCLES = {"imul": 3, "add": 1}  # core cycles per dependent instruction of each chain
_CHAIN_OPS = 8  # dependent instructions per loop trip
# No x86 core has shipped above 6.2 GHz (Intel Core i9-14900KS, max turbo; Intel ARK): a faster reading
# means the chain ran faster than its latency, not a faster core.
MAX_CORE_CLOCK_HZ = 6.5e9
_CHAIN_C = r"""
#include <stdint.h>
#define OPS8(op) op "\n\t" op "\n\t" op "\n\t" op "\n\t" op "\n\t" op "\n\t" op "\n\t" op
uint64_t chain_imul(uint64_t n, uint32_t y) {
    uint32_t x = y;
    for (uint64_t i = 0; i < n; i++) __asm__ volatile(OPS8("imul %1, %0") : "+r"(x) : "r"(y));
    return x;
}
uint64_t chain_add(uint64_t n, uint64_t y) {
    uint64_t x = y;
    for (uint64_t i = 0; i < n; i++) __asm__ volatile(OPS8("add %1, %0") : "+r"(x) : "r"(y));
    return x;
}
"""


def clock_from_chain(op: str, trips: int, seconds: float) -> float:
    """The core clock a timed chain implies: ``trips`` loop trips of ``_CHAIN_OPS`` dependent ``op``s,
    each ``CHAIN_CYCLES[op]`` cycles. A reading no x86 core reaches is refused (ValueError): the chain
    then ran faster than the latency it is assumed to have."""
    hz = _CHAIN_OPS * CHAIN_CYCLES[op] * trips / seconds
    if hz > MAX_CORE_CLOCK_HZ:
        raise ValueError(
            f"clock probe: a chain of {op} read {hz / 1e9:.2f} GHz, above any x86 core "
            f"({MAX_CORE_CLOCK_HZ / 1e9:.1f} GHz): it ran faster than {CHAIN_CYCLES[op]} cycle(s) per {op}"
        )
    return hz


def clock_probe(calls: int = 400) -> dict[str, float]:
    """Clock of the core this runs on from each chain (``imul`` is the one used). Short calls (~1 ms)
    and the fastest of many, so that a call the scheduler did not interrupt is among them; the two
    chains alternate so that a clock change hits both."""
    with tempfile.TemporaryDirectory() as d:
        c, so = Path(d) / "chain.c", Path(d) / "chain.so"
        c.write_text(_CHAIN_C)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(so), str(c)], check=True)
        lib = ctypes.CDLL(str(so))
        lib.chain_imul.argtypes, lib.chain_imul.restype = [ctypes.c_uint64, ctypes.c_uint32], ctypes.c_uint64
        lib.chain_add.argtypes, lib.chain_add.restype = [ctypes.c_uint64, ctypes.c_uint64], ctypes.c_uint64
        trips = {"imul": 150_000, "add": 450_000}  # 3.6 M cycles each
        fns = {
            "imul": lambda: lib.chain_imul(trips["imul"], 0x9E3779B1),
            "add": lambda: lib.chain_add(trips["add"], 3),
        }
        best = {op: float("inf") for op in fns}
        for fn in fns.values():
            fn()
        for _ in range(calls):
            for op, fn in fns.items():
                best[op] = min(best[op], _timed(fn))
    return {op: clock_from_chain(op, trips[op], best[op]) for op in fns}


def core_clock_hz(calls: int = 400) -> float:
    """The core clock from the ``imul`` chain (see ``checked_clock``)."""
    return checked_clock(clock_probe(calls))


def checked_clock(probe: dict[str, float]) -> float:
    """The ``imul`` chain's clock; a warning on stderr when the ``add`` chain's disagrees by more than
    10 % (one of the two latencies is not what the tables say on this core)."""
    if abs(probe["add"] / probe["imul"] - 1.0) > 0.10:
        print(
            f"warning: clock probe chains disagree: imul {probe['imul'] / 1e9:.2f} GHz, "
            f"add {probe['add'] / 1e9:.2f} GHz (imul used)",
            file=sys.stderr,
        )
    return probe["imul"]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cases(g: Ggml, dram_mb: float) -> list[tuple[str, str, MatmulCase]]:
    cases = []
    for qtype in GGML_TYPES:
        for where, shapes in (("cache", CACHE_SHAPES), ("dram", EXPERT_SHAPES)):
            for name, (k, n) in shapes.items():
                for m in TOKENS if where == "cache" else DRAM_TOKENS:
                    copies = 1
                    if where == "dram":  # cycle through more weights than the last-level cache holds
                        copies = max(2, int(dram_mb * 2**20 / (n * (k // QK_K) * BLOCK_BYTES[qtype])))
                    cases.append((where, name, MatmulCase(g, qtype, k, n, m, copies)))
    return cases


def weight_copy(i: int, copies: int) -> int:
    """The copy of a case's weights call ``i`` reads. Copy 0 is the untimed warm-up's, read just before
    each block of timed calls; timed calls (i >= 1) cycle over copies 1..copies-1, so a wrap never lands
    on the copy the warm-up has just brought into the cache (``i % copies`` did, at every multiple of
    ``copies``: an L3 hit, and the fastest call is the one kept)."""
    return 0 if i == 0 or copies == 1 else 1 + (i - 1) % (copies - 1)


def weight_set(r: int, ti: int, j: int, per: int, n_threads: int) -> int:
    """Which copy of a case's weights the j-th timed call of round ``r`` at the ``ti``-th thread count
    reads (set 0 is the untimed warm-up's). Each call a set of its own, until the sets run out
    (``weight_copy`` wraps them onto sets 1..copies-1): the old index (round and call only) had every
    thread count of a round read the set the first one had just read, after ~160 MB of other weights
    -- less than an Emerald Rapids socket's 300 MB L3 -- so a DRAM row past the first thread count
    could hit in L3."""
    return 1 + (r * n_threads + ti) * per + j


def measure(g: Ggml, threads_list: tuple[int, ...], calls: int, dram_mb: float) -> list[dict]:
    """Each case: ``calls`` timed mul_mats per thread count, interleaved in rounds over the cases so
    that a slow moment of the shared machine hits all of them; the fastest call is the kernel's time
    (a call the scheduler did not interrupt), the median is kept beside it."""
    cases = _cases(g, dram_mb)
    times: dict[tuple[int, int], list[float]] = {}
    rounds = 10
    per = max(1, calls // rounds)
    for r in range(rounds):
        for ti, t in enumerate(threads_list):
            for i, (_, _, case) in enumerate(cases):
                case.run(0, t)
                for j in range(per):
                    times.setdefault((i, t), []).append(
                        case.run(weight_set(r, ti, j, per, len(threads_list)), t)
                    )
    rows: list[dict] = []
    for i, (where, name, case) in enumerate(cases):
        for t in threads_list:
            ts = times[(i, t)]
            best = min(ts)
            rows.append(
                {
                    "type": case.qtype,
                    "where": where,
                    "matrix": name,
                    "k": case.k,
                    "n": case.n,
                    "tokens": case.m,
                    "weight_sets": case.copies,
                    "threads": t,
                    "calls": len(ts),
                    "best_s": best,
                    "median_s": statistics.median(ts),
                    "gmac_per_s": case.macs / best / 1e9,
                    "weight_gb_per_s": case.weight_bytes / best / 1e9,
                }
            )
    for *_, case in cases:
        case.close()
    return rows


# llama.cpp's Q4_K_M mix (src/llama-quant.cpp, LLAMA_FTYPE_MOSTLY_Q4_K_M): Q4_K everywhere except the
# output layer, and ffn_down (experts included) and attn_v of the layers where use_more_bits(i, n) holds
# -- the first and last eighth and every third layer between, 30 of DeepSeek-V3's 61 -- in Q6_K. Of a
# routed expert's three matrices (gate, up, down) that is about half of one: 1/6 of its MACs in Q6_K.
Q4_K_M_Q6_SHARE = 1.0 / 6.0


def fit(doc: dict) -> dict:
    """The per-core cycles-per-MAC curve of each type by tokens: the mean of the two in-cache shapes
    at one thread (one core; this VM's second core is shared with other work). Held out: DeepSeek-V3's
    real expert matrices streamed from DRAM, each type alone and as the Q4_K_M mix."""
    one = [r for r in doc["rows"] if r["threads"] == 1]
    sums: dict[str, dict[int, list[float]]] = {}
    for r in one:
        if r["where"] == "cache":
            sums.setdefault(r["type"], {}).setdefault(r["tokens"], []).append(r["cycles_per_mac"])
    curves = {q: {t: statistics.fmean(v) for t, v in sorted(by.items())} for q, by in sums.items()}

    def predict(qtype: str, tokens: float) -> float:
        return interpolate([(float(t), c) for t, c in curves[qtype].items()], tokens)

    held = []
    for r in one:
        if r["where"] == "cache":
            continue
        pred = predict(r["type"], r["tokens"])
        held.append(
            {k: r[k] for k in ("type", "where", "matrix", "tokens")}
            | {"measured": r["cycles_per_mac"], "predicted": pred, "error": pred / r["cycles_per_mac"] - 1.0}
        )
    q6 = Q4_K_M_Q6_SHARE
    for matrix in EXPERT_SHAPES:
        for m in DRAM_TOKENS:
            meas = {h["type"]: h["measured"] for h in held if h["matrix"] == matrix and h["tokens"] == m}
            mixed = (1 - q6) * meas["q4_K"] + q6 * meas["q6_K"]
            pred = (1 - q6) * predict("q4_K", m) + q6 * predict("q6_K", m)
            held.append(
                {
                    "type": "q4_k_m",
                    "where": "dram",
                    "matrix": matrix,
                    "tokens": m,
                    "measured": mixed,
                    "predicted": pred,
                    "error": pred / mixed - 1.0,
                }
            )
    tokens = list(curves["q4_K"])
    mix = [(1 - q6) * curves["q4_K"][t] + q6 * curves["q6_K"][t] for t in tokens]
    errs = [abs(h["error"]) for h in held if h["type"] == "q4_k_m"]
    return {
        "curves": curves,
        "q4_k_m": {"tokens": tokens, "cycles_per_mac": [round(c, 4) for c in mix]},
        "held_out": held,
        "held_out_q4_k_m_abs_error": {"median": statistics.median(errs), "max": max(errs)},
    }


def decode_layer_rates(doc: dict) -> dict[int, float]:
    """Bytes/s of expert weights a decode token's expert layer streams from DRAM, by thread count: the
    one-token DRAM rows combined as a DeepSeek-V3 Q4_K_M expert is stored (gate and up in Q4_K, down in
    Q6_K in half the layers: ``Q4_K_M_Q6_SHARE`` of the MACs), each matrix at its measured time.

    On the target socket (32 threads of a Xeon Gold 6454S) this is the number hetsim's moe-offload
    decode turns on: it assumes ``cpu.memory`` x peak (0.8 x 307.2 GB/s) for this stream
    (docs/ktransformers.md says what each result would mean)."""
    rows = [r for r in doc["rows"] if r["where"] == "dram" and r["tokens"] == 1]
    out: dict[int, float] = {}
    for t in sorted({r["threads"] for r in rows}):
        at = {(r["type"], r["matrix"]): r for r in rows if r["threads"] == t}
        seconds = nbytes = 0.0
        q6_down = 3 * Q4_K_M_Q6_SHARE  # of the down matrices (one of an expert's three) in Q6_K
        # one expert's three matrices, per MAC: gate and up in Q4_K, down in Q4_K or Q6_K
        parts = (("q4_K", "gate_up", 2.0), ("q4_K", "down", 1.0 - q6_down), ("q6_K", "down", q6_down))
        for qtype, matrix, share in parts:
            r = at[(qtype, matrix)]
            seconds += share * r["best_s"] / (r["k"] * r["n"])
            nbytes += share * (r["k"] // QK_K) * BLOCK_BYTES[qtype] / r["k"]
        out[t] = nbytes / seconds
    return out


def set_cycles_per_mac(rows: list[dict], clock_hz: float) -> None:
    """Each row's core cycles per MAC at ``clock_hz``: all its threads' cycles over its MAC rate."""
    for r in rows:
        r["cycles_per_mac"] = clock_hz * r["threads"] / (r["gmac_per_s"] * 1e9)


def assume_clock(doc: dict, clock_hz: float, source: str) -> None:
    """Recompute a measurement's cycles per MAC at a clock its probe did not measure: the probe's
    readings stay in ``clock_hz`` (``before``/``after``), ``used`` becomes ``clock_hz``, and
    ``clock_assumed`` records it as {value, source, grade: assumed}. The times are untouched."""
    doc["clock_hz"]["used"] = clock_hz
    doc["clock_assumed"] = {"value": clock_hz, "source": source, "grade": "assumed"}
    set_cycles_per_mac(doc["rows"], clock_hz)


def interpolate(points: list[tuple[float, float]], tokens: float) -> float:
    """hetsim's own rule between measured points (linear in log tokens, flat outside)."""
    return log_interp(points, tokens)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fit-only", action="store_true", help="refit an existing --out file; measure nothing")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per case and thread count")
    ap.add_argument("--dram-mb", type=float, default=512.0, help="weights per DRAM case (>> LLC)")
    ap.add_argument(
        "--clock-hz",
        type=float,
        help="with --fit-only: recompute every row's cycles per MAC at this core clock (one the probe did "
        "not measure, e.g. a file written by a probe now known wrong); --clock-source says where it is from",
    )
    ap.add_argument(
        "--clock-source", default="", help="with --clock-hz: its source (recorded, graded assumed)"
    )
    args = ap.parse_args(argv)
    if args.clock_hz is not None and not (args.fit_only and args.clock_source and 1e8 < args.clock_hz < 1e10):
        ap.error("--clock-hz needs --fit-only, a --clock-source and a clock in Hz (e.g. 2.1e9)")
    if args.fit_only:
        doc = json.loads(args.out.read_text())
        if args.clock_hz is not None:
            assume_clock(doc, args.clock_hz, args.clock_source)
        doc["fit"] = fit(doc)
        write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
        _print_fit(doc["fit"])
        _print_decode(doc)
        return
    threads = tuple(int(t) for t in args.threads.split(","))
    g = Ggml(_find_lib_dir())
    probe_before = clock_probe()
    rows = measure(g, threads, args.calls, args.dram_mb)
    probe_after = clock_probe()
    clock_before, clock_after = checked_clock(probe_before), checked_clock(probe_after)
    clock = min(clock_before, clock_after)  # the lower: cycles per MAC err towards the slow side
    set_cycles_per_mac(rows, clock)
    flags = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1]
                break
    doc = {
        "what": "ggml mul_mat, Q4_K / Q6_K weights x f32 activations (Q8_K inside), llama.cpp CPU backend",
        "library": "llama-cpp-python 0.3.36 (llama.cpp vendored), built with -march=native",
        "cpu": platform.processor() or cpu_name(),
        "model_name": cpu_name(),
        "isa": sorted(f for f in flags.split() if f.startswith(("avx", "amx")) or f in ("fma", "f16c")),
        "clock_hz": {"before": clock_before, "after": clock_after, "used": clock},
        "clock_probe": {
            "used": "dependent imul r32,r32 chain, 3 cycles each (validate.kquant.CHAIN_CYCLES)",
            "before": probe_before,
            "after": probe_after,
        },
        "calls": args.calls,
        "rows": rows,
    }
    doc["fit"] = fit(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    ghz = (clock / 1e9, clock_before / 1e9, clock_after / 1e9)
    print("core clock {:.2f} GHz (before {:.2f}, after {:.2f})".format(*ghz))
    print("type  where  matrix       K     N    m thr   GMAC/s    GB/s  cyc/MAC")
    for r in rows:
        print(
            f"{r['type']:5} {r['where']:6} {r['matrix']:8} {r['k']:5d} {r['n']:5d} {r['tokens']:4d} "
            f"{r['threads']:3d} {r['gmac_per_s']:8.2f} {r['weight_gb_per_s']:7.2f} {r['cycles_per_mac']:8.4f}"
        )
    _print_fit(doc["fit"])
    _print_decode(doc)


def _print_decode(doc: dict) -> None:
    from hetsim.models import get_model
    from hetsim.strategies.moe_offload import routed_expert_bytes

    v3 = get_model("deepseek-v3")  # one token reads its top-k of the routed experts in every expert layer
    per_token = routed_expert_bytes(v3, "q4_k_m") * v3.experts_per_token / v3.num_experts
    for t, rate in decode_layer_rates(doc).items():
        print(
            f"decode expert layer (Q4_K_M, 1 token, from DRAM), {t:3d} threads: {rate / 1e9:7.2f} GB/s "
            f"(DeepSeek-V3's {per_token / 1e9:.2f} GB of routed experts per token: "
            f"{per_token / rate * 1e3:.1f} ms)"
        )


def _print_fit(f: dict) -> None:
    curves = {k: {t: round(c, 4) for t, c in v.items()} for k, v in f["curves"].items()}
    print("fitted (in cache, 1 thread):", curves)
    print("q4_k_m mix:", f["q4_k_m"])
    for h in f["held_out"]:
        print(
            f"  held out {h['type']} {h['where']:5} {h['matrix']:8} m={h['tokens']:3d}: measured "
            f"{h['measured']:.4f}, predicted {h['predicted']:.4f} ({100 * h['error']:+.1f} %)"
        )
    e = f["held_out_q4_k_m_abs_error"]
    print(f"held-out q4_k_m |error|: median {100 * e['median']:.1f} %, max {100 * e['max']:.1f} %")


if __name__ == "__main__":
    main()
