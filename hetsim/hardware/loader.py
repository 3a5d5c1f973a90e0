"""Load a rig (``hardware_profiles/rigs/NAME.yaml``) into a ``Rig`` of frozen dataclasses.

Instance names are stable and readable:

- devices ``n0.cpu0``, ``n0.gpu1``; disks ``n0.disk0``; nodes ``n0``, ``n1``, ... in file order
  (a node entry with ``count: k`` expands to k consecutive nodes);
- switches ``n0.nvswitch`` (NVSwitch), ``net.<region>`` (a region's network switch);
- links ``n0.pcie.gpu0`` (GPU to its CPU socket), ``n0.nvlink.gpu0`` (GPU to NVSwitch) or
  ``n0.nvlink.gpu0-gpu1`` (bridge), ``n0.upi.cpu0-cpu1``, ``n0.nvme.disk0`` (disk to socket),
  ``n0.nic`` (socket to ``net.<region>``), ``wan.<a>-<b>`` (region switch to region switch).

GPU-to-GPU traffic without NVLink routes through the host: GPU -> PCIe -> CPU socket -> PCIe -> GPU.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hetsim.errors import InputError
from hetsim.hardware.catalog import (
    Catalog,
    Entry,
    load_catalog,
    profiles_dir,
    read_yaml,
    validation_error,
)
from hetsim.hardware.rig import Rig
from hetsim.hardware.schema import (
    TO_HOST_FIELDS,
    CpuRef,
    CpuSpec,
    DiskRef,
    DiskSpec,
    Dtype,
    EfficiencySpec,
    Flops,
    GpuRef,
    GpuSpec,
    LinkRef,
    LinkSpec,
    NodeSpec,
    RigSpec,
    Sourced,
)
from hetsim.hardware.types import ComputeDevice, Disk, Efficiency, Grade, Link, MatmulCurve, Node, Provenance
from hetsim.textfiles import read_text, validate_strictly

_PROTECTED = ("name", "kind", "aliases")
# A rig's key that replaces these of the catalogue entry it overrides: a measured GPU ``memory`` (hetsim
# calibrate writes one) stands for the card's whole rule, dram x (1 - ecc_share) x (1 - driver_share).
_REPLACES = {"memory": ("dram", "ecc_share", "driver_share")}


def catalog(profiles: str | os.PathLike[str] | None = None) -> Catalog:
    """The device catalogue (GPUs, CPUs, links, disks, efficiency defaults)."""
    return load_catalog(profiles)


def list_rigs(profiles: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the shipped rigs (files under ``hardware_profiles/rigs``)."""
    folder = profiles_dir(profiles) / "rigs"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def rig_path(path_or_name: str | os.PathLike[str], profiles: str | os.PathLike[str] | None = None) -> Path:
    text = str(path_or_name)
    p = Path(text)
    if p.is_file() or p.suffix in (".yaml", ".yml") or os.sep in text:
        if p.is_dir():
            raise InputError("is a directory, not a rig file", source=text)
        if not p.exists():
            raise InputError("rig file not found", source=text)
        return p  # a named pipe (`--hw <(cmd)`) or a device: read_text reads it or says why not
    candidate = profiles_dir(profiles) / "rigs" / f"{text}.yaml"
    if not candidate.is_file():
        known = ", ".join(list_rigs(profiles)) or "none"
        raise InputError(f"unknown rig {text!r} (known: {known})", source=text)
    return candidate


# ---- helpers --------------------------------------------------------------------------------
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a sourced quantity ({value, ...}) is a leaf and is replaced whole."""
    out = dict(base)
    for key, val in over.items():
        cur = out.get(key)
        if isinstance(val, dict) and isinstance(cur, dict) and "value" not in val and "value" not in cur:
            out[key] = _merge(cur, val)
        else:
            out[key] = val
    return out


ALLREDUCE_COLUMNS = ("num_workers", "size", "time_stats.all_reduce.median")


@functools.lru_cache(maxsize=8)
def allreduce_table(path: str, rig: str) -> dict[int, tuple[tuple[float, ...], tuple[float, ...]]]:
    """NCCL all-reduce medians in Vidur's ``all_reduce.csv`` (``size`` in fp16 elements, times in ms;
    rows inside one node where ``devices_per_node`` is given): per world size, (log bytes ascending,
    log seconds), a size measured more than once at its median. Cached, so every link of a rig
    shares one table (``ring_allreduce_fit`` compares them by identity)."""
    field = "nvlink.allreduce_table"
    if not Path(path).is_file():
        raise InputError(f"all-reduce table not found: {path}", source=rig, field=field)
    rows = list(csv.DictReader(read_text(path).splitlines()))
    missing = [c for c in ALLREDUCE_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise InputError(f"{path}: missing columns {', '.join(missing)}", source=rig, field=field)
    by_ranks: dict[int, dict[float, list[float]]] = {}
    for i, r in enumerate(rows, start=2):
        try:
            ranks, size = int(r["num_workers"]), float(r["size"])
            ms = float(r["time_stats.all_reduce.median"])
            local = r.get("devices_per_node") in (None, "") or int(r["devices_per_node"]) == ranks
        except (TypeError, ValueError):
            raise InputError(f"{path}: line {i}: not a number", source=rig, field=field) from None
        if not (size > 0 and ms > 0 and math.isfinite(size) and math.isfinite(ms)):
            raise InputError(f"{path}: line {i}: size and time must be positive", source=rig, field=field)
        if local:
            by_ranks.setdefault(ranks, {}).setdefault(2.0 * size, []).append(ms * 1e-3)
    out = {}
    for ranks, sizes in by_ranks.items():
        xs = sorted(sizes)
        out[ranks] = (
            tuple(math.log(x) for x in xs),
            tuple(math.log(statistics.median(sizes[x])) for x in xs),
        )
    return out


def _prov(q: Sourced, note: str = "") -> Provenance:
    return Provenance(q.source + note, q.grade_enum)


def _si_or_zero(q: Sourced | None) -> float:
    """Optional quantities (prices, shared bandwidth, straggling) count as 0 when the rig omits them."""
    return q.si if q else 0.0


def gpu_total(spec: GpuSpec) -> tuple[float, Provenance]:
    """The bytes a framework sees on a GPU (torch ``total_memory``, ``cudaMemGetInfo``'s total) and where
    the number came from: ``memory`` where given (a measured total wins), else derived from the datasheet,
    the one place the rule is written: ``dram x (1 - ecc_share) x (1 - driver_share)``; its grade is the
    weakest of the three."""
    if spec.memory is not None:
        return spec.memory.si, _prov(spec.memory)
    assert spec.dram is not None  # the schema requires one of the two
    parts = [q for q in (spec.dram, spec.ecc_share, spec.driver_share) if q is not None]
    # to whole bytes, as a driver counts them (and so the shares' decimals leave no float tail)
    total = round(spec.dram.si * (1 - _si_or_zero(spec.ecc_share)) * (1 - _si_or_zero(spec.driver_share)))
    rule = f"derived: dram {spec.dram.value}"
    for label, q in (("ecc", spec.ecc_share), ("driver", spec.driver_share)):
        if q is not None:
            rule += f" x (1 - {label} {q.value})"
    sources = "; ".join(q.source for q in parts)
    return total, Provenance(f"{rule} [{sources}]", min(q.grade_enum for q in parts))


def _peak_prov(peak_flops: Mapping[Dtype, Flops]) -> dict[str, Provenance]:
    """Provenance of each dtype's peak FLOP/s, keyed ``peak_flops.<dtype>``."""
    return {f"peak_flops.{k}": _prov(v) for k, v in peak_flops.items()}


def _add_price_prov(prov: dict[str, Provenance], price: Sourced | None) -> None:
    """Record where a price came from, only when there is one (an absent price is no claim)."""
    if price:
        prov["price_per_hour"] = _prov(price)


def _disk(name: str, node: str, spec: DiskSpec) -> Disk:
    """A disk instance from its (possibly overridden) catalogue spec."""
    prov = {
        "capacity_bytes": _prov(spec.capacity),
        "read_bw": _prov(spec.read_bandwidth),
        "write_bw": _prov(spec.write_bandwidth),
    }
    _add_price_prov(prov, spec.price_per_hour)
    return Disk(
        name=name,
        model=spec.name,
        node=node,
        capacity_bytes=spec.capacity.si,
        read_bw=spec.read_bandwidth.si,
        write_bw=spec.write_bandwidth.si,
        price_per_hour=_si_or_zero(spec.price_per_hour),
        provenance=prov,
    )


def _nvme_link(name: str, disk: str, cpu: str, spec: DiskSpec) -> Link:
    """Disk to socket. Not a catalogue link: its rate is the disk's faster direction, its latency the
    disk's, so the disk spec alone bounds I/O."""
    fast = max(spec.read_bandwidth, spec.write_bandwidth, key=lambda q: q.si)
    return Link(
        name=name,
        kind="nvme",
        a=disk,
        b=cpu,
        bw=fast.si,
        latency_s=spec.latency.si,
        pageable_bw=fast.si,
        provenance={"bw": _prov(fast), "latency_s": _prov(spec.latency)},
    )


def _node_record(node: str, ns: NodeSpec, cpus: list[str], gpus: list[str], disks: list[str]) -> Node:
    """The node itself: names of what was built in it plus its node-level figures."""
    return Node(
        name=node,
        region=ns.region,
        host_mem_bytes=ns.host_memory.si,
        cpus=tuple(cpus),
        gpus=tuple(gpus),
        disks=tuple(disks),
        price_per_hour=_si_or_zero(ns.price_per_hour),
        cpu_sharing=ns.cpu_sharing,
        shared_dram_bw=_si_or_zero(ns.shared_memory_bandwidth),
        straggler_fraction=_si_or_zero(ns.straggler_fraction),
    )


class _Builder:
    def __init__(self, spec: RigSpec, source: str, cat: Catalog):
        self.spec = spec
        self.source = source
        self.cat = cat
        self.nodes: dict[str, Node] = {}
        self.devices: dict[str, ComputeDevice] = {}
        self.disks: dict[str, Disk] = {}
        self.links: dict[str, Link] = {}

    def fail(self, msg: str, field: str) -> InputError:
        return InputError(msg, source=self.source, field=field)

    # catalogue look-up with per-instance overrides, validated against the catalogue schema
    def entry(
        self, section: str, name: str, overrides: dict[str, Any], field: str, model: type[BaseModel]
    ) -> Any:
        found: Entry | None = self.cat.resolve(section, name)
        if found is None:
            known = ", ".join(self.cat.names(section))
            raise self.fail(f"unknown {section[:-1]} {name!r} (known: {known})", field)
        if not overrides:
            return found.spec
        for key in _PROTECTED:
            if key in overrides:
                raise self.fail("cannot be overridden in a rig", f"{field}.{key}")
        base = dict(found.raw)
        for key, replaced in _REPLACES.items():
            if overrides.get(key) is not None and key in model.model_fields:
                for old in replaced:
                    base.pop(old, None)
        try:
            return validate_strictly(model, _merge(base, overrides), whole_floats=False)
        except ValidationError as exc:
            raise validation_error(exc, self.source, prefix=field) from None

    def link_entry(self, ref: LinkRef, field: str) -> LinkSpec:
        return self.entry("links", ref.link, dict(ref.model_extra or {}), field, LinkSpec)

    def efficiency(
        self, kind: str, override: EfficiencySpec | None
    ) -> tuple[Efficiency, dict[str, Provenance]]:
        assert self.cat.efficiency is not None
        base: EfficiencySpec = getattr(self.cat.efficiency, kind)
        compute = {**base.compute, **(override.compute if override else {})}
        memory = override.memory if override and override.memory else base.memory
        overhead = override.overhead if override and override.overhead else base.overhead
        assert memory is not None and overhead is not None
        prov = {f"efficiency.compute.{k}": _prov(v) for k, v in compute.items()}
        prov["efficiency.memory"] = _prov(memory)
        prov["efficiency.overhead_s"] = _prov(overhead)
        halves = {}
        for key, field_name in (("matmul_half_rows", "matmul_half_rows"),
                                ("stream_half_row", "stream_half_row_bytes"),
                                ("attention_half_rows", "attention_half_rows")):  # fmt: skip
            q = getattr(override, key, None) or getattr(base, key)
            if q is not None:
                halves[field_name] = q.si
                prov[f"efficiency.{field_name}"] = _prov(q)
        kernels = (override.kernels if override else None) or base.kernels or "separate"
        by_kind = override.memory_by_kind if override else {}
        tables = (override.kernel_tables if override else None) or ""
        if tables:
            folder = (Path(self.source).parent / tables).resolve()
            if not folder.is_dir():
                raise self.fail(f"kernel tables folder not found: {folder}", "efficiency.kernel_tables")
            tables = str(folder)
        for k, v in {**base.memory_by_kind, **by_kind}.items():
            prov[f"efficiency.memory_by_kind.{k}"] = _prov(v)
        cycles = {**base.kernel_cycles, **(override.kernel_cycles if override else {})}
        for k, kc in cycles.items():
            prov[f"efficiency.kernel_cycles.{k}"] = Provenance(kc.source, kc.grade_enum)
        quantize = {**base.quantize_cycles, **(override.quantize_cycles if override else {})}
        for k, qc in quantize.items():
            prov[f"efficiency.quantize_cycles.{k}"] = Provenance(qc.source, qc.grade_enum)
        curves = {**base.matmul_by_dtype, **(override.matmul_by_dtype if override else {})}
        overheads = {**base.overhead_by_dtype, **(override.overhead_by_dtype if override else {})}
        for dt, q in overheads.items():
            prov[f"efficiency.overhead_by_dtype.{dt}"] = _prov(q)
        issue = (override.kernel_issue if override else None) or base.kernel_issue
        if issue is not None and kind != "gpu":  # the engine books CPU work by compute and DRAM traffic
            raise self.fail("kernel_issue is a GPU's (its host issuing kernels)", "efficiency.kernel_issue")
        if issue is not None and issue.si <= 0:  # 0 would read as unknown: overhead per op, silently
            raise self.fail(
                "kernel_issue must be > 0 (leave it out where not measured)", "efficiency.kernel_issue"
            )
        if issue is not None:
            prov["efficiency.kernel_issue_s"] = _prov(issue)
        for dt, c in curves.items():
            for part in ("compute", "half_rows", "memory", "stream_half_row"):
                prov[f"efficiency.matmul_by_dtype.{dt}.{part}"] = _prov(getattr(c, part))
            if c.by_rows is not None:
                prov[f"efficiency.matmul_by_dtype.{dt}.by_rows"] = Provenance(
                    c.by_rows.source, c.by_rows.grade_enum
                )
        eff = Efficiency(
            compute={k: v.si for k, v in compute.items()},
            memory=memory.si,
            overhead_s=overhead.si,
            fused_kernels=kernels == "fused",
            kernel_tables=tables,
            memory_by_kind={k: v.si for k, v in {**base.memory_by_kind, **by_kind}.items()},
            kernel_cycles={
                k: tuple(zip(kc.tokens, kc.cycles_per_mac, strict=True)) for k, kc in cycles.items()
            },
            quantize_cycles={k: qc.value for k, qc in quantize.items()},
            matmul_by_dtype={
                dt: MatmulCurve(
                    c.compute.si,
                    c.half_rows.si,
                    c.memory.si,
                    c.stream_half_row.si,
                    tuple(zip(c.by_rows.rows, c.by_rows.compute, strict=True)) if c.by_rows else (),
                )
                for dt, c in curves.items()
            },
            overhead_by_dtype={dt: q.si for dt, q in overheads.items()},
            kernel_issue_s=issue.si if issue is not None else 0.0,
            **halves,
        )
        return eff, prov

    def add_link(
        self, name: str, spec: LinkSpec, a: str, b: str, field: str, count: int = 1, to_host: bool = False
    ) -> None:
        """``field`` names the link's entry for errors. ``to_host``: a GPU's host link (``a`` the GPU),
        the only link whose device-to-host rates (a -> b) may differ from the symmetric ones."""
        note = f" (x{count} in parallel)" if count > 1 else ""
        prov = {"bw": _prov(spec.bandwidth, note), "latency_s": _prov(spec.latency)}
        pageable = spec.pageable_bandwidth or spec.bandwidth
        if spec.pageable_bandwidth is not None:
            prov["pageable_bw"] = _prov(spec.pageable_bandwidth, note)
        fwd: dict[str, float] = {}
        for key, what in TO_HOST_FIELDS.items():
            q = getattr(spec, what)
            if q is None:
                continue
            if not to_host:
                raise self.fail(
                    f"only a GPU's host link has a device-to-host rate ({spec.name})", f"{field}.{what}"
                )
            fwd[key] = q.si * count
            prov[key] = _prov(q, note)
        for p in spec.allreduce:
            prov[f"allreduce.{p.ranks}.latency_s"] = _prov(p.latency)
            prov[f"allreduce.{p.ranks}.bw"] = _prov(p.bandwidth)
        tables = {}
        if spec.allreduce_table:
            path = (Path(self.source).parent / spec.allreduce_table).resolve()
            lines = {p.ranks for p in spec.allreduce}
            tables = {r: t for r, t in allreduce_table(str(path), self.source).items() if r in lines}
            for r in tables:
                prov[f"allreduce.{r}.table"] = Provenance(
                    f"measured NCCL all-reduce medians in {spec.allreduce_table}", Grade.MEASURED
                )
        self.links[name] = Link(
            name=name,
            kind=spec.kind,
            a=a,
            b=b,
            bw=spec.bandwidth.si * count,
            latency_s=spec.latency.si,
            pageable_bw=pageable.si * count,
            provenance=prov,
            allreduce={p.ranks: (p.latency.si, p.bandwidth.si) for p in spec.allreduce},
            allreduce_table=tables,
            **fwd,
        )

    def default_upi(self, cpu: CpuSpec) -> LinkRef:
        """Between sockets: the CPU's own UPI generation and link count when the catalogue has it."""
        if cpu.upi_speed is not None and cpu.upi_links is not None:
            name = f"upi-{cpu.upi_speed.si / 1e9:g}gt"
            if self.cat.resolve("links", name) is not None:
                return LinkRef(link=name, count=int(cpu.upi_links.si))
        return LinkRef(link="upi")

    # ---- nodes -----------------------------------------------------------------------------
    def build(self) -> Rig:
        counter = itertools.count()
        regions: list[str] = []
        for ni, nspec in enumerate(self.spec.nodes):
            for _ in range(nspec.count):
                self.node(f"n{next(counter)}", nspec, f"nodes[{ni}]")
            if nspec.region not in regions:
                regions.append(nspec.region)
        self.network(regions)
        return Rig(
            name=self.spec.name,
            source=self.source,
            nodes=self.nodes,
            devices=self.devices,
            disks=self.disks,
            links=self.links,
        )

    def node(self, node: str, ns: NodeSpec, field: str) -> None:
        """One machine, in dependency order: sockets first (GPUs, disks and the NIC attach to them by
        index), then GPUs (NVLink pairs index them). The order also fixes which bad field is reported."""
        cpus, socket0 = self.cpu_sockets(node, ns, field)
        self.upi_links(node, ns, field, cpus, socket0)
        gpus = self.gpus(node, ns, field, cpus)
        self.nvlinks(node, ns, field, gpus)
        disks = self.node_disks(node, ns, field, cpus)
        self.nic(node, ns, field, cpus)
        self.nodes[node] = _node_record(node, ns, cpus, gpus, disks)

    def instance(
        self, section: str, ref: CpuRef | GpuRef | DiskRef, field: str, model: type[BaseModel]
    ) -> Any:
        """A ref's catalogue entry with the ref's extra keys applied as per-instance overrides."""
        return self.entry(section, ref.model, dict(ref.model_extra or {}), field, model)

    def socket_cpu(self, socket: int, cpus: list[str], field: str) -> str:
        """The CPU device a GPU or disk hangs off; a socket past the node's sockets is an input error."""
        if socket >= len(cpus):
            raise self.fail(f"socket {socket} does not exist (node has {len(cpus)})", field)
        return cpus[socket]

    # ---- CPU sockets -----------------------------------------------------------------------------
    def cpu_sockets(self, node: str, ns: NodeSpec, field: str) -> tuple[list[str], CpuSpec]:
        """Every CPU entry becomes a device ``<node>.cpu<j>``. Also returns socket 0's resolved spec,
        whose UPI generation is the default link between sockets."""
        names: list[str] = []
        specs: list[CpuSpec] = []
        for j, ref in enumerate(ns.cpus):
            spec: CpuSpec = self.instance("cpus", ref, f"{field}.cpus[{j}]", CpuSpec)
            name = f"{node}.cpu{j}"
            self.devices[name] = self.cpu_device(name, node, spec, ns)
            names.append(name)
            specs.append(spec)
        return names, specs[0]

    def cpu_device(self, name: str, node: str, spec: CpuSpec, ns: NodeSpec) -> ComputeDevice:
        """A socket gets an equal share of the node's host memory (the rig gives only the node total)."""
        n_cpu = len(ns.cpus)
        eff, eprov = self.efficiency("cpu", spec.efficiency)
        split = f" (node host memory split over {n_cpu} sockets)" if n_cpu > 1 else ""
        prov = {
            "mem_bytes": _prov(ns.host_memory, split),
            "mem_bw": _prov(spec.memory_bandwidth),
            "cores": _prov(spec.cores),
            "clock_hz": _prov(spec.base_clock),
            **_peak_prov(spec.peak_flops),
            **eprov,
        }
        _add_price_prov(prov, spec.price_per_hour)
        return ComputeDevice(
            name=name,
            model=spec.name,
            kind="cpu",
            node=node,
            mem_bytes=ns.host_memory.si / n_cpu,
            mem_bw=spec.memory_bandwidth.si,
            peak_flops={k: v.si for k, v in spec.peak_flops.items()},
            efficiency=eff,
            price_per_hour=_si_or_zero(spec.price_per_hour),
            cores=int(spec.cores.si),
            clock_hz=spec.base_clock.si,
            provenance=prov,
        )

    def upi_links(self, node: str, ns: NodeSpec, field: str, cpus: list[str], socket0: CpuSpec) -> None:
        """A direct link between every pair of sockets (the rig's ``upi``, else socket 0's own UPI)."""
        if len(cpus) < 2:
            if ns.upi is not None:  # unused with one socket, but a name that does not exist is still wrong
                self.link_entry(ns.upi, f"{field}.upi")
            return
        upi = ns.upi or self.default_upi(socket0)
        uspec = self.link_entry(upi, f"{field}.upi")
        for a, b in itertools.combinations(range(len(cpus)), 2):
            self.add_link(f"{node}.upi.cpu{a}-cpu{b}", uspec, cpus[a], cpus[b], f"{field}.upi", upi.count)

    # ---- GPUs ------------------------------------------------------------------------------------
    def gpus(self, node: str, ns: NodeSpec, field: str, cpus: list[str]) -> list[str]:
        """GPU refs expand by ``count`` into ``<node>.gpu<j>``, numbered across refs; errors name the ref
        (``gpus[k]``). Each GPU is finished (device, socket, host link) before the next one is read."""
        refs = [(k, ref) for k, ref in enumerate(ns.gpus) for _ in range(ref.count)]
        names: list[str] = []
        for j, (k, ref) in enumerate(refs):
            f = f"{field}.gpus[{k}]"
            spec: GpuSpec = self.instance("gpus", ref, f, GpuSpec)
            if "nvlink" in (ref.model_extra or {}):  # an override; the shipped catalogue's names are tested
                self.nvlink_name(spec.nvlink, f"{f}.nvlink")
            name = f"{node}.gpu{j}"
            self.devices[name] = self.gpu_device(name, node, spec, f)
            names.append(name)
            # without an explicit socket, GPUs are spread over the sockets in order
            socket = ref.socket if ref.socket is not None else j * len(cpus) // len(refs)
            cpu = self.socket_cpu(socket, cpus, f"{f}.socket")
            self.gpu_host_link(node, j, ref, spec, f, cpu)
        return names

    def nvlink_name(self, name: str | None, field: str) -> None:
        """An overridden GPU's ``nvlink`` names an NVLink in the link catalogue (or is null: none)."""
        found = None if name is None else self.cat.resolve("links", name)
        if name is not None and (found is None or found.spec.kind != "nvlink"):
            known = ", ".join(n for n in self.cat.names("links") if n.startswith("nvlink"))
            raise self.fail(f"unknown NVLink {name!r} (known: {known})", field)

    def gpu_device(self, name: str, node: str, spec: GpuSpec, field: str) -> ComputeDevice:
        """A GPU device straight from its (possibly overridden) catalogue spec. Its ``mem_bytes`` is what
        a framework can allocate: the total it sees (``gpu_total``) less ``runtime_reserved`` (the one
        place every strategy's memory check and the engine's ledger take a GPU's capacity from)."""
        eff, eprov = self.efficiency("gpu", spec.efficiency)
        reserved = spec.runtime_reserved
        total, total_prov = gpu_total(spec)
        if reserved is not None and reserved.si >= total:
            raise self.fail(
                f"runtime_reserved ({reserved.value}) must be below memory ({total / 2**30:.2f} GiB)",
                f"{field}.runtime_reserved",
            )
        prov = {
            "mem_bytes": total_prov,
            **({"runtime_reserved": _prov(reserved)} if reserved is not None else {}),
            "mem_bw": _prov(spec.memory_bandwidth),
            **_peak_prov(spec.peak_flops),
            **eprov,
        }
        _add_price_prov(prov, spec.price_per_hour)
        return ComputeDevice(
            name=name,
            model=spec.name,
            kind="gpu",
            node=node,
            mem_bytes=total - _si_or_zero(reserved),
            reserved_bytes=_si_or_zero(reserved),
            mem_bw=spec.memory_bandwidth.si,
            peak_flops={k: v.si for k, v in spec.peak_flops.items()},
            efficiency=eff,
            price_per_hour=_si_or_zero(spec.price_per_hour),
            provenance=prov,
        )

    def gpu_host_link(self, node: str, j: int, ref: GpuRef, spec: GpuSpec, field: str, cpu: str) -> None:
        """GPU ``j`` to its socket: the ref's ``host_link`` (with overrides), else its ``link``, else the
        card's own host interface. The link is named by its kind (``<node>.pcie.gpu<j>``)."""
        host = ref.host_link or LinkRef(link=ref.link or spec.host_interface)
        lfield = f"{field}.host_link" if ref.host_link else f"{field}.link"
        lspec = self.link_entry(host, lfield)
        self.add_link(f"{node}.{lspec.kind}.gpu{j}", lspec, f"{node}.gpu{j}", cpu, lfield, to_host=True)

    def nvlinks(self, node: str, ns: NodeSpec, field: str, gpus: list[str]) -> None:
        """NVLink: every GPU to the node's NVSwitch (``switch``) and/or bridges between GPU ``pairs``."""
        nv = ns.nvlink
        if nv is None:
            return
        nspec = self.link_entry(nv, f"{field}.nvlink")
        if nv.switch:
            for j, g in enumerate(gpus):
                self.add_link(
                    f"{node}.nvlink.gpu{j}", nspec, g, f"{node}.nvswitch", f"{field}.nvlink", nv.count
                )
        seen: dict[frozenset[int], int] = {}
        for k, (a, b) in enumerate(nv.pairs):
            if not (0 <= a < len(gpus) and 0 <= b < len(gpus)) or a == b:
                raise self.fail(f"bad GPU pair ({a}, {b})", f"{field}.nvlink.pairs[{k}]")
            if (key := frozenset((a, b))) in seen:  # a second bridge ran as a second link, uncounted
                why = f"GPUs {a} and {b} are bridged already by pairs[{seen[key]}] (count: parallel bridges)"
                raise self.fail(why, f"{field}.nvlink.pairs[{k}]")
            seen[key] = k
            self.add_link(
                f"{node}.nvlink.gpu{a}-gpu{b}", nspec, gpus[a], gpus[b], f"{field}.nvlink", nv.count
            )

    # ---- disks and the NIC -----------------------------------------------------------------------
    def node_disks(self, node: str, ns: NodeSpec, field: str, cpus: list[str]) -> list[str]:
        """Disks ``<node>.disk<j>``, each with an NVMe link to its socket."""
        names: list[str] = []
        for j, ref in enumerate(ns.disks):
            f = f"{field}.disks[{j}]"
            spec: DiskSpec = self.instance("disks", ref, f, DiskSpec)
            cpu = self.socket_cpu(ref.socket, cpus, f"{f}.socket")
            name = f"{node}.disk{j}"
            self.disks[name] = _disk(name, node, spec)
            names.append(name)
            link = _nvme_link(f"{node}.nvme.disk{j}", name, cpu, spec)
            self.links[link.name] = link
        return names

    def nic(self, node: str, ns: NodeSpec, field: str, cpus: list[str]) -> None:
        """The node's uplink: from one socket to its region's network switch ``net.<region>``."""
        nic = ns.nic
        if nic is None:
            return
        if nic.socket >= len(cpus):
            raise self.fail(f"socket {nic.socket} does not exist", f"{field}.nic.socket")
        lspec = self.link_entry(nic, f"{field}.nic")
        self.add_link(f"{node}.nic", lspec, cpus[nic.socket], f"net.{ns.region}", f"{field}.nic", nic.count)

    def network(self, regions: list[str]) -> None:
        net = self.spec.network
        if net is None:
            return
        # every named link must exist, even one no pair of regions uses (a typo is still a typo)
        if net.wan is not None:
            self.link_entry(net.wan, "network.wan")
        explicit: dict[frozenset[str], tuple[int, LinkRef]] = {}
        for k, pair in enumerate(net.pairs):
            self.link_entry(pair, f"network.pairs[{k}]")
            for r in pair.between:
                if r not in regions:
                    raise self.fail(
                        f"unknown region {r!r} (regions: {', '.join(regions)})", f"network.pairs[{k}]"
                    )
            a, b = pair.between
            here = f"network.pairs[{k}]"
            if a == b:  # a region's machines meet at its switch (their nics): no WAN joins it to itself
                raise self.fail(f"joins region {a!r} to itself: a pair names two regions", here)
            if (key := frozenset(pair.between)) in explicit:  # the later one silently won
                first = f"network.pairs[{explicit[key][0]}]"
                raise self.fail(f"regions {a!r} and {b!r} are joined already by {first}", here)
            explicit[key] = (k, pair)
        for a, b in itertools.combinations(regions, 2):
            key = frozenset((a, b))
            if key in explicit:
                k, ref = explicit[key]
                where = f"network.pairs[{k}]"
            elif net.wan is not None:
                ref, where = net.wan, "network.wan"
            else:
                continue
            spec = self.link_entry(ref, where)
            self.add_link(f"wan.{a}-{b}", spec, f"net.{a}", f"net.{b}", where, ref.count)


def load_rig(path_or_name: str | os.PathLike[str], *, profiles: str | os.PathLike[str] | None = None) -> Rig:
    """Load a rig from a YAML path or a bare name under ``hardware_profiles/rigs``."""
    path = rig_path(path_or_name, profiles)
    source = str(path)
    raw = read_yaml(path)
    try:
        spec = validate_strictly(RigSpec, raw, whole_floats=False)  # `true` is not 1
    except ValidationError as exc:
        raise validation_error(exc, source) from None
    return _Builder(spec, source, load_catalog(profiles)).build()


def rig_to_dict(rig: Rig) -> dict[str, Any]:
    """A JSON-able summary (``hetsim hw show --format json``)."""

    def grade(prov: Mapping[str, Provenance]) -> str:
        return min((p.grade for p in prov.values()), default=Grade.ASSUMED).name.lower()

    return {
        "name": rig.name,
        "source": rig.source,
        "price_per_hour": rig.price_per_hour,
        "weakest_grade": rig.weakest_grade().name.lower(),
        "nodes": [
            {
                "name": n.name,
                "region": n.region,
                "host_mem_bytes": n.host_mem_bytes,
                "cpus": list(n.cpus),
                "gpus": list(n.gpus),
                "disks": list(n.disks),
                "price_per_hour": n.price_per_hour,
            }
            for n in rig.nodes.values()
        ],
        "devices": [
            {
                "name": d.name,
                "model": d.model,
                "kind": d.kind,
                "node": d.node,
                "mem_bytes": d.mem_bytes,  # what a framework can allocate
                **({"reserved_bytes": d.reserved_bytes} if d.kind == "gpu" else {}),
                "mem_bw": d.mem_bw,
                "peak_flops": dict(d.peak_flops),
                "cores": d.cores,
                "price_per_hour": d.price_per_hour,
                "efficiency": {
                    "compute": dict(d.efficiency.compute),
                    "memory": d.efficiency.memory,
                    "overhead_s": d.efficiency.overhead_s,
                    # where measured it replaces overhead_s (hetsim.costs.op_cost): say so
                    **(
                        {"kernel_issue_s": d.efficiency.kernel_issue_s} if d.efficiency.kernel_issue_s else {}
                    ),
                },
                "weakest_grade": grade(d.provenance),
            }
            for d in rig.devices.values()
        ],
        "disks": [
            {
                "name": d.name,
                "model": d.model,
                "node": d.node,
                "capacity_bytes": d.capacity_bytes,
                "read_bw": d.read_bw,
                "write_bw": d.write_bw,
                "price_per_hour": d.price_per_hour,
                "weakest_grade": grade(d.provenance),
            }
            for d in rig.disks.values()
        ],
        "links": [
            {
                "name": lk.name,
                "kind": lk.kind,
                "a": lk.a,
                "b": lk.b,
                "bw": lk.bw,
                "pageable_bw": lk.pageable_bw,
                **({"to_b_bw": lk.fwd_bw} if lk.fwd_bw is not None else {}),
                **({"to_b_pageable_bw": lk.fwd_pageable_bw} if lk.fwd_pageable_bw is not None else {}),
                "latency_s": lk.latency_s,
                "weakest_grade": grade(lk.provenance),
            }
            for lk in rig.links.values()
        ],
    }
