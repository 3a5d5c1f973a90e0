"""Fit a GPU's op-cost constants to measured kernels, and check them on kernels held out.

The cost of a kernel is hetsim's own (``hetsim.costs.op_cost``: roofline, Hockney half-lengths,
a launch overhead); what is fitted are the constants of ``Efficiency`` that it reads:

    matmul            GEMM efficiency at many rows (x peak FLOP/s)
    matmul_half_rows  rows at which a GEMM reaches half of that
    memory            streaming efficiency (x peak bandwidth), shared by GEMMs and elementwise ops
    stream_half_row   weight-row bytes at which a GEMM streams at half of that
    overhead          fixed time per kernel

by least squares on log(predicted / measured) over the kernels given (a relative error, so that
a 5 us kernel counts as much as a 5 ms one), plus the streaming efficiency of elementwise kernels
(``memory_by_kind.elementwise``), which measure far below GEMM weight streaming. The all-reduce
is fitted as one line per world size (latency + bytes / bandwidth, ``Link.allreduce``): NCCL
switches protocols by size and ranks, which the ring formula does not follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from hetsim.costs.collectives import Fit, allreduce_time
from hetsim.costs.op_cost import op_cost
from hetsim.hardware.types import ComputeDevice, Efficiency
from validate.profiles import AttentionSample, CollectiveSample, KernelSample

FIT_TOKENS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
PARAMS = ("matmul", "matmul_half_rows", "memory", "stream_half_row_bytes", "overhead_s", "elementwise_memory")
START = (0.7, 32.0, 0.8, 2048.0, 5e-6, 0.5)
LOWER = (0.05, 1e-3, 0.05, 1e-3, 1e-8, 0.02)
UPPER = (1.0, 1e5, 1.0, 1e8, 1e-3, 1.0)


@dataclass(frozen=True)
class KernelFit:
    matmul: float
    matmul_half_rows: float
    memory: float
    stream_half_row_bytes: float
    overhead_s: float
    elementwise_memory: float  # streaming efficiency of elementwise kernels (norms, adds, activations)
    samples: int  # kernels fitted to

    def efficiency(self, base: Efficiency) -> Efficiency:
        return dataclasses.replace(
            base,
            compute={**base.compute, "matmul": self.matmul},
            memory=self.memory,
            overhead_s=self.overhead_s,
            matmul_half_rows=self.matmul_half_rows,
            stream_half_row_bytes=self.stream_half_row_bytes,
            memory_by_kind={**base.memory_by_kind, "elementwise": self.elementwise_memory},
            fused_kernels=True,  # the measured kernels are the fused ones
        )

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in PARAMS}


def with_efficiency(device: ComputeDevice, eff: Efficiency) -> ComputeDevice:
    return dataclasses.replace(device, efficiency=eff)


def predict(device: ComputeDevice, samples: Sequence[KernelSample] | Sequence[AttentionSample]) -> np.ndarray:
    return np.array([op_cost(device, s.kernel).time_s for s in samples])


def measured(
    samples: Sequence[KernelSample] | Sequence[CollectiveSample] | Sequence[AttentionSample],
) -> np.ndarray:
    return np.array([s.seconds for s in samples])


def fit_kernels(device: ComputeDevice, samples: Sequence[KernelSample]) -> KernelFit:
    """The six constants for ``device`` (its peaks from the catalogue) that best predict ``samples``
    (a log-spaced subset of their token counts is used; the rest only adds near-duplicates)."""
    chosen = [s for s in samples if s.tokens in FIT_TOKENS] or list(samples)
    if not chosen:
        raise ValueError("no kernels to fit")
    meas = np.log(measured(chosen))

    def residuals(x: np.ndarray) -> np.ndarray:
        fit = KernelFit(*np.exp(x), samples=len(chosen))
        dev = with_efficiency(device, fit.efficiency(device.efficiency))
        return np.log(predict(dev, chosen)) - meas

    res = least_squares(
        residuals, np.log(START), bounds=(np.log(LOWER), np.log(UPPER)), x_scale=1.0, max_nfev=400
    )
    return KernelFit(*(float(v) for v in np.exp(res.x)), samples=len(chosen))


@dataclass(frozen=True)
class AttentionFit:
    """Prefill attention: ``compute.attention`` and ``attention_half_rows`` (query rows)."""

    attention: float
    attention_half_rows: float
    samples: int

    def efficiency(self, base: Efficiency) -> Efficiency:
        return dataclasses.replace(
            base,
            compute={**base.compute, "attention": self.attention},
            attention_half_rows=self.attention_half_rows,
        )


def fit_attention(device: ComputeDevice, samples: Sequence[AttentionSample]) -> AttentionFit:
    """Fitted to prefill attention kernels (decode attention is bound by the KV bytes it reads,
    which ``memory`` already covers); the device's other constants stay as they are."""
    chosen = [s for s in samples if s.phase == "prefill"]
    if not chosen:
        raise ValueError("no prefill attention to fit")
    meas = np.log(measured(chosen))

    def residuals(x: np.ndarray) -> np.ndarray:
        fit = AttentionFit(*np.exp(x), samples=0)
        dev = with_efficiency(device, fit.efficiency(device.efficiency))
        return np.log(predict(dev, chosen)) - meas

    res = least_squares(residuals, np.log([0.5, 256.0]), bounds=(np.log([0.01, 1e-3]), np.log([1.0, 1e6])))
    eff, half = (float(v) for v in np.exp(res.x))
    return AttentionFit(eff, half, len(chosen))


@dataclass(frozen=True)
class LineFit:
    """All-reduce at one world size: latency + bytes / bandwidth (``Link.allreduce``)."""

    ranks: int
    latency_s: float
    bandwidth: float  # bytes/s
    samples: int


Table = tuple[tuple[float, ...], tuple[float, ...]]  # log bytes ascending, log seconds (Link.allreduce_table)


def allreduce_tables(samples: Sequence[CollectiveSample]) -> dict[int, Table]:
    """The measured medians as a rig carries them (``hetsim.hardware.loader.allreduce_table``)."""
    by: dict[int, dict[float, list[float]]] = {}
    for s in samples:
        by.setdefault(s.ranks, {}).setdefault(s.nbytes, []).append(s.seconds)
    return {
        r: (
            tuple(float(np.log(x)) for x in sorted(sizes)),
            tuple(float(np.log(np.median(sizes[x]))) for x in sorted(sizes)),
        )
        for r, sizes in by.items()
    }


def predict_allreduce(
    fits: dict[int, LineFit], samples: Sequence[CollectiveSample], tables: dict[int, Table] | None = None
) -> np.ndarray:
    """The fitted line per world size; with ``tables``, the measured medians inside their range."""
    out = []
    for s in samples:
        f = fits[s.ranks]
        fit = Fit(f.latency_s, f.bandwidth, *(tables or {}).get(s.ranks, ((), ())))
        out.append(allreduce_time(s.ranks, s.nbytes, 0.0, 1.0, fit).time_s)
    return np.array(out)


def fit_allreduce(samples: Sequence[CollectiveSample]) -> dict[int, LineFit]:
    """One line per world size, least squares on log time (small messages count as much as big)."""
    if not samples:
        raise ValueError("no all-reduce samples to fit")
    fits = {}
    for ranks in sorted({s.ranks for s in samples}):
        sub = [s for s in samples if s.ranks == ranks]
        nbytes = np.array([s.nbytes for s in sub])
        meas = np.log(measured(sub))

        def residuals(x: np.ndarray, nbytes=nbytes, meas=meas) -> np.ndarray:
            lat, bw = np.exp(x)
            return np.log(lat + nbytes / bw) - meas

        res = least_squares(
            residuals, np.log([10e-6, 100e9]), bounds=(np.log([1e-8, 1e8]), np.log([1e-2, 1e13]))
        )
        lat, bw = (float(v) for v in np.exp(res.x))
        fits[ranks] = LineFit(ranks, lat, bw, len(sub))
    return fits


@dataclass(frozen=True)
class Errors:
    """Relative errors |predicted - measured| / measured of a set of figures."""

    count: int
    median: float
    within_15: float  # share of figures within 15 %
    p90: float

    @classmethod
    def of(cls, pred: np.ndarray, meas: np.ndarray) -> Errors:
        err = np.abs(pred - meas) / meas
        return cls(len(err), float(np.median(err)), float(np.mean(err <= 0.15)), float(np.quantile(err, 0.9)))
