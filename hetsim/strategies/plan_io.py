"""Plans at the boundary: validated with pydantic on load, one clear line on error.

A plan from a file is checked twice: its shape (``validate_plan``: types, no unknown keys, every
parameter given, none taking a default) and then against the model it is for (``Strategy.check_plan``,
with the helpers here: layer counts that add up, fractions in range, at least one rank or stage).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

from pydantic_core import ValidationError

from hetsim.errors import InputError
from hetsim.hardware.rig import Rig
from hetsim.models.sharding import splits_heads
from hetsim.models.spec import ModelSpec, unknown_dtype
from hetsim.sim.memory import budget_problem
from hetsim.textfiles import validate_strictly


def validate_plan(plan_type: type, data: Mapping[str, Any], source: str) -> Any:
    if not isinstance(data, Mapping):
        raise InputError("expected an object of plan parameters", source=source, field="params")
    allowed = [f.name for f in dataclasses.fields(plan_type)] if dataclasses.is_dataclass(plan_type) else []
    if not data:
        # defaults are not a plan: an empty params object is almost always a mistake
        raise InputError(
            f"empty; a plan needs its parameters ({', '.join(allowed)})", source=source, field="params"
        )
    unknown = sorted(k for k in data if allowed and k not in allowed)
    if unknown:
        raise InputError(
            f"unknown parameter {unknown[0]!r} for this strategy (allowed: {', '.join(allowed)})",
            source=source,
            field=f"params.{unknown[0]}",
        )
    # every parameter, as ``hetsim plan --out`` writes them: a default taken for one left out (FlexGen's
    # wg = 20, HeteGen's resident = {}) runs a plan other than the one its writer meant. The format's
    # version (``hetsim_plan``) has stayed 1 as parameters were added, so the file cannot say whether
    # an older hetsim wrote it: the line says it may have.
    missing = [name for name in allowed if name not in data]
    if missing:
        raise InputError(
            f"missing; a plan gives every parameter, as `hetsim plan --out` writes them"
            f" (missing: {', '.join(missing)}); one from an older hetsim may predate the parameter:"
            " write it again with `hetsim plan --out`",
            source=source,
            field=f"params.{missing[0]}",
        )
    nested = unknown_nested(plan_type, data)
    if nested is not None:
        where, allowed_there = nested
        raise InputError(
            f"unknown key (allowed: {', '.join(allowed_there)})", source=source, field=f"params.{where}"
        )
    bad = non_finite(data)
    if bad is not None:
        raise InputError("must be a finite number", source=source, field=f"params.{bad}")
    try:
        return validate_strictly(plan_type, data)
    except ValidationError as exc:
        err = exc.errors()[0]
        # the catalogue imports pydantic's models and the rig schema: on this error path only, not in
        # every importer of the strategies (compare's early workers, forked before the parent reads)
        from hetsim.hardware.catalog import dotted

        where = dotted(err["loc"], "params")  # stages[0].layers, as the plan checks name it
        raise InputError(err["msg"], source=source, field=where) from None


def unknown_nested(plan_type: type, data: Mapping[str, Any], path: str = "") -> tuple[str, list[str]] | None:
    """(its path, the keys allowed there) of the first key of a dataclass nested in a plan (a HexGen
    replica, a pipeline stage) that no field names: pydantic drops such keys (a misplaced
    ``micro_batches`` inside a stage ran as if absent); None when there is none."""
    hints = typing.get_type_hints(plan_type)
    for f in dataclasses.fields(plan_type):
        value, hint = data.get(f.name), hints[f.name]
        args = typing.get_args(hint)
        inner = args[0] if typing.get_origin(hint) in (tuple, list) and args else hint
        if not (isinstance(inner, type) and dataclasses.is_dataclass(inner)):
            continue
        if inner is not hint and not isinstance(value, list):
            continue  # pydantic names a wrong type
        items = enumerate(value) if inner is not hint else [(None, value)]
        for i, item in items:
            if not isinstance(item, Mapping):
                continue  # pydantic names a wrong type
            here = f"{path}{f.name}" if i is None else f"{path}{f.name}[{i}]"
            names = [g.name for g in dataclasses.fields(inner)]
            extra = [k for k in item if k not in names]
            if extra:
                return f"{here}.{extra[0]}", names
            found = unknown_nested(inner, item, f"{here}.")
            if found is not None:
                return found
    return None


def non_finite(x: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number in a JSON-like value, else None."""
    if isinstance(x, float) and not math.isfinite(x):
        return path or "value"
    if isinstance(x, Mapping):
        items: Any = x.items()
    elif isinstance(x, list | tuple):
        items = enumerate(x)
    else:
        return None
    for k, v in items:
        found = non_finite(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


# ---- checks against the model ---------------------------------------------------------------------
def problem(field: str, message: str) -> InputError:
    return InputError(message, field=f"params.{field}")


def at_least(value: float, low: float, field: str) -> None:
    if not value >= low:
        raise problem(field, f"must be >= {low:g}, got {value!r}")


def in_range(value: float, low: float, high: float, field: str, why: str | None = None) -> None:
    """``why``: the bound's reason, where it is no property of the model or rig (a cap)."""
    if not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise problem(field, f"must be in [{low:g}, {high:g}]{reason}, got {value!r}")


def in_ranges(plan: Any, ranges: Mapping[str, tuple[float, float, str]]) -> None:
    """Each field of ``plan`` in its range (a strategy's ``knob_ranges``)."""
    for name, (low, high, why) in ranges.items():
        in_range(getattr(plan, name), low, high, name, why)


def known_dtype(name: str, field: str) -> None:
    if (why := unknown_dtype(name)) is not None:
        raise problem(field, why)


def optional_budget(value: float | None, field: str = "gpu_mem_budget") -> None:
    why = None if value is None else budget_problem(value, "a positive number of bytes or null")
    if why:
        raise problem(field, why)


def device_of_kind(rig: Rig, name: str, kind: str, field: str) -> None:
    """``name`` is a device of ``rig`` of this kind ('gpu', 'cpu') or, for 'disk', one of its disks."""
    found = rig.disks.get(name) if kind == "disk" else rig.devices.get(name)
    if found is None or (kind != "disk" and rig.devices[name].kind != kind):
        raise problem(field, f"{name!r} is not a {kind.upper()} of rig {rig.name}")


def tp_group(rig: Rig, model: ModelSpec, devices: Any, field: str) -> None:
    """A tensor-parallel group: GPUs of one machine that split the model's heads evenly."""
    for j, d in enumerate(devices):
        device_of_kind(rig, d, "gpu", f"{field}[{j}]")
    if len({rig.devices[d].node for d in devices}) > 1:
        raise problem(field, "a tensor-parallel group must be GPUs of one machine")
    heads_split(model, len(devices), field)


def heads_split(model: ModelSpec, ranks: int, field: str) -> None:
    """Megatron-style tensor parallelism gives each rank whole attention heads (``sharding.splits_heads``,
    the rule the searches keep); a plan file's 3 ranks of 32 heads was costed at 1/3 each."""
    if ranks and not splits_heads(model, ranks):
        raise problem(
            field, f"{ranks} ranks do not split {model.name}'s {model.heads} attention heads evenly"
        )


def stages_cover(stages: Any, n_layers: int, field: str) -> None:
    """Pipeline stages: at least one, each with devices and >= 1 layer, all layers covered once."""
    if not stages:
        raise problem(field, "needs at least one stage")
    for i, st in enumerate(stages):
        if not st.devices:
            raise problem(f"{field}[{i}].devices", "needs at least one device")
        if len(set(st.devices)) != len(st.devices):
            raise problem(f"{field}[{i}].devices", "names a device twice")
        at_least(st.layers, 1, f"{field}[{i}].layers")
    total = sum(st.layers for st in stages)
    if total != n_layers:
        raise problem(field, f"layers add up to {total}, but the model has {n_layers}")
