"""Op-cost constants for a GPU without kernel tables, from its datasheet and what measured GPUs teach.

Fitted per GPU (``validate.kernel_fit``), the constants of A100-80G SXM and H100 SXM say:

- GEMM efficiency at many rows, weight-streaming efficiency, elementwise streaming efficiency and
  the overhead per kernel are properties of the engine's kernels more than of the part (0.76 and
  0.76; 0.80 and 0.91; 0.56 and 0.62; 3.7 and 3.0 us): the rule takes their mean.
- The rows at which a GEMM reaches half its peak rate grow with the part's ridge point (peak FLOP/s
  over memory bandwidth, FLOP per byte): 0.566 x ridge on A100 and 0.567 x ridge on H100. A GEMM
  over m rows of fp16 does about m FLOP per weight byte, so it leaves the memory-bound regime near
  m = ridge, and the half-performance length follows it. The rule takes the mean ratio times the
  GPU's own datasheet ridge.

``rule_for(device)`` gives a ``KernelFit`` for any catalogue GPU (graded ``fitted``: fitted on
A100 and H100 kernels, transferred by this rule). A40 is the held-out test (its kernels are
measured but never fitted to here): ``validate.holdout.transfer_rows``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hetsim.hardware.types import ComputeDevice
from validate.kernel_fit import KernelFit


def ridge(device: ComputeDevice) -> float:
    """Datasheet ridge point: dense fp16 FLOP/s per byte/s of memory bandwidth."""
    return device.flops("fp16") / device.mem_bw


@dataclass(frozen=True)
class TransferRule:
    matmul: float
    half_rows_per_ridge: float  # matmul_half_rows = this x ridge(device)
    memory: float
    stream_half_row_bytes: float
    overhead_s: float
    elementwise_memory: float
    fitted_on: tuple[str, ...]  # catalogue GPUs whose fitted constants the rule averages

    def constants(self, device: ComputeDevice) -> KernelFit:
        return KernelFit(
            self.matmul,
            self.half_rows_per_ridge * ridge(device),
            self.memory,
            self.stream_half_row_bytes,
            self.overhead_s,
            self.elementwise_memory,
            samples=0,
        )


def fit_rule(fits: Sequence[tuple[ComputeDevice, KernelFit]]) -> TransferRule:
    """The rule from per-GPU fits: means of the engine constants and of half rows / ridge."""
    if not fits:
        raise ValueError("no fitted GPUs to transfer from")

    def mean(name: str) -> float:
        return float(np.mean([getattr(f, name) for _, f in fits]))

    return TransferRule(
        matmul=mean("matmul"),
        half_rows_per_ridge=float(np.mean([f.matmul_half_rows / ridge(d) for d, f in fits])),
        memory=mean("memory"),
        stream_half_row_bytes=mean("stream_half_row_bytes"),
        overhead_s=mean("overhead_s"),
        elementwise_memory=mean("elementwise_memory"),
        fitted_on=tuple(d.model for d, _ in fits),
    )


# ---- per catalogue GPU: an efficiency entry for a rig ------------------------------------------------
MEASURED = {"a100-80g": "a100", "h100-sxm": "h100", "a40": "a40"}  # catalogue GPU -> its kernel tables


def efficiency_block(fit: KernelFit, source: str) -> dict[str, Any]:
    """An ``efficiency:`` entry for a GPU in a rig (fused kernels, graded fitted)."""

    def q(value: Any) -> dict[str, Any]:
        return {"value": value, "source": source, "grade": "fitted"}

    return {
        "compute": {"matmul": q(round(fit.matmul, 4))},
        "memory": q(round(fit.memory, 4)),
        "overhead": q(f"{fit.overhead_s * 1e6:.3f} us"),
        "matmul_half_rows": q(round(fit.matmul_half_rows, 1)),
        "stream_half_row": q(f"{fit.stream_half_row_bytes:.0f} B"),
        "kernels": "fused",
        "memory_by_kind": {"elementwise": q(round(fit.elementwise_memory, 4))},
    }


@lru_cache(maxsize=8)
def own_fit(gpu: str, root: Path) -> tuple[ComputeDevice, KernelFit]:
    """A measured GPU (class-default efficiency) and the constants fitted to all its kernels."""
    from validate.holdout import catalogue_gpu
    from validate.kernel_fit import fit_kernels
    from validate.profiles import read_kernels

    dev = catalogue_gpu(gpu)
    return dev, fit_kernels(dev, read_kernels(root, MEASURED[gpu]))


def catalogue_blocks(root: Path) -> dict[str, dict[str, Any]]:
    """Per catalogue GPU: its own fit where kernel tables exist, else the rule from A100 and H100."""
    from hetsim.hardware.loader import catalog
    from validate.holdout import catalogue_gpu

    own = {gpu: own_fit(gpu, root) for gpu in MEASURED}
    rule = fit_rule([own["a100-80g"], own["h100-sxm"]])
    out = {}
    for gpu in catalog().names("gpus"):
        if gpu in own:
            src = "fitted to Vidur's measured kernels in hardware_profiles/measured/vidur/compute/"
            src += MEASURED[gpu]
            out[gpu] = efficiency_block(own[gpu][1], src)
        else:
            dev = catalogue_gpu(gpu)
            src = (
                "fitted: transfer rule from A100-80G and H100 SXM kernel fits (Vidur) and this GPU's "
                f"datasheet ridge point {ridge(dev):.0f} FLOP/B (validate/transfer.py, docs/measured-gpus.md)"
            )
            out[gpu] = efficiency_block(rule.constants(dev), src)
    return out


def main(argv: Sequence[str] = ()) -> None:
    """``python -m validate.transfer [PROFILES_DIR]``: per catalogue GPU, the ``efficiency:`` entry a
    rig's GPU may carry (not applied to the catalogue: see docs/measured-gpus.md)."""
    import yaml

    from validate.holdout import TABLES

    blocks = catalogue_blocks(Path(argv[0]) if argv else TABLES)
    sys.stdout.write(yaml.safe_dump(blocks, sort_keys=False, width=200))


if __name__ == "__main__":
    main(sys.argv[1:])
