"""Where a GPU decode step's time goes: the kernels it launches and the host's pace issuing them.

``python -m validate.step_profile --model llama2-7b --batch 1 --out FILE.json`` builds the validate
decoder on CUDA (fp16), prefills a prompt, then profiles a few decode steps with ``torch.profiler``:
per step, the wall time, the number of CUDA kernels and the sum of their GPU times. A step whose
wall time is far above its kernels' sum is paced by the host issuing the kernels (eager PyTorch),
not by the GPU; the kernel count against the ops hetsim costs for the step says how many kernels
one costed op stands for, and against the kernels hetsim counts (``hetsim.models.kernels``: torch's
own) how many the libraries add (split-K reductions, split-KV combines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from hetsim.textfiles import write_text_atomic


def positions(prompt_len: int, steps: int) -> tuple[list[int], list[int], list[int]]:
    """Decode positions: the warm-up's, the timed steps', the profiled steps'. The warm-up runs a
    whole pass over the positions measured later (then the cache is reset and the prompt prefilled
    again): a generation's first visit of a position ran at ~70-80 ms a step on the H200 host where
    later generations took 11-21 (validate runs), and 3 warm-up steps left step_profile timing those
    (wall 63 ms at batch 1 against 5.7 ms of kernels)."""
    timed = list(range(prompt_len, prompt_len + steps))
    profiled = list(range(prompt_len + steps, prompt_len + 2 * steps))
    return timed + profiled, timed, profiled


def profile(model: str, batch: int, prompt_len: int, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from hetsim.models import get_model
    from hetsim.models.kernels import op_kernels
    from hetsim.models.layer_ops import step_ops
    from validate.microbench import decode_step_ops
    from validate.torch_model import TorchDecoder

    spec = get_model(model)
    dec = TorchDecoder(spec, dtype=torch.float16, device="cuda")
    ids = torch.randint(0, spec.vocab, (batch, prompt_len))
    warm, timed, profiled = positions(prompt_len, steps)
    walls = []
    with torch.inference_mode():
        for run in ("warm-up", "timed"):  # the warm-up visits every position the timed run does
            dec.reset(batch, prompt_len + len(warm) + 1)
            tok = dec.step(ids, 0).view(-1, 1)
            if run == "warm-up":
                for p in warm:
                    tok = dec.step(tok, p).view(-1, 1)
            torch.cuda.synchronize()
        for p in timed:  # timed without the profiler (it slows the host)
            t0 = time.perf_counter()
            tok = dec.step(tok, p).view(-1, 1)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for p in profiled:
                tok = dec.step(tok, p).view(-1, 1)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    gpu_s = sum(e.device_time for e in kernels) * 1e-6 / steps
    ops = decode_step_ops(spec, batch, prompt_len + 4)
    counted = op_kernels(spec, step_ops(spec, "decode", batch, 1, prompt_len + 4))
    return {
        "model": dataclasses.asdict(spec)["name"], "batch": batch, "prompt_len": prompt_len,
        "steps": steps, "wall_s": sorted(walls)[len(walls) // 2], "kernels_per_step": len(kernels) / steps,
        "kernel_gpu_s_per_step": gpu_s, "hetsim_ops_per_step": ops, "hetsim_kernels_per_step": counted,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    rows = []
    for b in (int(x) for x in a.batch.split(",")):
        rows.append(profile(a.model, b, a.prompt_len, a.steps))
        print(json.dumps(rows[-1]), flush=True)
    write_text_atomic(a.out, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
