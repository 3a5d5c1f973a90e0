"""Grid expansion, point hashing, and the hardware/plan overrides a point applies.

A point is a flat dict of its full configuration (model, rig, strategy, workload, objective, search,
and every knob it sets). Its id is the sha256 of that dict as canonical JSON: the same
configuration always gets the same id, so a re-run knows what is already done.

Hardware knobs transform the loaded ``Rig`` (frozen dataclasses, ``dataclasses.replace``); they
never edit YAML. Plan knobs (``plan.<field>``) replace fields of the plan a strategy searched.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any

from hetsim.hardware.rig import Rig
from hetsim.hardware.schema import TO_HOST_FIELDS, Bandwidth, out_of_bounds
from hetsim.hardware.types import Link, Provenance
from hetsim.sim.memory import usable_bytes
from hetsim.sweep.spec import CORE_AXES, HW_KNOBS, NIC_KINDS, SWAPS, SweepSpec

DEFAULTS: dict[str, Any] = {"strategy": "all", "batch": 1, "prompt_len": 512, "gen_len": 32}


def canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_id(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


# A sweep's size: at ~1 s a point on a few cores, 10^5 points is a day; a bigger grid is a typo in
# an axis, and expanding 10^7 points alone takes minutes and gigabytes.
MAX_POINTS = 100_000
WHY_MAX_POINTS = "about a day of runs; split the grid"


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of the spec, in a deterministic order, without duplicates.

    Knobs left unset (or ``null``) are not part of a point's configuration, so adding an axis to
    a spec does not change the ids of points that leave it at the shipped value.
    """
    from hetsim.strategies.base import all_strategies

    names = sorted(s.name for s in all_strategies())
    seen: dict[str, dict[str, Any]] = {}
    for grid in spec.grids:
        axes = {**{k: [v] for k, v in DEFAULTS.items()}, "objective": [spec.objective]}
        axes.update({k: [v] for k, v in spec.base.items()})
        axes.update(grid)
        if axes.get("strategy") in ("all", ["all"]):
            axes["strategy"] = names
        for k in ("model", "rig"):
            if k not in axes:
                raise ValueError(f"grid has no {k!r} (set it in base or in the grid)")
        keys = list(axes)
        size = math.prod(len(axes[k]) if isinstance(axes[k], list) else 1 for k in keys)
        if size + len(seen) > MAX_POINTS:
            raise ValueError(
                f"{size + len(seen)} points; at most {MAX_POINTS} in one sweep ({WHY_MAX_POINTS})"
            )
        for values in itertools.product(*(axes[k] for k in keys)):
            config = {k: v for k, v in zip(keys, values, strict=True) if v is not None}
            config["search"] = spec.search
            if spec.allow_compression:  # absent when off: earlier sweeps keep their point ids
                config["allow_compression"] = True
            pid = point_id(config)
            seen.setdefault(pid, {**config, "point_id": pid})
    return list(seen.values())


def knob_columns(points: list[dict[str, Any]]) -> list[str]:
    """Config columns of the result table: core axes first, then knobs in first-seen order."""
    extra = dict.fromkeys(k for p in points for k in p if k not in (*CORE_AXES, "search", "point_id"))
    return [*CORE_AXES, "search", *extra]


# ---- hardware overrides ---------------------------------------------------------------------
# The parts a knob changes, by the part they came from and the change: rigs that apply the same
# change to the same loaded part hold the same new object, so a sweep's remembered answers
# (``runner._evaluate``), which compare parts by identity, see them as the same. Each entry holds
# its original (and what else the change used), so the ids stay their own.
_DERIVED: dict[tuple, tuple[Any, tuple, Any]] = {}
_DERIVED_MAX = 65536


def _derive(original: Any, change: tuple, make: Callable[[], Any], *held: Any) -> Any:
    """``make()``, or what it gave for the same ``original`` object, ``change`` and ``held`` objects."""
    key = (id(original), *change, *map(id, held))
    hit = _DERIVED.get(key)
    if hit is not None and hit[0] is original and all(a is b for a, b in zip(hit[1], held, strict=True)):
        return hit[2]
    if len(_DERIVED) >= _DERIVED_MAX:
        _DERIVED.clear()
    new = make()
    _DERIVED[key] = (original, held, new)
    return new


def gpu_mem_budget(config: Mapping[str, Any]) -> float | None:
    """A point's ``gpu_mem_gb`` in bytes: each GPU's memory cap and its plans' budget (None: unset)."""
    gb = config.get("gpu_mem_gb")
    return float(gb) * 1e9 if gb is not None else None


def apply_hardware(rig: Rig, knobs: Mapping[str, Any]) -> Rig:
    """The rig with the point's hardware knobs applied (a new Rig; the input is untouched)."""
    if not any(k in knobs for k in HW_KNOBS):
        return rig
    devices = dict(rig.devices)
    links = dict(rig.links)
    nodes = dict(rig.nodes)
    note = "sweep override"

    if knobs.get("cpu_sockets") is not None:
        keep_n = int(knobs["cpu_sockets"])
        for name, node in rig.nodes.items():
            if len(node.cpus) <= keep_n:
                continue
            kept, dropped = node.cpus[:keep_n], set(node.cpus[keep_n:])
            for d in dropped:
                del devices[d]
            for lname, link in list(links.items()):
                a = kept[0] if link.a in dropped else link.a
                b = kept[0] if link.b in dropped else link.b
                if (a, b) == (link.a, link.b):
                    continue
                if a == b or (a in kept and b in kept):  # a socket-to-socket link that now loops
                    del links[lname]
                else:
                    links[lname] = _derive(
                        link, ("ends", a, b), lambda link=link, a=a, b=b: replace(link, a=a, b=b)
                    )
            host = node.host_mem_bytes * keep_n / len(node.cpus)  # the dropped sockets' DIMMs go too
            nodes[name] = _derive(
                node,
                ("sockets", keep_n),
                lambda node=node, kept=kept, host=host: replace(node, cpus=kept, host_mem_bytes=host),
            )

    budget = gpu_mem_budget(knobs)
    if budget is not None:
        for name, dev in list(devices.items()):
            # a GPU holding less keeps its memory (``usable_bytes``, the rule's one home)
            if dev.kind == "gpu" and usable_bytes(dev.mem_bytes, budget) < dev.mem_bytes:

                def capped(dev: Any = dev) -> Any:
                    prov = {
                        **dev.provenance,
                        "mem_bytes": Provenance(
                            f"{note}: gpu_mem_gb",
                            dev.provenance["mem_bytes"].grade
                            if "mem_bytes" in dev.provenance
                            else _assumed(),
                        ),
                    }
                    return replace(dev, mem_bytes=budget, provenance=prov)

                devices[name] = _derive(dev, ("mem", budget), capped)

    def swap(kinds: tuple[str, ...], link_name: str, only_nic: bool) -> None:
        from hetsim.hardware.catalog import load_catalog

        entry = load_catalog().resolve("links", link_name)
        if entry is None:
            raise ValueError(f"unknown catalogue link {link_name!r}")
        spec = entry.spec
        bw, lat = spec.bandwidth.si, spec.latency.si
        pageable = spec.pageable_bandwidth.si if spec.pageable_bandwidth is not None else bw
        prov = {
            "bw": Provenance(spec.bandwidth.source, spec.bandwidth.grade_enum),
            "latency_s": Provenance(spec.latency.source, spec.latency.grade_enum),
        }
        # a swapped GPU host link takes the catalogue entry's device-to-host rates too (none: symmetric);
        # other links have none (the loader refuses them there)
        to_host: dict[str, float | None] = dict.fromkeys(TO_HOST_FIELDS)
        to_host_prov: dict[str, Provenance] = {}
        for key, what in TO_HOST_FIELDS.items():
            q = getattr(spec, what)
            if q is not None:
                to_host[key], to_host_prov[key] = q.si, Provenance(q.source, q.grade_enum)
        for lname, link in list(links.items()):
            if link.kind in kinds and (not only_nic or _is_nic(link)):
                end = devices.get(link.a)
                gpu_host = end is not None and end.kind == "gpu"
                fwd = to_host if gpu_host else dict.fromkeys(TO_HOST_FIELDS)
                p = {**prov, **(to_host_prov if gpu_host else {})}
                links[lname] = _derive(
                    link,
                    ("swap", gpu_host),
                    lambda link=link, fwd=fwd, p=p: replace(
                        link, bw=bw, latency_s=lat, pageable_bw=pageable, provenance=p, **fwd
                    ),
                    spec,
                )

    if knobs.get("pcie") is not None:
        swap(SWAPS["pcie"], knobs["pcie"], only_nic=False)
    if knobs.get("net_link") is not None:
        swap(SWAPS["net_link"], knobs["net_link"], only_nic=True)
    if knobs.get("net_gbps") is not None:
        bw = float(knobs["net_gbps"]) * 1e9 / 8
        for lname, link in list(links.items()):
            if _is_nic(link):

                def at_rate(link: Link = link) -> Link:
                    prov = {**link.provenance, "bw": Provenance(f"{note}: net_gbps", _assumed())}
                    return replace(
                        link, bw=bw, pageable_bw=bw, provenance=prov, **dict.fromkeys(TO_HOST_FIELDS)
                    )

                links[lname] = _derive(link, ("net", bw), at_rate)
    _scale_links(links, knobs.get("bw_scale"), rig.name)
    # a fresh route cache: routes of the original rig are stale here
    return replace(rig, devices=devices, links=links, nodes=nodes)


def _scale_links(links: dict[str, Link], scale: Mapping[str, float] | None, rig_name: str) -> None:
    """``bw_scale``'s factors applied, in place, to the rates of ``links`` of their kinds (``_scaled``:
    ValueError where one takes a link past a rig file's bounds)."""
    for kind, factor in (scale or {}).items():
        for lname, link in list(links.items()):
            if link.kind == kind:
                where = f"{kind} x {factor!r} takes link {lname!r} of rig {rig_name!r}"
                links[lname] = _derive(
                    link,
                    ("scale", factor),
                    lambda link=link, factor=factor, where=where: _scaled(link, factor, where),
                )


# a link's rates as the rig schema names them (bw_scale's messages)
_RATES = {"bw": "bandwidth", "pageable_bw": "pageable_bandwidth", **TO_HOST_FIELDS}


def _scaled(link: Link, factor: float, where: str) -> Link:
    """``link`` with every rate times ``factor``, each held to the bounds a rig file's bandwidth has (the
    rig schema's rule and words): a factor of 1e300 ran links of infinite bandwidth, 1e-300 of 1e-290 B/s."""
    rates = {k: getattr(link, k) for k in _RATES}
    new = {k: v * factor if v is not None else None for k, v in rates.items()}
    for k, v in new.items():
        if v is not None and (why := out_of_bounds(Bandwidth, v)):
            raise ValueError(f"{where} past a rig file's bounds: {_RATES[k]} {why}")
    return replace(link, **new)


def _is_nic(link: Link) -> bool:
    return link.kind in NIC_KINDS and (link.a.startswith("net.") or link.b.startswith("net."))


def _assumed():
    from hetsim.hardware.types import Grade

    return Grade.ASSUMED


# knobs that set the links bw_scale then scales: which links there are (cpu_sockets drops the
# socket-to-socket ones) and their rates (a swapped PCIe generation, a NIC's rate)
_LINK_KNOBS = ("cpu_sockets", "pcie", "net_link", "net_gbps")


def check_scaled_links(spec: SweepSpec, source: str) -> None:
    """Each ``bw_scale`` value applied, before any point runs, to every rig its points have (with the
    knobs that set the links it scales): a link it takes past a rig file's bounds is one line naming the
    sweep file and the field. A rig that does not load is left to its points' rows."""
    from hetsim.errors import InputError
    from hetsim.hardware.loader import load_rig

    loaded: dict[str, Rig | None] = {}
    unscaled: dict[tuple, dict[str, Link]] = {}  # the links a rig has with the link knobs, by both
    for i, grid in enumerate(spec.grids):
        axes = {**{k: [v] for k, v in spec.base.items()}, **grid}
        if "bw_scale" in grid:
            scales = [(f"grids[{i}].bw_scale[{j}]", v) for j, v in enumerate(grid["bw_scale"])]
        else:
            scales = [("base.bw_scale", spec.base.get("bw_scale"))]
        for (field, scale), name, *rates in itertools.product(
            scales, axes.get("rig", []), *(axes.get(k, [None]) for k in _LINK_KNOBS)
        ):
            if not scale:
                continue
            if name not in loaded:
                try:
                    loaded[name] = load_rig(name)
                except InputError:
                    loaded[name] = None
            rig = loaded[name]
            if rig is None:
                continue
            try:
                links = unscaled.get((name, *rates))
                if links is None:
                    knobs = {k: v for k, v in zip(_LINK_KNOBS, rates, strict=True) if v is not None}
                    links = unscaled[name, *rates] = apply_hardware(rig, knobs).links
                _scale_links(dict(links), scale, rig.name)  # the links alone: no rig built per scale
            except ValueError as exc:
                raise InputError(str(exc), source=source, field=field) from None


# ---- plan overrides -------------------------------------------------------------------------
def plan_knobs(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k[5:]: v for k, v in config.items() if k.startswith("plan.")}


def override_plan(plan: Any, knobs: Mapping[str, Any], gpu_mem_budget: float | None) -> tuple[Any, list[str]]:
    """``plan`` with the fields it has replaced; returns the knobs it does not have."""
    if plan is None or not is_dataclass(plan):
        return plan, sorted(knobs)
    have = {f.name for f in fields(plan)}
    changes = {k: v for k, v in knobs.items() if k in have}
    if gpu_mem_budget is not None and "gpu_mem_budget" in have and "gpu_mem_budget" not in changes:
        current = plan.gpu_mem_budget  # type: ignore[attr-defined]
        changes["gpu_mem_budget"] = gpu_mem_budget if current is None else min(current, gpu_mem_budget)
    if changes:
        field_types = {f.name: f.type for f in fields(plan)}
        for k, v in list(changes.items()):
            if isinstance(v, list) and "tuple" in str(field_types[k]):
                changes[k] = tuple(v)
        plan = replace(plan, **changes)
    return plan, sorted(k for k in knobs if k not in have)
