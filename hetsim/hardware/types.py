"""The hardware model inside hetsim: plain frozen dataclasses, SI units.

Files are parsed into these once (``hetsim.hardware.loader``); nothing downstream reads YAML.
Every number that came from a file keeps its provenance (source and grade) in ``provenance``,
keyed by the field name, so a result can report the weakest grade it relied on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, TypeVar

T = TypeVar("T")
DeviceKind = Literal["gpu", "cpu"]
LinkKind = Literal["pcie", "nvlink", "upi", "ethernet", "infiniband", "rdma", "wan", "shm", "sata", "nvme"]


class Grade(IntEnum):
    """How much to trust a number; lower is weaker. A result reports the minimum it used."""

    ASSUMED = 0
    FITTED = 1
    PAPER = 2
    MEASURED = 3
    DATASHEET = 4


@dataclass(frozen=True)
class Provenance:
    source: str
    grade: Grade


PEER_16BIT = {"fp16": "bf16", "bf16": "fp16"}  # where one 16-bit format was not measured, the other


def _by_dtype(table: Mapping[str, T], dtype: str) -> T | None:
    """A dtype's own entry, else its 16-bit peer's (as ``ComputeDevice.flops`` falls back), else None."""
    if dtype in table:
        return table[dtype]
    return table.get(PEER_16BIT.get(dtype, ""))


@dataclass(frozen=True)
class MatmulCurve:
    """One compute dtype's matmul roofline, measured (``hetsim calibrate``): a GEMM of m >= 2 rows
    reaches ``compute x m / (m + half_rows)`` of peak_flops[dtype]; a matrix-vector product streams
    weight rows of r bytes at ``memory x r / (r + half_row_bytes)`` of the memory bandwidth. CPU
    kernels differ by dtype (torch's bf16 GEMV converts every weight and runs far below the fp32
    one, while bf16 GEMMs beat fp32), so one curve for all dtypes does not carry over.

    ``rows``, where measured, replaces the GEMM's Hockney form: (m, share of peak) at the rows run, a
    power law between them; outside them Hockney's shape, scaled to pass through the nearest row run
    (held out on the recorded sweeps: 14.6% mean error past the rows fitted; the last rate held flat
    33.8%, Hockney's own curve, which misses the measured rows, 15.1%)."""

    compute: float
    half_rows: float
    memory: float
    half_row_bytes: float
    rows: tuple[tuple[float, float], ...] = ()

    def gemm_compute(self, m: float) -> float:
        """Share of peak_flops[dtype] a GEMM of m >= 2 rows reaches."""
        if not self.rows:
            return self.compute * m / (m + self.half_rows)
        # Outside the rows run, Hockney's shape anchored at the nearest one: the measured rate there,
        # scaled by how much more (or less) of its limit Hockney's curve reaches at m.
        edge = min(max(m, self.rows[0][0]), self.rows[-1][0])
        return loglog_interp(self.rows, edge) * self._hockney(m) / self._hockney(edge)

    def _hockney(self, m: float) -> float:
        return m / (m + self.half_rows)


@dataclass(frozen=True)
class Efficiency:
    """Achieved / peak, global per device class and op kind (see docs/architecture.md).

    ``compute[kind]`` scales peak FLOP/s for that op kind; ``memory`` scales peak memory
    bandwidth; ``overhead_s`` is the fixed cost of launching one op (kernel launch or
    thread-pool dispatch). Fitted by ``hetsim calibrate`` where measurable.
    """

    compute: Mapping[str, float]
    memory: float
    overhead_s: float
    # Hockney half-performance lengths (0 = off, the catalogue default; fitted by calibrate):
    # a GEMM of m >= 2 rows reaches compute[matmul] x m / (m + matmul_half_rows) (m = 1 runs a
    # matrix-vector kernel, which is memory-bound); weights whose rows are r bytes long stream at
    # memory x r / (r + stream_half_row_bytes).
    matmul_half_rows: float = 0.0
    stream_half_row_bytes: float = 0.0
    # The engine runs fused kernels (fused QKV, fused gate+up, residual add fused into the norm; see
    # hetsim.models.fusion): set by profiles fitted to such kernels, off in the catalogue.
    fused_kernels: bool = False
    # Streaming efficiency of op kinds other than matmuls where it differs from ``memory`` (measured
    # elementwise kernels stream far below GEMM weight streaming); absent kinds use ``memory``.
    memory_by_kind: Mapping[str, float] = field(default_factory=dict)
    # Attention over s query rows per sequence reaches compute[attention] x s / (s + this) (0 = off):
    # short prefills leave FlashAttention-style kernels far below their long-prompt rate.
    attention_half_rows: float = 0.0
    # Folder of measured per-layer kernel tables (Vidur's compute/<gpu> layout): measured GEMM shapes
    # cost their interpolated measured time inside the measured token range (hetsim.costs.kernel_tables).
    kernel_tables: str = ""
    # Measured quantised CPU kernels (llama.cpp's k-quants): compute dtype -> ((tokens, core cycles per
    # multiply-accumulate), ...) by tokens sharing each weight row. A device with cores and a clock runs
    # such a matmul at 2 x cores x clock / cycles FLOP/s (hetsim.costs.op_cost), no compute efficiency:
    # the cycles are achieved ones, measured (validate/kquant.py) and transferred by cores x clock.
    kernel_cycles: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)

    # Measured single-thread quantisation of fp32 activations to a k-quant dot-product type (llama.cpp's
    # Q8_K): activation type -> core cycles per element (validate/q8k_quantize.py), carried by clock.
    quantize_cycles: Mapping[str, float] = field(default_factory=dict)

    def cycles_per_mac(self, dtype: str, tokens: float) -> float:
        """Cycles per MAC of the measured kernel for ``dtype`` at ``tokens`` per weight row; 0 = none."""
        points = self.kernel_cycles.get(dtype)
        return log_interp(points, max(tokens, 1.0)) if points else 0.0

    # Per compute dtype matmul curves where measured; other dtypes use the fields above.
    matmul_by_dtype: Mapping[str, MatmulCurve] = field(default_factory=dict)
    # Per compute dtype fixed cost per op where measured (torch's bf16 ops on a CPU dispatch through
    # conversions: a tiny bf16 decoder step costs ~1.5x the fp32 one); other dtypes pay overhead_s.
    overhead_by_dtype: Mapping[str, float] = field(default_factory=dict)
    # Host time issuing one kernel of an op (``Op.kernels``) where measured (0 = unknown): the host
    # issues ahead of the device, so ops cost max(issue, roofline) and no ``overhead_s``
    # (hetsim.costs.op_cost); such a GPU runs eager PyTorch, an op's extra kernels memory passes of their
    # own (hetsim.models.kernel_bytes). Unknown keeps ``overhead_s`` per op, added to the roofline.
    kernel_issue_s: float = 0.0

    def overhead_for(self, dtype: str) -> float:
        own = _by_dtype(self.overhead_by_dtype, dtype)
        return self.overhead_s if own is None else own

    def compute_for(self, kind: str) -> float:
        return self.compute.get(kind, self.compute.get("matmul", 1.0))

    def memory_for(self, kind: str) -> float:
        return self.memory_by_kind.get(kind, self.memory)

    def attention_compute(self, rows: float) -> float:
        eff = self.compute_for("attention")
        half = self.attention_half_rows
        return eff * rows / (rows + half) if half > 0 and rows > 0 else eff

    def matmul_compute(self, rows: float, dtype: str = "") -> float:
        curve = _by_dtype(self.matmul_by_dtype, dtype)
        if curve:
            return curve.gemm_compute(rows) if rows > 1 else curve.compute
        eff, half = self.compute_for("matmul"), self.matmul_half_rows
        return eff * rows / (rows + half) if rows > 1 else eff

    def matmul_memory(self, row_bytes: float, dtype: str = "") -> float:
        curve = _by_dtype(self.matmul_by_dtype, dtype)
        eff, half = self.memory, self.stream_half_row_bytes
        if curve:
            eff, half = curve.memory, curve.half_row_bytes
        return eff * row_bytes / (row_bytes + half) if row_bytes > 0 else eff


def log_interp(points: tuple[tuple[float, float], ...] | list[tuple[float, float]], x: float) -> float:
    """Linear in log(x) between measured (x, y) points (x increasing, > 0), flat outside them."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return points[-1][1]


def loglog_interp(points: tuple[tuple[float, float], ...], x: float) -> float:
    """A power law between measured (x, y) points (x increasing, x and y > 0), flat outside them: a
    rate that grows like x^p between two sizes grows so at every size between them."""
    y = log_interp(tuple((px, math.log(py)) for px, py in points), x)
    return math.exp(y)


@dataclass(frozen=True)
class ComputeDevice:
    """One GPU, or one CPU socket, placed in a rig under a unique ``name`` (e.g. ``n0.gpu0``)."""

    name: str
    model: str  # catalogue entry, e.g. "a100-80g"
    kind: DeviceKind
    node: str
    mem_bytes: float  # allocatable: GPU memory less reserved_bytes, or the socket's share of host DRAM
    mem_bw: float  # peak bytes/s (HBM, or DRAM per socket)
    peak_flops: Mapping[str, float]  # dtype name -> FLOP/s; dense, no sparsity
    efficiency: Efficiency
    price_per_hour: float = 0.0
    cores: int = 0  # CPU physical cores (0 for GPUs)
    clock_hz: float = 0.0  # CPU base clock (datasheet); 0 for GPUs
    provenance: Mapping[str, Provenance] = field(default_factory=dict)
    reserved_bytes: float = 0.0  # a GPU's memory held by the CUDA context and libraries (not in mem_bytes)

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s for a compute dtype: its own unit, else its 16-bit peer's, else fp32.

        A GPU with no bf16 entry has no bf16 unit (T4 and V100: bf16 tensor cores arrived with Ampere,
        NVIDIA A100 whitepaper 2020); frameworks run bf16 there on the fp32 CUDA cores, so it costs
        the fp32 rate, not the fp16 tensor-core one. CPUs fall back between the 16-bit formats; other
        compute dtypes (a kernel the device has no entry for, e.g. q4_k_m on a GPU) to fp16."""
        peer = {"fp16": "bf16", "bf16": "fp16" if self.kind == "cpu" else ""}.get(dtype, "fp16")
        for key in (dtype, peer, "fp32"):
            if key in self.peak_flops:
                return self.peak_flops[key]
        raise KeyError(f"{self.name}: no peak FLOP/s for {dtype}")

    @property
    def vector_ops(self) -> float:
        """Lane instructions per second of the vector units (CUDA cores, AVX lanes): the fp32 peak
        over the 2 FLOPs of one fused multiply-add. Dequantisation, conversion and integer unpacking
        run here, not on tensor cores or AMX tiles."""
        return self.flops("fp32") / 2.0


@dataclass(frozen=True)
class Disk:
    name: str
    model: str
    node: str
    capacity_bytes: float
    read_bw: float
    write_bw: float
    price_per_hour: float = 0.0
    provenance: Mapping[str, Provenance] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """A bidirectional link between two endpoints; ``bw`` is per direction.

    Endpoints are device or disk names, or switch names (``n0.pcie-root``, ``net``, ...).
    ``pageable_bw`` is the achievable rate when the host side is pageable (not pinned)
    memory; it is only meaningful for PCIe and equals ``bw`` elsewhere. ``fwd_bw`` and
    ``fwd_pageable_bw``, when set, replace them for traffic travelling a -> b (a GPU's host link:
    device to host); ``rate`` picks the one a copy gets.
    """

    name: str
    kind: LinkKind
    a: str
    b: str
    bw: float
    latency_s: float
    pageable_bw: float
    provenance: Mapping[str, Provenance] = field(default_factory=dict)
    # measured all-reduce over this link kind: ranks -> (latency s, bytes/s) of a fitted line
    allreduce: Mapping[int, tuple[float, float]] = field(default_factory=dict)
    # and its measured medians: ranks -> (log bytes ascending, log seconds), used inside their range
    allreduce_table: Mapping[int, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)
    fwd_bw: float | None = None
    fwd_pageable_bw: float | None = None

    def rate(self, forward: bool, pinned: bool = True) -> float:
        """Bytes/s of a copy over this link in one direction, pinned or pageable host memory."""
        if pinned:
            return self.fwd_bw if forward and self.fwd_bw is not None else self.bw
        if forward and self.fwd_pageable_bw is not None:
            return self.fwd_pageable_bw
        if forward and self.fwd_bw is not None:  # a pageable copy stages through pinned memory: never faster
            return min(self.pageable_bw, self.fwd_bw)
        return self.pageable_bw


@dataclass(frozen=True)
class Hop:
    """One link traversed in one direction: the engine has one resource per (link, direction)."""

    link: str
    forward: bool  # True when travelling a -> b

    @property
    def lane(self) -> str:
        return f"{self.link}:{'fwd' if self.forward else 'rev'}"


@dataclass(frozen=True)
class Route:
    src: str
    dst: str
    hops: tuple[Hop, ...]
    bw: float  # bottleneck bandwidth over the hops in this direction (bytes/s, pinned host memory)
    pageable_bw: float  # bottleneck when the host end is pageable
    latency_s: float  # summed latency

    def time(self, nbytes: float, pinned: bool = True) -> float:
        """Uncontended transfer time: latency plus bytes over the bottleneck."""
        if not self.hops or nbytes <= 0:
            return 0.0
        return self.latency_s + nbytes / (self.bw if pinned else self.pageable_bw)


@dataclass(frozen=True)
class Node:
    name: str
    region: str
    host_mem_bytes: float
    cpus: tuple[str, ...]
    gpus: tuple[str, ...]
    disks: tuple[str, ...]
    price_per_hour: float = 0.0
    # What the node's CPU entries share: "none" (real sockets), "dram" (one memory controller), or
    # "core" (hardware threads of one core: one compute stream and one DRAM path).
    cpu_sharing: str = "none"
    shared_dram_bw: float = 0.0  # bytes/s all shared entries get together; 0 = one entry's rate
    straggler_fraction: float = 0.0  # lockstep ranks here lose this share of each compute segment
