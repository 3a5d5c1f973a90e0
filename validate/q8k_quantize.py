"""Measure ggml's Q8_K activation quantisation on one core, in core cycles per element.

Before a Q4_K/Q6_K dot product, llama.cpp's kernels quantise the fp32 activations to Q8_K (the
``vec_dot_type`` of the k-quants). KTransformers V0.2 does that on one thread between its two
thread-pool jobs of a decode token's expert layer (``ktransformers_ext/operators/llamafile/moe.cpp``,
``MOE::forward_one``: the hidden state before the gate/up job; the k experts' intermediate after it,
since its task stride of 64 rows is not a multiple of Q8_K's 256-element block), so that work is
serial. This times ggml's own ``from_float`` for Q8_K (``ggml_get_type_traits_cpu``) on the sizes it
quantises for DeepSeek-V3 (7168, and 8 x 2048), fastest of many calls, and the core clock as
``validate/kquant.py`` does; cycles per element transfer to another x86 core running the same code.

    python -m validate.q8k_quantize --out validate/results/kquant/q8k-quantize-<machine>.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path

from hetsim.textfiles import write_text_atomic
from validate.calibrate import cpu_name
from validate.kquant import Ggml, _find_lib_dir, core_clock_hz

GGML_TYPE_Q8_K = 15
SIZES = (7168, 16384)  # DeepSeek-V3's hidden state; its 8 routed experts' 2048-wide intermediates


class _TypeTraitsCpu(ctypes.Structure):  # struct ggml_type_traits_cpu (ggml-cpu.h)
    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


_FromFloat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def quantize_seconds(g: Ggml, n: int, calls: int) -> float:
    """Fastest of ``calls`` quantisations of ``n`` floats to Q8_K on this thread."""
    g.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
    g.cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    from_float = _FromFloat(g.cpu.ggml_get_type_traits_cpu(GGML_TYPE_Q8_K).contents.from_float)
    x = (ctypes.c_float * n)(*[((i * 37) % 101 - 50) / 7.0 for i in range(n)])
    y = ctypes.create_string_buffer(2 * n)  # Q8_K: 292 bytes per 256 elements
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        from_float(x, y, n)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args(argv)
    g = Ggml(_find_lib_dir())
    clock = min(core_clock_hz(), core_clock_hz())
    rows = []
    for n in SIZES:
        s = quantize_seconds(g, n, args.calls)
        rows.append({"elements": n, "seconds": s, "cycles_per_element": s * clock / n})
    doc = {
        "what": "ggml from_float to Q8_K (the k-quants' activation type), one thread, fastest of calls",
        "library": "llama-cpp-python 0.3.36 (llama.cpp vendored), built with -march=native",
        "model_name": cpu_name(),
        "clock_hz": clock,
        "calls": args.calls,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"core clock {clock / 1e9:.2f} GHz")
    for r in rows:
        us, cyc = r["seconds"] * 1e6, r["cycles_per_element"]
        print(f"  {r['elements']:6d} floats: {us:7.2f} us, {cyc:.2f} cycles each")


if __name__ == "__main__":
    main()
