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

import itertools
import os
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
    CpuSpec,
    DiskSpec,
    EfficiencySpec,
    GpuSpec,
    LinkRef,
    LinkSpec,
    NodeSpec,
    RigSpec,
    Sourced,
)
from hetsim.hardware.types import ComputeDevice, Disk, Efficiency, Grade, Link, Node, Provenance

_PROTECTED = ("name", "kind", "aliases")


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
        if not p.is_file():
            raise InputError("rig file not found", source=text)
        return p
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


def _prov(q: Sourced, note: str = "") -> Provenance:
    return Provenance(q.source + note, q.grade_enum)


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
        try:
            return model.model_validate(_merge(found.raw, overrides))
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
                                ("stream_half_row", "stream_half_row_bytes")):  # fmt: skip
            q = getattr(override, key, None) or getattr(base, key)
            if q is not None:
                halves[field_name] = q.si
                prov[f"efficiency.{field_name}"] = _prov(q)
        eff = Efficiency(
            compute={k: v.si for k, v in compute.items()}, memory=memory.si, overhead_s=overhead.si, **halves
        )
        return eff, prov

    def add_link(self, name: str, spec: LinkSpec, a: str, b: str, count: int = 1) -> None:
        note = f" (x{count} in parallel)" if count > 1 else ""
        prov = {"bw": _prov(spec.bandwidth, note), "latency_s": _prov(spec.latency)}
        pageable = spec.pageable_bandwidth or spec.bandwidth
        if spec.pageable_bandwidth is not None:
            prov["pageable_bw"] = _prov(spec.pageable_bandwidth, note)
        self.links[name] = Link(
            name=name,
            kind=spec.kind,
            a=a,
            b=b,
            bw=spec.bandwidth.si * count,
            latency_s=spec.latency.si,
            pageable_bw=pageable.si * count,
            provenance=prov,
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
        n_cpu = len(ns.cpus)
        share = ns.host_memory.si / n_cpu
        cpus, gpus, disks = [], [], []
        for j, ref in enumerate(ns.cpus):
            f = f"{field}.cpus[{j}]"
            spec: CpuSpec = self.entry("cpus", ref.model, dict(ref.model_extra or {}), f, CpuSpec)
            eff, eprov = self.efficiency("cpu", spec.efficiency)
            name = f"{node}.cpu{j}"
            split = f" (node host memory split over {n_cpu} sockets)" if n_cpu > 1 else ""
            prov = {
                "mem_bytes": _prov(ns.host_memory, split),
                "mem_bw": _prov(spec.memory_bandwidth),
                "cores": _prov(spec.cores),
                **{f"peak_flops.{k}": _prov(v) for k, v in spec.peak_flops.items()},
                **eprov,
            }
            if spec.price_per_hour:
                prov["price_per_hour"] = _prov(spec.price_per_hour)
            self.devices[name] = ComputeDevice(
                name=name,
                model=spec.name,
                kind="cpu",
                node=node,
                mem_bytes=share,
                mem_bw=spec.memory_bandwidth.si,
                peak_flops={k: v.si for k, v in spec.peak_flops.items()},
                efficiency=eff,
                price_per_hour=spec.price_per_hour.si if spec.price_per_hour else 0.0,
                cores=int(spec.cores.si),
                provenance=prov,
            )
            cpus.append(name)
            if j == 0:
                first_cpu = spec
        if n_cpu > 1:
            upi = ns.upi or self.default_upi(first_cpu)
            uspec = self.link_entry(upi, f"{field}.upi")
            for a, b in itertools.combinations(range(n_cpu), 2):
                self.add_link(f"{node}.upi.cpu{a}-cpu{b}", uspec, cpus[a], cpus[b], upi.count)

        refs = [(k, ref) for k, ref in enumerate(ns.gpus) for _ in range(ref.count)]
        for j, (k, ref) in enumerate(refs):
            f = f"{field}.gpus[{k}]"
            gspec: GpuSpec = self.entry("gpus", ref.model, dict(ref.model_extra or {}), f, GpuSpec)
            eff, eprov = self.efficiency("gpu", gspec.efficiency)
            name = f"{node}.gpu{j}"
            prov = {
                "mem_bytes": _prov(gspec.memory),
                "mem_bw": _prov(gspec.memory_bandwidth),
                **{f"peak_flops.{k}": _prov(v) for k, v in gspec.peak_flops.items()},
                **eprov,
            }
            if gspec.price_per_hour:
                prov["price_per_hour"] = _prov(gspec.price_per_hour)
            self.devices[name] = ComputeDevice(
                name=name,
                model=gspec.name,
                kind="gpu",
                node=node,
                mem_bytes=gspec.memory.si,
                mem_bw=gspec.memory_bandwidth.si,
                peak_flops={k: v.si for k, v in gspec.peak_flops.items()},
                efficiency=eff,
                price_per_hour=gspec.price_per_hour.si if gspec.price_per_hour else 0.0,
                provenance=prov,
            )
            gpus.append(name)
            socket = ref.socket if ref.socket is not None else j * n_cpu // len(refs)
            if socket >= n_cpu:
                raise self.fail(f"socket {socket} does not exist (node has {n_cpu})", f"{f}.socket")
            host = ref.host_link or LinkRef(link=ref.link or gspec.host_interface)
            lspec = self.link_entry(host, f"{f}.host_link" if ref.host_link else f"{f}.link")
            self.add_link(f"{node}.{lspec.kind}.gpu{j}", lspec, name, cpus[socket])

        if ns.nvlink is not None:
            nv = ns.nvlink
            nspec = self.link_entry(nv, f"{field}.nvlink")
            if nv.switch:
                for j, g in enumerate(gpus):
                    self.add_link(f"{node}.nvlink.gpu{j}", nspec, g, f"{node}.nvswitch", nv.count)
            for k, (a, b) in enumerate(nv.pairs):
                if not (0 <= a < len(gpus) and 0 <= b < len(gpus)) or a == b:
                    raise self.fail(f"bad GPU pair ({a}, {b})", f"{field}.nvlink.pairs[{k}]")
                self.add_link(f"{node}.nvlink.gpu{a}-gpu{b}", nspec, gpus[a], gpus[b], nv.count)

        for j, ref in enumerate(ns.disks):
            f = f"{field}.disks[{j}]"
            dspec: DiskSpec = self.entry("disks", ref.model, dict(ref.model_extra or {}), f, DiskSpec)
            if ref.socket >= n_cpu:
                raise self.fail(f"socket {ref.socket} does not exist (node has {n_cpu})", f"{f}.socket")
            name = f"{node}.disk{j}"
            prov = {
                "capacity_bytes": _prov(dspec.capacity),
                "read_bw": _prov(dspec.read_bandwidth),
                "write_bw": _prov(dspec.write_bandwidth),
            }
            if dspec.price_per_hour:
                prov["price_per_hour"] = _prov(dspec.price_per_hour)
            self.disks[name] = Disk(
                name=name,
                model=dspec.name,
                node=node,
                capacity_bytes=dspec.capacity.si,
                read_bw=dspec.read_bandwidth.si,
                write_bw=dspec.write_bandwidth.si,
                price_per_hour=dspec.price_per_hour.si if dspec.price_per_hour else 0.0,
                provenance=prov,
            )
            disks.append(name)
            fast = max(dspec.read_bandwidth, dspec.write_bandwidth, key=lambda q: q.si)
            self.links[f"{node}.nvme.disk{j}"] = Link(
                name=f"{node}.nvme.disk{j}",
                kind="nvme",
                a=name,
                b=cpus[ref.socket],
                bw=fast.si,
                latency_s=dspec.latency.si,
                pageable_bw=fast.si,
                provenance={"bw": _prov(fast), "latency_s": _prov(dspec.latency)},
            )

        if ns.nic is not None:
            if ns.nic.socket >= n_cpu:
                raise self.fail(f"socket {ns.nic.socket} does not exist", f"{field}.nic.socket")
            lspec = self.link_entry(ns.nic, f"{field}.nic")
            self.add_link(f"{node}.nic", lspec, cpus[ns.nic.socket], f"net.{ns.region}", ns.nic.count)

        self.nodes[node] = Node(
            name=node,
            region=ns.region,
            host_mem_bytes=ns.host_memory.si,
            cpus=tuple(cpus),
            gpus=tuple(gpus),
            disks=tuple(disks),
            price_per_hour=ns.price_per_hour.si if ns.price_per_hour else 0.0,
            cpu_sharing=ns.cpu_sharing,
            shared_dram_bw=ns.shared_memory_bandwidth.si if ns.shared_memory_bandwidth else 0.0,
            straggler_fraction=ns.straggler_fraction.si if ns.straggler_fraction else 0.0,
        )

    def network(self, regions: list[str]) -> None:
        net = self.spec.network
        if net is None:
            return
        explicit: dict[frozenset[str], tuple[int, LinkRef]] = {}
        for k, pair in enumerate(net.pairs):
            for r in pair.between:
                if r not in regions:
                    raise self.fail(
                        f"unknown region {r!r} (regions: {', '.join(regions)})", f"network.pairs[{k}]"
                    )
            explicit[frozenset(pair.between)] = (k, pair)
        for a, b in itertools.combinations(regions, 2):
            key = frozenset((a, b))
            if key in explicit:
                k, ref = explicit[key]
                spec = self.link_entry(ref, f"network.pairs[{k}]")
            elif net.wan is not None:
                ref = net.wan
                spec = self.link_entry(ref, "network.wan")
            else:
                continue
            self.add_link(f"wan.{a}-{b}", spec, f"net.{a}", f"net.{b}", ref.count)


def load_rig(path_or_name: str | os.PathLike[str], *, profiles: str | os.PathLike[str] | None = None) -> Rig:
    """Load a rig from a YAML path or a bare name under ``hardware_profiles/rigs``."""
    path = rig_path(path_or_name, profiles)
    source = str(path)
    raw = read_yaml(path)
    try:
        spec = RigSpec.model_validate(raw)
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
                "mem_bytes": d.mem_bytes,
                "mem_bw": d.mem_bw,
                "peak_flops": dict(d.peak_flops),
                "cores": d.cores,
                "price_per_hour": d.price_per_hour,
                "efficiency": {
                    "compute": dict(d.efficiency.compute),
                    "memory": d.efficiency.memory,
                    "overhead_s": d.efficiency.overhead_s,
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
                "latency_s": lk.latency_s,
                "weakest_grade": grade(lk.provenance),
            }
            for lk in rig.links.values()
        ],
    }
