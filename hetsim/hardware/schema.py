"""Pydantic models of the hardware YAML files (catalogue entries and rigs).

Only the loader uses these; everything downstream sees the frozen dataclasses in
``hetsim.hardware.types``. Every model forbids unknown keys, so a typo is an error that names
the file and the field. Every number is a *sourced quantity*: ``{value, source, grade}``, where
``value`` is a human unit string ("16 GB", "12.89 GiB/s", "30 us") or a plain SI number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hetsim.hardware.types import Grade
from hetsim.units import (
    UnitError,
    is_bare_number,
    parse_bandwidth,
    parse_bytes,
    parse_flops,
    parse_frequency,
    parse_time,
)

GradeName = Literal["datasheet", "paper", "measured", "fitted", "assumed"]
LinkKindName = Literal[
    "pcie", "nvlink", "upi", "ethernet", "infiniband", "rdma", "wan", "shm", "sata", "nvme"
]
OpKind = Literal["matmul", "attention", "elementwise", "embedding"]
Dtype = Literal["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"]

GRADES = {g.name.lower(): g for g in Grade}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _plain(text: str | float | int) -> float:
    if isinstance(text, bool):
        raise UnitError(f"expected a number, got {text!r}")
    if isinstance(text, int | float):
        return float(text)
    try:
        return float(text)
    except ValueError as exc:
        raise UnitError(f"expected a plain number, got {text!r}") from exc


def _price(text: str | float | int) -> float:
    """'$1.00/h', '1.0 USD/h' or 1.0 -> dollars per hour."""
    if isinstance(text, str):
        t = text.strip().replace("$", "").replace("USD", "").strip()
        if t.endswith("/h"):
            t = t[:-2].strip()
        return _plain(t)
    return _plain(text)


class Sourced(_Strict):
    """A number with where it came from and how far to trust it.

    Every quantity is finite and inside physical bounds (``_low``.. ``_high`` in SI units; ``_low``
    itself allowed only when ``_low_ok``), so no rig can make a time infinite, NaN or zero-divided:
    a rate must be > 0, a latency or price may be 0. The bounds are far outside any real part.
    """

    _parse: ClassVar[Callable[[Any], float]] = staticmethod(_plain)
    _unit_hint: ClassVar[str] = "a number"
    _low: ClassVar[float] = 0.0
    _low_ok: ClassVar[bool] = True
    _high: ClassVar[float] = 1e18
    _bounds: ClassVar[str] = "SI units; physical bounds"  # what the range is, in the line refusing one

    value: str | float | int
    source: str = Field(min_length=1)
    grade: GradeName
    _si: float = PrivateAttr(default=0.0)

    @field_validator("value", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # pydantic would read true as 1
            raise ValueError(f"expected {cls._unit_hint}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Sourced:
        cls = type(self)
        try:
            si = cls._parse(self.value)
        except UnitError as exc:
            raise ValueError(f"{exc} (expected {cls._unit_hint})") from None
        except OverflowError:  # an int past a float (400 digits): float() raised, a traceback
            raise ValueError(f"must be a finite quantity, got {self.value!r:.40}...") from None
        if not math.isfinite(si):
            raise ValueError(f"must be a finite quantity, got {self.value!r}")
        low_fails = si < cls._low if cls._low_ok else si <= cls._low
        if low_fails or si > cls._high:
            lo = "[" if cls._low_ok else "("
            bare = cls is Bytes and is_bare_number(self.value)
            hint = "; a bare number is bytes: give a unit" if bare else ""
            raise ValueError(
                f"must be in {lo}{cls._low:g}, {cls._high:g}] ({cls._bounds}), got {self.value!r}" + hint
            )
        self._si = si
        return self

    @property
    def si(self) -> float:
        return self._si

    @property
    def grade_enum(self) -> Grade:
        return GRADES[self.grade]


def out_of_bounds(quantity: type[Sourced], value: str | float) -> str | None:
    """Why ``value`` (a unit string, or a plain SI number) is no ``quantity`` a rig file may hold, in the
    check's own words; None where it is one. For numbers that become a rig's from elsewhere (a sweep's
    knobs), so they meet the bounds a file's do."""
    try:
        quantity(value=value, source="check", grade="assumed")
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
    return None


class _Rate(Sourced):
    """A capacity or rate: strictly positive (a zero would divide by zero downstream)."""

    _low = 0.0
    _low_ok = False


class Bytes(_Rate):
    """A memory or disk size: at least a megabyte, far below any part's (a bare ``64``, meant as GB,
    is 64 bytes: refused, not run to an out-of-memory row, as ``--gpu-mem-budget 64`` is)."""

    _parse = staticmethod(parse_bytes)
    _unit_hint = "a size such as '16 GB' or '16 GiB'"
    _low, _low_ok = 1e6, True
    _high = 1e18  # an exabyte


class HeldBytes(Bytes):
    """Memory held back from use (a GPU's ``runtime_reserved``): 0 for nothing, else at least a megabyte
    (a bare ``512``, meant as MiB, is refused as ``Bytes`` refuses it)."""

    _unit_hint = "a size such as '512 MiB' (0 = nothing held)"
    _low = 0.0

    @model_validator(mode="after")
    def _zero_or_a_megabyte(self) -> HeldBytes:
        if 0 < self.si < Bytes._low:
            raise ValueError(
                f"must be 0 or at least 1 MB, got {self.value!r}; a bare number is bytes: give a unit"
            )
        return self


class HalfBytes(Sourced):
    """A size where 0 means 'off' (Hockney half-length)."""

    _parse = staticmethod(parse_bytes)
    _unit_hint = "a size such as '64 KB' (0 = off)"
    _high = 1e15


class Bandwidth(_Rate):
    _parse = staticmethod(parse_bandwidth)
    _unit_hint = "a rate such as '12 GB/s' or '100 Gb/s'"
    # 1 MB/s: slower is no link or memory of this century, and times stay finite (the engine's
    # timelines count a rate under 1 B/s as saturated, and an efficiency may be as low as 0.001)
    _low, _low_ok = 1e6, True
    _high = 1e16  # 10 PB/s


class Flops(_Rate):
    _parse = staticmethod(parse_flops)
    _unit_hint = "a compute rate such as '65 TFLOPS' or '130 TOPS'"
    _low, _low_ok = 1e6, True  # 1 MFLOP/s: slower than any CPU since the 1980s
    _high = 1e19  # 10 EFLOP/s


class Time(Sourced):
    _parse = staticmethod(parse_time)
    _unit_hint = "a time such as '10 us' or '30 ms'"
    _high = 3600.0  # latencies and overheads: an hour is far past any link or kernel launch


class Frequency(_Rate):
    _parse = staticmethod(parse_frequency)
    _unit_hint = "a frequency such as '2.0 GHz' or '4800 MT/s'"
    _low, _low_ok = 1e3, True
    _high = 1e12


def whole_number(value: float) -> str:
    """Why a YAML file's float is refused where an integer belongs. One rule for every YAML file (rigs,
    the catalogue, sweep specs): a count is written as an integer (``count``, ``socket``, ``pairs``,
    ``ranks``, a ``Count``'s value such as ``cores``), and ``2.0`` is a float (YAML tells them apart,
    and a sweep's axis values keep what was written); JSON files (plans, reports, config.json), whose
    writers may hold every number as a float, take ``2.0`` as 2."""
    if value.is_integer() and abs(value) < 2**53:
        return f"expected an integer: write {int(value)}, not {value!r} (YAML reads {value!r} as a float)"
    return f"expected an integer, got {value!r:.40}"


class Count(_Rate):
    _unit_hint = "a whole number"
    _high = 1e6

    @model_validator(mode="after")
    def _whole(self) -> Count:
        if isinstance(self.value, float):  # cores: 16.0 was read as 16 where count: 2.0 is refused
            raise ValueError(whole_number(self.value))
        if self.si != int(self.si):
            raise ValueError(f"must be a whole number, got {self.value!r}")
        return self


class Ratio(Sourced):
    """An efficiency: a share of a peak that is achieved. Below 0.1% it is a unit mistake."""

    _unit_hint = "a fraction between 0.001 and 1"
    # the range checked once, with Sourced's (1e30 was refused as past 1e18 "SI units; physical bounds")
    _low = 1e-3
    _high = 1.0
    _bounds = "a fraction of the peak achieved"


class Share(Sourced):
    """A share in [0, 1] where 0 is meaningful (e.g. no straggling)."""

    _unit_hint = "a fraction between 0 and 1"
    _high = 1.0


class HeldShare(Share):
    """A share of a card's memory held out of what a framework sees (ECC, the driver's keep): below a half,
    so a slip (16 for 1/16) is refused, not run as a card with no memory."""

    _unit_hint = "a fraction between 0 and 0.5"
    _high = 0.5


class Rows(Sourced):
    """A row count where 0 means 'off' (Hockney half-length)."""

    _unit_hint = "a number of rows (0 = off)"
    _high = 1e9


class Price(Sourced):
    _parse = staticmethod(_price)
    _high = 1e6
    _unit_hint = "dollars per hour such as 1.10 or '$1.10/h'"


# ---- efficiency ---------------------------------------------------------------------------
class KernelCycles(_Strict):
    """A measured quantised CPU kernel: core cycles per multiply-accumulate by tokens per weight row
    (see hetsim.hardware.types.Efficiency.kernel_cycles)."""

    tokens: list[float] = Field(min_length=1)
    cycles_per_mac: list[float] = Field(min_length=1)
    source: str = Field(min_length=1)
    grade: GradeName

    @model_validator(mode="after")
    def _points(self) -> KernelCycles:
        if len(self.tokens) != len(self.cycles_per_mac):
            raise ValueError("tokens and cycles_per_mac must be the same length")
        if any(not math.isfinite(t) or t < 1 for t in self.tokens):
            raise ValueError("tokens must be finite numbers >= 1")
        if any(b <= a for a, b in zip(self.tokens, self.tokens[1:], strict=False)):
            raise ValueError("tokens must increase")
        if any(not math.isfinite(c) or not 1e-4 <= c <= 1e3 for c in self.cycles_per_mac):
            raise ValueError("cycles_per_mac must be in [1e-4, 1e3] (physical bounds)")
        return self

    @property
    def grade_enum(self) -> Grade:
        return GRADES[self.grade]


class ElementCycles(_Strict):
    """A measured single-thread CPU kernel: core cycles per element (see
    hetsim.hardware.types.Efficiency.quantize_cycles)."""

    value: float
    source: str = Field(min_length=1)
    grade: GradeName

    @model_validator(mode="after")
    def _bounds(self) -> ElementCycles:
        if not math.isfinite(self.value) or not 1e-3 <= self.value <= 1e4:
            raise ValueError("value must be in [1e-3, 1e4] cycles per element (physical bounds)")
        return self

    @property
    def grade_enum(self) -> Grade:
        return GRADES[self.grade]


class MatmulRows(_Strict):
    """A GEMM's measured share of peak_flops[dtype] at each row count run (see
    hetsim.hardware.types.MatmulCurve.rows)."""

    rows: list[float] = Field(min_length=1)
    compute: list[float] = Field(min_length=1)
    source: str = Field(min_length=1)
    grade: GradeName

    @model_validator(mode="after")
    def _points(self) -> MatmulRows:
        if len(self.rows) != len(self.compute):
            raise ValueError("rows and compute must be the same length")
        if any(not math.isfinite(m) or m < 2 for m in self.rows):
            raise ValueError("rows must be finite numbers >= 2 (a GEMM's; one row is a GEMV's)")
        if any(b <= a for a, b in zip(self.rows, self.rows[1:], strict=False)):
            raise ValueError("rows must increase")
        if any(not math.isfinite(c) or not 0 < c <= 1 for c in self.compute):
            raise ValueError("compute must be in (0, 1] (a share of peak_flops)")
        return self

    @property
    def grade_enum(self) -> Grade:
        return GRADES[self.grade]


class MatmulCurveSpec(_Strict):
    """One compute dtype's matmul curve (see hetsim.hardware.types.MatmulCurve)."""

    compute: Ratio  # many-row GEMM rate / peak_flops[dtype]
    half_rows: Rows  # GEMM rows at half that rate
    memory: Ratio  # long-row matrix-vector weight streaming / memory_bandwidth
    stream_half_row: HalfBytes  # weight-row bytes at half that rate
    by_rows: MatmulRows | None = None  # measured GEMM shares; where given they replace the Hockney form


class EfficiencySpec(_Strict):
    """Class defaults (all fields) or a partial override (any subset)."""

    compute: dict[OpKind, Ratio] = Field(default_factory=dict)
    memory: Ratio | None = None
    overhead: Time | None = None
    # Half-performance lengths (Hockney); absent = 0 = off. See hetsim.hardware.types.Efficiency.
    matmul_half_rows: Rows | None = None
    stream_half_row: HalfBytes | None = None
    attention_half_rows: Rows | None = None  # query rows per sequence; see Efficiency
    kernel_tables: str | None = None  # folder of measured kernel tables, relative to the rig file
    # "fused": the constants describe an engine's fused kernels (hetsim.models.fusion); absent = separate
    kernels: Literal["separate", "fused"] | None = None
    memory_by_kind: dict[OpKind, Ratio] = Field(default_factory=dict)  # streaming, where not ``memory``
    kernel_cycles: dict[str, KernelCycles] = Field(default_factory=dict)  # compute dtype -> measured kernel
    quantize_cycles: dict[str, ElementCycles] = Field(default_factory=dict)  # activation type -> measured
    matmul_by_dtype: dict[Dtype, MatmulCurveSpec] = Field(default_factory=dict)  # measured per dtype
    overhead_by_dtype: dict[Dtype, Time] = Field(default_factory=dict)  # measured per compute dtype
    # Host time issuing one kernel as eager PyTorch does (measured); absent = unknown: ``overhead`` per op
    kernel_issue: Time | None = None


class EfficiencyFile(_Strict):
    """hardware_profiles/efficiency.yaml: defaults per device class."""

    description: str | None = None
    gpu: EfficiencySpec
    cpu: EfficiencySpec

    @model_validator(mode="after")
    def _complete(self) -> EfficiencyFile:
        for cls in ("gpu", "cpu"):
            spec: EfficiencySpec = getattr(self, cls)
            missing = [
                k for k in ("matmul", "attention", "elementwise", "embedding") if k not in spec.compute
            ]
            if missing:
                raise ValueError(f"{cls}.compute is missing {', '.join(missing)}")
            if spec.memory is None or spec.overhead is None:
                raise ValueError(f"{cls} needs both memory and overhead")
        return self


# ---- catalogue entries ----------------------------------------------------------------------
class _Entry(_Strict):
    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    description: str | None = None


class GpuSpec(_Entry):
    kind: Literal["gpu"]
    # the capacity a framework sees (torch total_memory = cudaMemGetInfo's total), where measured; else
    # the loader derives it from the three below (``loader.gpu_total``):
    # dram x (1 - ecc_share) x (1 - driver_share)
    memory: Bytes | None = None
    dram: Bytes | None = None  # DRAM on the card: dies and stacks are binary-sized; datasheet "GB" is GiB
    ecc_share: HeldShare | None = None  # of dram, inline ECC's (1/16 on GDDR with ECC on); absent: 0
    driver_share: HeldShare | None = None  # of the rest, the driver/firmware's, never in the total; absent: 0
    # held before a framework's first tensor: the CUDA context, loaded kernels, cuBLAS handle and
    # workspace (torch.cuda.mem_get_info total - free after a first GEMM); absent: nothing held
    runtime_reserved: HeldBytes | None = None
    memory_bandwidth: Bandwidth
    peak_flops: dict[Dtype, Flops] = Field(min_length=1)
    host_interface: str  # link catalogue name, e.g. pcie4-x16
    nvlink: str | None = None  # link catalogue name when the part has NVLink
    price_per_hour: Price | None = None
    efficiency: EfficiencySpec | None = None

    @field_validator("dram", "ecc_share", "driver_share")
    @classmethod
    def _used(cls, v: Any, info: ValidationInfo) -> Any:
        """Refused beside a given ``memory``, which wins (``loader.gpu_total``): an ``ecc_share`` given
        with it was read and silently unused. A rig's ``memory`` over a catalogue card replaces the
        card's three (``loader``'s ``entry``); these are then the rig's own, and refused."""
        if v is not None and info.data.get("memory") is not None:
            raise ValueError(
                "is not used: memory (the total a framework sees) is given and wins over dram x "
                "(1 - ecc_share) x (1 - driver_share); give one or the other (memory: null derives it)"
            )
        return v

    @model_validator(mode="after")
    def _a_capacity(self) -> GpuSpec:
        if self.memory is None and self.dram is None:
            raise ValueError("needs memory (the total a framework sees) or dram (from which it is derived)")
        return self


class CpuSpec(_Entry):
    """One socket (or, for cloud VMs, the slice of a socket that the instance gets)."""

    kind: Literal["cpu"]
    cores: Count
    base_clock: Frequency
    all_core_clock: Frequency | None = None
    peak_flops: dict[Dtype, Flops] = Field(min_length=1)
    memory_channels: Count
    memory_speed: Frequency  # MT/s
    memory_bandwidth: Bandwidth  # peak per socket (or per slice)
    upi_links: Count | None = None
    upi_speed: Frequency | None = None
    price_per_hour: Price | None = None
    efficiency: EfficiencySpec | None = None


class AllreducePoint(_Strict):
    """A collective measured over one link kind at one world size, as a line: all-reduce time =
    ``latency`` + bytes / ``bandwidth`` (NCCL picks ring, tree or LL protocols by size and ranks,
    which the ring formula does not follow; fitted per world size from measurements)."""

    ranks: int = Field(ge=2)
    latency: Time
    bandwidth: Bandwidth


# A link's device-to-host rate (``types.Link`` attribute) and the LinkSpec field that gives it.
TO_HOST_FIELDS = {"fwd_bw": "to_host_bandwidth", "fwd_pageable_bw": "to_host_pageable_bandwidth"}


class LinkSpec(_Entry):
    """``bandwidth`` is the achievable rate per direction (pinned host memory for PCIe);
    ``theoretical_bandwidth`` is informational. For network links ``latency`` is per hop
    (NIC to switch), so a node-to-node route pays it twice.

    A GPU's host link may give the device-to-host direction its own rates (``to_host_bandwidth``
    into pinned, ``to_host_pageable_bandwidth`` into pageable host memory): a copy's achieved rate
    depends on its direction and on how the host buffer was allocated. Each absent one is the
    symmetric rate (``bandwidth`` / ``pageable_bandwidth``), so a link without them is unchanged."""

    kind: LinkKindName
    bandwidth: Bandwidth
    latency: Time
    theoretical_bandwidth: Bandwidth | None = None
    pageable_bandwidth: Bandwidth | None = None
    to_host_bandwidth: Bandwidth | None = None
    to_host_pageable_bandwidth: Bandwidth | None = None
    allreduce: list[AllreducePoint] = Field(default_factory=list)  # measured, per world size
    # the measured all-reduce medians themselves (Vidur's all_reduce.csv), relative to the rig file:
    # used inside their size range, at world sizes that also have an ``allreduce`` line
    allreduce_table: str | None = None


class DiskSpec(_Entry):
    kind: Literal["disk"]
    capacity: Bytes
    read_bandwidth: Bandwidth
    write_bandwidth: Bandwidth
    latency: Time
    price_per_hour: Price | None = None


# ---- rigs -----------------------------------------------------------------------------------
# Bounds on a rig's size, past any machine or cluster studied here (the largest machines hold 16
# GPUs; NVLink generations have up to 18 links per GPU) yet small enough that loading and searching
# stay within minutes (a 256-node rig compares in ~15 s; route finding grows with the square).
MAX_PER_NODE = 64
MAX_NODES = 1024


class GpuRef(BaseModel):
    """``t4`` or ``{model: t4, count: 8, socket: 0, link: pcie3-x16, memory: {...}}``: extra keys
    override catalogue fields for these instances (validated against the catalogue schema);
    ``count`` expands to identical GPUs."""

    model_config = ConfigDict(extra="allow", frozen=True)
    model: str
    count: int = Field(default=1, ge=1, le=MAX_PER_NODE, strict=True)
    socket: int | None = Field(default=None, ge=0, le=MAX_PER_NODE, strict=True)
    link: str | None = None
    # the host link with overrides, e.g. measured copy rates: {link: pcie5-x16, bandwidth: {...}}
    host_link: LinkRef | None = None


class CpuRef(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    model: str


class DiskRef(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    model: str
    socket: int = Field(default=0, ge=0, le=MAX_PER_NODE, strict=True)


class LinkRef(BaseModel):
    """A link kind from the catalogue, optionally ``count`` of them in parallel, with overrides."""

    model_config = ConfigDict(extra="allow", frozen=True)
    link: str
    count: int = Field(default=1, ge=1, le=MAX_PER_NODE, strict=True)
    socket: int = Field(default=0, ge=0, le=MAX_PER_NODE, strict=True)


GpuRef.model_rebuild()


class NvlinkRef(LinkRef):
    """NVLink inside a node: ``switch: true`` (NVSwitch, all GPUs) or explicit GPU index ``pairs``."""

    switch: bool = False
    pairs: list[tuple[int, int]] = Field(default_factory=list)


def _as_ref(v: Any) -> Any:
    return {"model": v} if isinstance(v, str) else v


def _as_link(v: Any) -> Any:
    return {"link": v} if isinstance(v, str) else v


def _tuple(v: Any) -> Any:
    """A list as a tuple: a model's before-validator passes Python values on, which strict validation
    (``textfiles.validate_strictly``) reads as Python's, where a list is not a tuple (JSON's array is)."""
    return tuple(v) if isinstance(v, list) else v


class NodeSpec(_Strict):
    count: int = Field(default=1, ge=1, le=MAX_NODES, strict=True)  # identical machines, named consecutively
    region: str = "local"
    description: str | None = None
    cpus: list[CpuRef] = Field(min_length=1)
    host_memory: Bytes
    gpus: list[GpuRef] = Field(default_factory=list)
    disks: list[DiskRef] = Field(default_factory=list)
    upi: LinkRef | None = None
    nvlink: NvlinkRef | None = None
    nic: LinkRef | None = None
    price_per_hour: Price | None = None
    # CPU entries that are slices of one socket (VM vCPUs, ranks pinned to cores) share its DRAM
    # ("dram") or, as SMT siblings, its execution units too ("core"); see docs/hardware-profiles.md.
    cpu_sharing: Literal["none", "dram", "core"] = "none"
    # With cpu_sharing: what the shared DRAM delivers to all entries together (one entry alone may
    # not saturate it); default: one entry's achievable bandwidth.
    shared_memory_bandwidth: Bandwidth | None = None
    # Ranks here running in lockstep wait for the slowest at every collective: the share of each
    # compute segment lost to that (OS noise, uneven cores); measured by hetsim calibrate.
    straggler_fraction: Share | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("cpus", "gpus", "disks"):
                if isinstance(data.get(key), list):
                    data[key] = [_as_ref(v) for v in data[key]]
            for key in ("upi", "nvlink", "nic"):
                if key in data:
                    data[key] = _as_link(data[key])
            nvlink = data.get("nvlink")
            if isinstance(nvlink, dict) and isinstance(nvlink.get("pairs"), list):
                data["nvlink"] = {**nvlink, "pairs": [_tuple(p) for p in nvlink["pairs"]]}
        return data


class NetworkSpec(_Strict):
    """Links between region switches: ``wan`` applies to every pair of regions; ``pairs``
    overrides single pairs (``{between: [a, b], link: wan, latency: {...}}``)."""

    wan: LinkRef | None = None
    pairs: list[WanPair] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "wan" in data:
            data = {**data, "wan": _as_link(data["wan"])}
        if isinstance(data, dict) and isinstance(data.get("pairs"), list):
            pairs = [{**p, "between": _tuple(p["between"])} if isinstance(p, dict) and "between" in p else p
                     for p in data["pairs"]]  # fmt: skip
            data = {**data, "pairs": pairs}
        return data


class WanPair(LinkRef):
    between: tuple[str, str]


class RigSpec(_Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    source: str | None = None  # where the rig description comes from
    nodes: list[NodeSpec] = Field(min_length=1, max_length=MAX_NODES)
    network: NetworkSpec | None = None

    @model_validator(mode="after")
    def _size(self) -> RigSpec:
        total = sum(n.count for n in self.nodes)
        if total > MAX_NODES:
            raise ValueError(f"{total} nodes; at most {MAX_NODES} (a rig that can be searched in minutes)")
        for i, n in enumerate(self.nodes):
            if len(n.cpus) > MAX_PER_NODE or sum(g.count for g in n.gpus) > MAX_PER_NODE:
                raise ValueError(f"nodes[{i}]: more than {MAX_PER_NODE} CPUs or GPUs in one machine")
        return self


NetworkSpec.model_rebuild()
RigSpec.model_rebuild()
