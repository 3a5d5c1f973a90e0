"""Run a plan for real: the CPU baseline, cpu-tp over gloo, and the CUDA paths (gpu-only, accelerate).

Every runner times the same thing the simulator reports for an offline batch: TTFT = the prefill
step until every sequence has its first token; TPOT = the mean of the ``gen_len - 1`` decode steps.
Each run is repeated after a warm-up (oneDNN primitive creation, first-touch page faults and gloo
connection set-up are not part of a step) and the median over repeats is kept.

cpu-tp ranks are separate processes (``torch.multiprocessing.spawn``) joined by gloo on
127.0.0.1; under ``torchrun`` (RANK, WORLD_SIZE, MASTER_ADDR set) the current process is one rank
and the job may span machines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetsim.models.spec import ModelSpec
from hetsim.textfiles import write_text_atomic
from hetsim.workload import Workload

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def model_record(spec: ModelSpec) -> dict[str, Any]:
    """``spec`` as a run and its report hold it: ``dataclasses.asdict``, ``quantized`` only when set
    (report readers from before the field refuse an unknown key; validate runs no quantised model)."""
    record = dataclasses.asdict(spec)
    if not record["quantized"]:
        del record["quantized"]
    return record


@dataclass(frozen=True)
class RunConfig:
    model: dict[str, Any]  # model_record(ModelSpec) (picklable across spawn)
    batch: int
    prompt_len: int
    gen_len: int
    world: int = 1
    threads: int = 1  # torch threads per rank
    dtype: str = "fp32"
    repeats: int = 3
    warmup_steps: int = 2
    seed: int = 0

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(**self.model)

    @property
    def workload(self) -> Workload:
        return Workload(self.batch, self.prompt_len, self.gen_len)


@dataclass
class Measured:
    ttft_s: float
    tpot_s: float
    e2e_s: float
    prefill_s: list[float] = field(default_factory=list)  # per repeat
    decode_s: list[list[float]] = field(default_factory=list)  # per repeat, per step
    tokens: list[int] = field(default_factory=list)  # first sequence's tokens (determinism check)
    weight_bytes_per_rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def merge_rounds(rounds: list[Measured]) -> Measured:
    """Rounds of the same run, interleaved in time with the other runs: the median of the rounds'
    TTFT and TPOT (a shared machine drifts over minutes; interleaving spreads the drift evenly)."""
    if len(rounds) == 1:
        return rounds[0]
    ttft = statistics.median(r.ttft_s for r in rounds)
    tpot = statistics.median(r.tpot_s for r in rounds)
    return Measured(
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=statistics.median(r.e2e_s for r in rounds),
        prefill_s=[t for r in rounds for t in r.prefill_s],
        decode_s=[d for r in rounds for d in r.decode_s],
        tokens=rounds[-1].tokens,
        weight_bytes_per_rank=rounds[-1].weight_bytes_per_rank,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def generate_timed(
    decoder,
    cfg: RunConfig,
    *,
    allreduce=None,
    gather=None,
    barrier: Callable[[], None] | None = None,
    sync: Callable[[], None] | None = None,
    fetch=None,
    linear=None,
) -> Measured:
    """Warm up, then ``repeats`` timed generations of the batch; returns the median metrics."""
    import torch

    sync = sync or (lambda: None)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randint(0, cfg.spec.vocab, (cfg.batch, cfg.prompt_len), generator=gen)
    context = cfg.prompt_len + cfg.gen_len

    def one(steps: int) -> tuple[float, list[float], list[int]]:
        decoder.reset(cfg.batch, context)
        if barrier is not None:
            barrier()
        sync()
        t0 = time.perf_counter()
        tok = decoder.step(prompt, 0, allreduce, gather, fetch, linear)
        sync()
        t1 = time.perf_counter()
        prefill, decode, out = t1 - t0, [], [int(tok[0])]
        for i in range(1, steps):
            t0 = time.perf_counter()
            tok = decoder.step(tok.view(-1, 1), cfg.prompt_len + i - 1, allreduce, gather, fetch, linear)
            sync()
            decode.append(time.perf_counter() - t0)
            out.append(int(tok[0]))
        return prefill, decode, out

    with torch.inference_mode():
        one(min(cfg.gen_len, 1 + cfg.warmup_steps))
        runs = [one(cfg.gen_len) for _ in range(cfg.repeats)]
    prefill = [r[0] for r in runs]
    tpots = [statistics.fmean(r[1]) if r[1] else 0.0 for r in runs]
    ttft, tpot = statistics.median(prefill), statistics.median(tpots)
    return Measured(
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=ttft + tpot * (cfg.gen_len - 1),
        prefill_s=prefill,
        decode_s=[r[1] for r in runs],
        tokens=runs[-1][2],
        weight_bytes_per_rank=decoder.weight_bytes(),
    )


# ---- CPU: baseline and cpu-tp -------------------------------------------------------------------
def _cpu_rank(rank: int, cfg: RunConfig, init: str, out: str) -> None:
    import torch

    torch.set_num_threads(cfg.threads)
    from validate.torch_model import TorchDecoder

    allreduce = gather = barrier = None
    if cfg.world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=cfg.world)

        def allreduce(t: torch.Tensor) -> None:
            dist.all_reduce(t)

        def gather(pairs: torch.Tensor) -> torch.Tensor:
            parts = [torch.empty_like(pairs) for _ in range(cfg.world)]
            dist.all_gather(parts, pairs)
            return torch.stack(parts)

        barrier = dist.barrier
    try:
        dec = TorchDecoder(cfg.spec, rank=rank, world=cfg.world, dtype=_torch_dtype(cfg.dtype), seed=cfg.seed)
        m = generate_timed(dec, cfg, allreduce=allreduce, gather=gather, barrier=barrier)
        if rank == 0:
            write_text_atomic(out, json.dumps(m.to_dict()))
    finally:
        if cfg.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def run_cpu(cfg: RunConfig) -> Measured:
    """``cfg.world`` ranks of ``cfg.threads`` threads each on this machine (world 1 = the baseline).

    Under torchrun (RANK and WORLD_SIZE in the environment) this process is one rank of that job.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        cfg = dataclasses.replace(cfg, world=int(os.environ["WORLD_SIZE"]))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "m.json")
            _cpu_rank(int(os.environ["RANK"]), cfg, "env://", out)
            return Measured(**json.loads(Path(out).read_text())) if os.path.exists(out) else None  # type: ignore[return-value]
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m.json")
        init = f"tcp://127.0.0.1:{free_port()}"
        # One process per rank even for the baseline: clean thread settings, weights freed on exit.
        mp.spawn(_cpu_rank, args=(cfg, init, out), nprocs=cfg.world, join=True)
        return Measured(**json.loads(Path(out).read_text()))


# ---- CUDA: gpu-only and accelerate --------------------------------------------------------------
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_gpu_only(cfg: RunConfig) -> Measured:
    """All weights resident on cuda:0 (fp16 by default), one process."""
    import torch

    from validate.torch_model import TorchDecoder

    if not cuda_available():
        raise RuntimeError("gpu-only needs CUDA, and torch.cuda.is_available() is False")
    dec = TorchDecoder(cfg.spec, dtype=_torch_dtype(cfg.dtype), device="cuda", seed=cfg.seed)
    return generate_timed(dec, cfg, sync=torch.cuda.synchronize)


def run_accelerate(cfg: RunConfig, gpu_layers: int, *, pinned: bool = False) -> Measured:
    """Accelerate-style offloading: the first ``gpu_layers`` layers resident on the GPU, the others in
    host memory and copied to the GPU synchronously right before they run (a module pre-forward hook),
    then dropped. Embedding, LM head and KV cache live on the GPU."""
    import torch

    from validate.torch_model import LayerWeights, TorchDecoder

    if not cuda_available():
        raise RuntimeError("accelerate needs CUDA, and torch.cuda.is_available() is False")
    dec = TorchDecoder(
        cfg.spec, dtype=_torch_dtype(cfg.dtype), device="cuda", weight_device="cpu", seed=cfg.seed
    )
    dec.shared_to("cuda")

    for i in range(len(dec.layers)):
        if i < gpu_layers:
            dec.layers[i] = dec.layers[i].map(lambda t: t.cuda())
        elif pinned:
            dec.layers[i] = dec.layers[i].map(lambda t: t.pin_memory())

    def fetch(i: int) -> LayerWeights:
        lw = dec.layers[i]
        if i < gpu_layers:
            return lw
        # Synchronous, as accelerate's AlignDevicesHook does: the copy finishes before the layer runs.
        moved = lw.map(lambda t: t.to("cuda", non_blocking=pinned))
        torch.cuda.synchronize()
        return moved

    return generate_timed(dec, cfg, sync=torch.cuda.synchronize, fetch=fetch)


def run_hetegen(cfg: RunConfig, plan: dict[str, Any], *, device: str = "cuda") -> Measured:
    """A HeteGen plan (as a dict) for real: resident modules on the GPU, the others split between
    the GPU (asynchronous copies from pinned memory) and a CPU thread (``validate.offload``)."""
    import torch

    from validate.offload import hetegen_decoder

    if device == "cuda" and not cuda_available():
        raise RuntimeError("hetegen needs CUDA, and torch.cuda.is_available() is False")
    run = hetegen_decoder(cfg.spec, plan, dtype=_torch_dtype(cfg.dtype), device=device, seed=cfg.seed)
    sync = torch.cuda.synchronize if device == "cuda" else None
    return generate_timed(run, cfg, sync=sync)


def run_flexgen(cfg: RunConfig, plan: dict[str, Any], *, device: str = "cuda") -> Measured:
    """A FlexGen plan (as a dict) for real with its block schedule (``validate.offload``); the batch
    is the plan's block, ``gpu_batch_size x num_gpu_batches`` sequences."""
    import torch

    from validate.offload import flexgen_decoder

    if device == "cuda" and not cuda_available():
        raise RuntimeError("flexgen needs CUDA, and torch.cuda.is_available() is False")
    run = flexgen_decoder(cfg.spec, plan, dtype=_torch_dtype(cfg.dtype), device=device, seed=cfg.seed)
    block = int(plan["gpu_batch_size"]) * int(plan["num_gpu_batches"])
    sync = torch.cuda.synchronize if device == "cuda" else None
    return generate_timed(run, dataclasses.replace(cfg, batch=block), sync=sync)
