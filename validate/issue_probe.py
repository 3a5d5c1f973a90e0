"""The host's pace issuing an eager decoder's kernels, measured three ways on one CUDA host.

``python -m validate.issue_probe --out FILE.json`` times decode steps of the validate decoder (fp16)
at the tiny width calibrate uses (``microbench.tiny_decoder``) and at Llama-2-7B's width with its
depth cut, at 1 and 16 torch threads:

- ``sync_s``: one step then ``torch.cuda.synchronize`` (median);
- ``queued_s``: steps back to back, one synchronize at the end (calibrate's ``timeit``), per step;
- ``issue_s``: the host's time to issue one step while a sleep kernel queued ahead keeps the GPU
  busy, so that no launch waits on it (``microbench.issue_behind_busy_gpu``, as calibrate times it;
  None where the GPU went idle before the issue ended);
- ``kernels``: CUDA kernels per step (torch.profiler).

On the H200 host of session 19 the tiny decoder cost 20 us per kernel in calibrate while a whole
Llama-2-7B decode step was paced at 9.2 us per kernel: this probe says which of the three regimes
the difference lives in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time

from hetsim.textfiles import write_text_atomic


def _kernels_per_step(dec, tok, pos: int, steps: int = 2) -> float:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for s in range(steps):
            dec.step(tok, pos + s)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA") / steps


def probe(width: str, layers: int, threads: int, reps: int) -> dict:
    import torch

    from hetsim.models import get_model
    from validate.microbench import issue_behind_busy_gpu, timeit, tiny_decoder
    from validate.torch_model import TorchDecoder

    torch.set_num_threads(threads)
    spec = tiny_decoder(layers) if width == "tiny" else dataclasses.replace(get_model(width), layers=layers)
    prompt = 8 if width == "tiny" else 512
    dec = TorchDecoder(spec, dtype=torch.float16, device="cuda")
    ids = torch.zeros(1, prompt, dtype=torch.long)
    sync = torch.cuda.synchronize
    with torch.inference_mode():
        dec.reset(1, prompt + 8)
        tok = dec.step(ids, 0).view(1, 1)
        for _ in range(3):
            dec.step(tok, prompt)
        sync()
        synced = []
        for _ in range(reps):
            t0 = time.perf_counter()
            dec.step(tok, prompt)
            sync()
            synced.append(time.perf_counter() - t0)
        queued = timeit(lambda: dec.step(tok, prompt), min_time=0.02, reps=3, sync=sync)  # as calibrate
        issued = issue_behind_busy_gpu(lambda: dec.step(tok, prompt), reps)
        kernels = _kernels_per_step(dec, tok, prompt)
    return {
        "width": width, "layers": layers, "threads": threads, "kernels": kernels,
        "sync_s": statistics.median(synced), "queued_s": queued, "issue_s": issued,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    cases = [("tiny", n) for n in (1, 2, 4, 8, 16)] + [("llama2-7b", n) for n in (1, 2, 4, 8, 32)]
    rows = []
    for threads in (1, 16):
        for width, layers in cases:
            rows.append(probe(width, layers, threads, a.reps))
            r = rows[-1]
            per = {k: (r[f"{k}_s"] or math.nan) / r["kernels"] * 1e6 for k in ("sync", "queued", "issue")}
            print(
                f"{width:>9} L{layers:<2} t{threads:<2} kernels {r['kernels']:6.0f}  us/kernel: "
                + "  ".join(f"{k} {v:6.2f}" for k, v in per.items()),
                flush=True,
            )
            write_text_atomic(a.out, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
