"""The sweep YAML (pydantic at the boundary): what to run and what to draw.

    name: strategy-map
    objective: throughput             # latency | throughput | cost (a grid axis may vary it too)
    base: {batch: 8, prompt_len: 512, gen_len: 32}   # values every point starts from
    grids:                            # each grid is a full product; points are the union (deduplicated)
      - {model: [llama2-70b], rig: [mixed-lab], strategy: all, gpu_mem_gb: [16, 48, 80]}
    plots:
      - {kind: heatmap, x: gpu_mem_gb, y: pcie, facet: [model]}

Axes: ``model``, ``rig``, ``strategy`` (a list or ``all``), ``batch``, ``prompt_len``, ``gen_len``,
``objective``, the precisions ``dtype`` and ``kv_dtype`` (``--dtype`` / ``--kv-dtype``), the hardware
knobs of ``hetsim.sweep.grid.HW_KNOBS`` and plan knobs ``plan.<field>`` (each value checked on load against
the field's type in the plan of every strategy it meets, as a plan file's values are; one no strategy
it meets has is refused).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hetsim.errors import InputError
from hetsim.hardware.catalog import validation_error, whole_number
from hetsim.hardware.schema import MAX_PER_NODE, LinkKindName
from hetsim.textfiles import parse_yaml, read_text, validate_strictly
from hetsim.workload import MAX_WORK, WHY_MAX

WORKLOAD_AXES = ("batch", "prompt_len", "gen_len")
CORE_AXES = ("model", "rig", "strategy", *WORKLOAD_AXES, "objective")
# weight and KV cache precisions (compare's --dtype / --kv-dtype); unset = each strategy's own, and not
# part of a point's configuration, so sweeps that leave them out keep their point ids
PRECISION_AXES = ("dtype", "kv_dtype")
# hardware knobs: name -> what it does (applied by hetsim.sweep.grid.apply_hardware)
HW_KNOBS = {
    "gpu_mem_gb": "GPU memory budget per GPU in GB (caps each GPU's memory; plans' gpu_mem_budget)",
    "pcie": "catalogue link (e.g. pcie3-x16) whose numbers replace every PCIe link",
    "cpu_sockets": "keep the first N CPU sockets of each node (GPUs, disks, NICs move to socket 0)",
    "net_gbps": "per-direction bandwidth of every NIC link, in Gbit/s",
    "net_link": "catalogue link (e.g. infiniband-hdr) whose numbers replace every NIC link",
    "bw_scale": "mapping link kind -> factor scaling that kind's bandwidth (e.g. {pcie: 0.5})",
}
NIC_KINDS = ("ethernet", "infiniband", "rdma")
SWAPS = {"pcie": ("pcie",), "net_link": NIC_KINDS}  # the link kinds each swap knob replaces
METRICS = ("ttft_s", "tpot_s", "e2e_s", "throughput_tok_s", "cost_usd_per_mtok")
LOWER_IS_BETTER = {"ttft_s": True, "tpot_s": True, "e2e_s": True, "cost_usd_per_mtok": True,
                   "throughput_tok_s": False}  # fmt: skip


def _plain_name(v: str | None) -> str | None:
    """A name that becomes a folder or file under ``out`` (the sweep's, a plot's): one path part.
    "../../x" wrote the results two folders above ``out``."""
    if v is not None and (v in ("", ".", "..") or any(c in v for c in "/\\\0")):
        raise ValueError(f"must be a plain name (no path separator, not '.' or '..'), got {v!r}")
    return v


class PlotSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["line", "heatmap", "pareto"]
    name: str | None = None  # file stem; default derived from kind and axes
    x: str
    y: str | None = None  # heatmap: second knob; pareto: second metric; line: unused
    metric: str | None = None  # line: y metric; heatmap: value to show (default: the winning strategy)
    facet: list[str] = Field(default_factory=list)  # one figure per combination of these columns
    where: dict[str, Any] = Field(default_factory=dict)  # fix these columns (default: base values)
    objective: Literal["latency", "throughput", "cost"] | None = None  # heatmap winner rule

    _name = field_validator("name")(_plain_name)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and v not in METRICS:
            raise ValueError(f"unknown metric {v!r} (use {', '.join(METRICS)})")
        return v


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    objective: Literal["latency", "throughput", "cost"] = "throughput"
    search: bool = True  # each strategy searches its plan space (False: default plans)
    allow_compression: bool = False  # searches may try lossy plans (4-bit weights / KV cache)
    # per point (local process pool; Dask runs have none); at most a day
    timeout_s: float = Field(120.0, gt=0, le=86_400, allow_inf_nan=False)
    base: dict[str, Any] = Field(default_factory=dict)
    grids: list[dict[str, Any]] = Field(min_length=1)
    plots: list[PlotSpec] = Field(default_factory=list)

    _name = field_validator("name")(_plain_name)

    @field_validator("base")
    @classmethod
    def _base(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            _check_axis(k)
        return v

    @field_validator("grids")
    @classmethod
    def _grids(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for grid in v:
            for k, values in grid.items():
                _check_axis(k)
                if k == "strategy" and values == "all":
                    continue
                if not isinstance(values, list) or not values:
                    raise ValueError(f"axis {k!r} must be a non-empty list")
        return v


def _check_axis(name: str) -> None:
    if name in CORE_AXES or name in PRECISION_AXES or name in HW_KNOBS:
        return
    if name.startswith("plan.") and len(name) > 5:
        return
    known = ", ".join([*CORE_AXES, *PRECISION_AXES, *HW_KNOBS, "plan.<field>"])
    raise ValueError(f"unknown axis {name!r} (known: {known})")


def _positive_finite(x: Any) -> bool:
    """A number > 0 and finite: NaN fails both comparisons; an int past a float (400 digits) is
    compared exactly (``math.isfinite`` raised OverflowError on it, a traceback)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and 0 < x <= sys.float_info.max


# axes whose values are names (looked up in a registry or the catalogue)
NAMED_AXES = frozenset({"model", "rig", "strategy", "pcie", "net_link", "objective", *PRECISION_AXES})


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML; errors name the file and the field."""
    source = str(path)
    raw = parse_yaml(read_text(path), source)
    if not isinstance(raw, dict):
        raise InputError("expected a mapping at the top level", source=source)
    try:
        spec = validate_strictly(SweepSpec, raw, whole_floats=False)  # `true` is not 1
    except ValidationError as exc:
        raise validation_error(exc, source) from None
    _check_values(spec, source)
    return spec


# knobs that become a rig quantity: (its schema type, the unit the knob is in); bounded as a rig's
PHYSICAL = {"gpu_mem_gb": ("Bytes", "GB"), "net_gbps": ("Bandwidth", "Gb/s")}
LINK_KINDS = get_args(LinkKindName)


def _unphysical(key: str, value: float) -> str | None:
    """Why ``value`` of knob ``key`` is past the physical bounds a rig file's quantity has (the rig
    schema's check and words), or None."""
    from hetsim.hardware import schema

    kind, unit = PHYSICAL[key]
    return schema.out_of_bounds(getattr(schema, kind), f"{value!r} {unit}")


def _check_values(spec: SweepSpec, source: str) -> None:
    """Names that must exist (models, rigs, strategies, catalogue links), reported by field."""
    from hetsim.hardware.catalog import load_catalog
    from hetsim.hardware.loader import load_rig
    from hetsim.models.registry import get_model
    from hetsim.models.spec import unknown_dtype
    from hetsim.sim.memory import MIN_GPU_MEM_BUDGET, too_small
    from hetsim.strategies.base import get_strategy

    cat = load_catalog()

    def check(field: str, key: str, value: Any) -> None:
        try:
            if (
                value is None and key in CORE_AXES
            ):  # every point needs these: it failed (objective: a KeyError)
                raise InputError("must be given (null leaves only knobs unset)")
            if value is None:
                return
            if key in NAMED_AXES and not isinstance(value, str):  # a number or a list: not a name
                raise InputError(f"must be a name (a string), got {value!r}")
            if key == "model":
                get_model(value)
            elif key == "rig":  # read whole (~10 ms each): a malformed rig failed every point it ran
                load_rig(value)
            elif key == "strategy" and value != "all":
                get_strategy(value)
            elif key in ("pcie", "net_link") and (found := cat.resolve("links", value)) is None:
                raise InputError(f"unknown catalogue link {value!r}")
            elif key in ("pcie", "net_link") and found.spec.kind not in SWAPS[key]:
                # ethernet-100g's numbers swapped in for every PCIe link, silently
                kinds = " or ".join(SWAPS[key])
                raise InputError(
                    f"{value!r} is a {found.spec.kind} link, not {kinds} (bw_scale scales a kind)"
                )
            elif key in ("batch", "prompt_len", "gen_len", "cpu_sockets") and isinstance(value, float):
                raise InputError(whole_number(value))
            elif key in ("batch", "prompt_len", "gen_len", "cpu_sockets") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise InputError(f"must be a positive integer, got {value!r}")
            elif key in MAX_WORK and value > MAX_WORK[key]:
                raise InputError(f"must be <= {MAX_WORK[key]} ({WHY_MAX[key]}), got {value}")
            elif key == "cpu_sockets" and value > MAX_PER_NODE:  # 10**30: an OverflowError traceback
                raise InputError(
                    f"must be <= {MAX_PER_NODE} (the most sockets a rig's node holds), got {value}"
                )
            elif key in ("gpu_mem_gb", "net_gbps") and not _positive_finite(value):
                raise InputError(f"must be a positive finite number, got {value!r:.40}")
            elif key == "gpu_mem_gb" and too_small(value * 1e9):  # as --gpu-mem-budget (budget_problem)
                raise InputError(f"must be at least {MIN_GPU_MEM_BUDGET / 1e9:g} (1 MB), got {value!r}")
            elif key in PHYSICAL and (why := _unphysical(key, value)):  # 1e300 GB read "at least 1 MB"
                raise InputError(why)
            elif key == "objective" and value not in ("latency", "throughput", "cost"):
                raise InputError(f"unknown objective {value!r}")
            elif key in PRECISION_AXES and (why := unknown_dtype(value)) is not None:
                raise InputError(why)
            elif key == "bw_scale" and not (
                isinstance(value, dict) and all(_positive_finite(f) for f in value.values())
            ):
                raise InputError("must map link kinds to positive factors")
            elif key == "bw_scale" and (unknown := sorted(set(value) - set(LINK_KINDS), key=str)):
                # a misspelt kind scaled nothing, silently
                raise InputError(f"unknown link kind {unknown[0]!r} (known: {', '.join(LINK_KINDS)})")
        except InputError as exc:
            # inside the config.json a model names (a field, or the whole file: malformed): that file's
            # error, as a plan file's (``api.load_plan``); the spec's field alone named neither
            if exc.source is not None and (exc.field is not None or Path(exc.source).is_file()):
                raise
            raise InputError(exc.message, source=source, field=field) from None

    for k, v in spec.base.items():
        check(f"base.{k}", k, v)
    for i, grid in enumerate(spec.grids):
        for k, values in grid.items():
            for j, v in enumerate(values if isinstance(values, list) else [values]):
                check(f"grids[{i}].{k}[{j}]", k, v)
    _check_plan_knobs(spec, source)
    axes = {*spec.base, *(k for g in spec.grids for k in g), *CORE_AXES}
    for i, plot in enumerate(spec.plots):
        cols = [plot.x, *plot.facet, *plot.where]
        if plot.kind == "heatmap" and plot.y:
            cols.append(plot.y)
        for c in cols:
            if c not in axes and c not in METRICS:
                raise InputError(f"unknown column {c!r}", source=source, field=f"plots[{i}]")
        if plot.kind in ("heatmap", "pareto") and not plot.y:
            raise InputError("required for this kind", source=source, field=f"plots[{i}].y")
        if plot.kind == "pareto" and (plot.x not in METRICS or plot.y not in METRICS):
            raise InputError("pareto x and y must be metrics", source=source, field=f"plots[{i}]")
        if plot.kind == "line" and not plot.metric:
            raise InputError("required for a line plot", source=source, field=f"plots[{i}].metric")


def _check_plan_knobs(spec: SweepSpec, source: str) -> None:
    """Each ``plan.<field>`` value of the type the field has in the plan of every strategy it may
    meet that has the field (others ignore the knob; none having it is refused), read as a plan file's
    values are: ``2.0`` for gpu-only's ``micro_batches`` ran into a TypeError (a point's error row) and
    ``true`` ran as 1."""
    if not any(k.startswith("plan.") for k in (*spec.base, *(k for g in spec.grids for k in g))):
        return  # no strategy imported for a spec without plan knobs
    from hetsim.strategies.base import all_strategies, get_strategy

    def met(grid: dict[str, Any]) -> list[Any]:
        names = grid.get("strategy", spec.base.get("strategy", "all"))
        names = names if isinstance(names, list) else [names]
        return all_strategies() if "all" in names else [get_strategy(n) for n in names]

    grids = [(f"grids[{i}]", grid, met(grid)) for i, grid in enumerate(spec.grids)]
    base = [s for _, _, found in grids for s in found]  # a base value goes to every grid's points
    places = [("base", {k: [v] for k, v in spec.base.items()}, base, False), *(
        (where, grid, found, True) for where, grid, found in grids
    )]  # fmt: skip
    for where, knobs, strategies, indexed in places:
        for key, values in knobs.items():
            if not key.startswith("plan."):
                continue
            if strategies and not any(_has_field(s.plan_type, key[5:]) for s in strategies):
                # a typo (plan.wgg) ran every point with the knob ignored (noted in ignored_knobs only)
                names = ", ".join(sorted({s.name for s in strategies}))
                why = f"no plan of the strategies it meets ({names}) has a field {key[5:]!r}"
                raise InputError(why, source=source, field=f"{where}.{key}")
            for j, value in enumerate(values if isinstance(values, list) else [values]):
                if value is None:  # null leaves the knob unset (``grid.expand`` drops it): each plan's own
                    continue
                field = f"{where}.{key}" + (f"[{j}]" if indexed else "")
                if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_PLAN_INT:
                    why = "must be within +-(2**63 - 1) (the results table's 64-bit integers)"
                    raise InputError(f"{why}, got {value!r:.40}", source=source, field=field)
                for strategy in strategies:
                    why = _plan_value_problem(strategy.plan_type, key[5:], value) or _out_of_range(
                        strategy.knob_ranges.get(key[5:]), value
                    )
                    if why:
                        raise InputError(f"{why} ({strategy.name}'s plan field)", source=source, field=field)


def _out_of_range(bounds: tuple[float, float, str] | None, value: Any) -> str | None:
    """Why ``value`` (of its field's type) is outside a strategy's ``knob_ranges`` entry, as a plan
    file's ``check_plan`` says it (a point's error row, after the points before it ran)."""
    if bounds is None or bounds[0] <= value <= bounds[1]:
        return None
    low, high, why = bounds
    return f"must be in [{low:g}, {high:g}] ({why}), got {value!r}"


def _has_field(plan_type: type, name: str) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(plan_type) and name in {f.name for f in dataclasses.fields(plan_type)}


# The results table keeps each knob's value in a 64-bit integer column: 10**26 ended the sweep in a
# pyarrow OverflowError traceback after its points ran. No plan count comes near it.
MAX_PLAN_INT = 2**63 - 1


def _plan_value_problem(plan_type: type, name: str, value: Any) -> str | None:
    """Why ``value`` is no value of ``plan_type``'s field ``name`` (None: it is, or there is no such one)."""
    import typing

    from pydantic import create_model

    from hetsim.models.spec import unknown_dtype
    from hetsim.strategies.plan_io import non_finite

    if not _has_field(plan_type, name):
        return None
    if non_finite(value) is not None:  # as a plan file's: NaN passed every range check
        return f"must be a finite number, got {value!r:.40}"
    hint = typing.get_type_hints(plan_type)[name]
    one = create_model(f"{plan_type.__name__}_{name}", **{name: (hint, ...)})
    try:
        validate_strictly(one, {name: value}, whole_floats=False)  # YAML: 2.0 is a float, true no 1
    except ValidationError as exc:
        why = validation_error(exc, "").message
        return why if f"{value!r:.40}" in why else f"{why}, got {value!r:.40}"
    if name.endswith("dtype"):  # moe-offload's weight_dtype 'x': a KeyError row
        return unknown_dtype(value)
    return None
