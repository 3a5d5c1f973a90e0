"""Plans at the boundary: validated with pydantic on load, one clear line on error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from hetsim.errors import InputError


def validate_plan(plan_type: type, data: Mapping[str, Any], source: str) -> Any:
    try:
        return TypeAdapter(plan_type).validate_python(dict(data), strict=False)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("params", *err["loc"]))
        raise InputError(err["msg"], source=source, field=where) from None
