"""Time FlexGen's host-to-GPU copy of 4-bit packed data, part by part, on this machine.

FlexGen 0.1.8's copy threads (``pytorch_backend.py`` ``copy_worker_func``) relay every copy that
touches the GPU through one pinned fp16 buffer viewed to the source's shape::

    tmp_cpu_buf = cpu_buf[:size].view(src_data.shape)   # pinned, float16
    tmp_cpu_buf.copy_(src_data)                          # uint8 -> fp16 by value, on the CPU
    dst_data.copy_(tmp_cpu_buf)                          # blocking, fp16 -> uint8 GPU tensor

For packed uint8 data the first copy converts on the CPU (reads S bytes, writes 2S); the second is
a blocking copy across devices and dtypes, which PyTorch does through temporaries
(``copy_requires_temporaries`` in aten/src/ATen/native/cuda/Copy.cu: blocking conversions run on the
CPU), so it converts fp16 -> uint8 into a fresh pageable tensor and then copies that to the GPU
from pageable memory. fp16 data (the scales, uncompressed weights) takes the same relay without a
conversion: a host memcpy into the pinned buffer, then a pinned copy.

Every part is timed alone, then the whole relay, for packed and plain data, so that the model's
form (conversions stream bytes through host memory; the last hop runs at the pageable rate) can be
checked part by part. ``python -m validate.packed_hop --out FILE.json`` (needs CUDA for the copies;
without it only the host conversions are timed).
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
from typing import Any

from hetsim.textfiles import write_text_atomic
from validate.microbench import timeit

COPY_THREADS = 4  # TorchDisk(num_copy_threads=4), pytorch_backend.py:624


def measure(nbytes: int, threads: list[int]) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else None
    kw: dict[str, Any] = {"min_time": 0.2, "reps": 5, "sync": sync}
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)  # pageable, as a memmap's pages are
    relay = torch.empty(nbytes, dtype=torch.float16, pin_memory=cuda)
    relay.copy_(src)
    plain = torch.empty(nbytes // 2, dtype=torch.float16).uniform_(-1, 1)  # the same bytes in fp16
    touched = torch.zeros(nbytes, dtype=torch.uint8)  # uint8 memory already faulted in
    out: dict[str, Any] = {"bytes": nbytes, "cuda": torch.cuda.get_device_name(0) if cuda else None}
    per_threads = []
    saved = torch.get_num_threads()
    for n in threads:
        torch.set_num_threads(n)
        row: dict[str, Any] = {"threads": n}
        # host parts (CPU): the relay's conversion, its way back into a fresh pageable tensor, a memcpy
        row["u8_to_fp16_pinned_s"] = timeit(lambda: relay.copy_(src), **kw)
        row["fp16_to_u8_new_s"] = timeit(lambda: relay.to(torch.uint8), **kw)
        row["fp16_memcpy_to_pinned_s"] = timeit(lambda: relay[: nbytes // 2].copy_(plain), **kw)
        row.update(_fresh_parts(torch, relay, touched, kw))
        if cuda:
            dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
            dst16 = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda")
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):  # as the copy thread: its own stream, blocking copies
                row["h2d_pageable_u8_s"] = timeit(lambda dst=dst: dst.copy_(src), **kw)
                row["h2d_pinned_fp16_s"] = timeit(lambda d=dst16: d.copy_(relay[: nbytes // 2]), **kw)

                def packed(dst=dst) -> None:
                    tmp = relay.view(src.shape)
                    tmp.copy_(src)
                    dst.copy_(tmp)

                def plain_relay(dst16=dst16) -> None:
                    tmp = relay[: nbytes // 2].view(plain.shape)
                    tmp.copy_(plain)
                    dst16.copy_(tmp)

                row["packed_relay_s"] = timeit(packed, **kw)
                row["plain_relay_s"] = timeit(plain_relay, **kw)
            torch.cuda.synchronize()
            del dst, dst16
        per_threads.append(row)
        print(json.dumps(row), flush=True)
    torch.set_num_threads(saved)
    out["runs"] = per_threads
    return out


def _fresh_parts(torch: Any, relay: Any, touched: Any, kw: dict[str, Any]) -> dict[str, float]:
    """The parts of ``fp16_to_u8_new_s``, so that a host's conversion and its page faults can be told
    apart (the form carries cycles by cores x clock; first-touch faults are the OS's, per 4 KiB page):
    the same conversion into uint8 memory already touched; a fresh tensor's first touch (a fill), and
    the same fill of touched memory (fresh - touched = the faults). And the conversion as FlexGen's
    copy threads run it: ``COPY_THREADS`` Python threads, each converting its quarter into a fresh
    tensor at once (each thread's intra-op pool is torch's setting; they share the cores)."""
    n = touched.numel()
    q = n // COPY_THREADS

    def copy_threads() -> None:
        def one(i: int) -> None:
            relay[i * q : (i + 1) * q].to(torch.uint8)

        workers = [threading.Thread(target=one, args=(i,)) for i in range(COPY_THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return {
        "fp16_to_u8_touched_s": timeit(lambda: touched.copy_(relay), **kw),
        "u8_fill_fresh_s": timeit(lambda: torch.empty(n, dtype=torch.uint8).fill_(1), **kw),
        "u8_fill_touched_s": timeit(lambda: touched.fill_(1), **kw),
        "fp16_to_u8_new_copy_threads_s": timeit(copy_threads, **kw),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mib", type=int, default=256, help="packed bytes per copy, MiB (>> LLC)")
    ap.add_argument("--threads", default="1,4,16", help="torch intra-op threads, comma separated")
    a = ap.parse_args(argv)
    import torch

    from validate.calibrate import cpu_name

    threads = [int(t) for t in a.threads.split(",") if t.strip()]
    doc = {
        "host": platform.node(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        **measure(a.mib * 2**20, threads),
    }
    write_text_atomic(a.out, json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
