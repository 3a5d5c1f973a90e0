"""Hardware model: catalogue of devices and links, rigs, routes (see docs/hardware-profiles.md)."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.hardware.types import (
    ComputeDevice,
    Disk,
    Efficiency,
    Grade,
    Hop,
    Link,
    Node,
    Provenance,
    Route,
)

if TYPE_CHECKING:
    from hetsim.hardware.loader import catalog, list_rigs, load_rig, rig_to_dict

# The loader (its pydantic schema and YAML, ~0.05 CPU s) is imported on first use of its names: a
# search worker unpickles rigs and routes on them without reading any file.
_LOADER = ("catalog", "list_rigs", "load_rig", "rig_to_dict")

__all__ = [
    "ComputeDevice",
    "Disk",
    "Efficiency",
    "Grade",
    "Hop",
    "Link",
    "NoRouteError",
    "Node",
    "Provenance",
    "Rig",
    "Route",
    "catalog",
    "list_rigs",
    "load_rig",
    "rig_to_dict",
]


class _Package(ModuleType):
    """This package, whose ``catalog`` is the loader's function (as when ``__init__`` imported it):
    importing the ``catalog`` submodule (its own ``sys.modules`` entry) binds it on the package,
    which would hide the function from ``__getattr__``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name == "catalog" and isinstance(value, ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _LOADER:
        from hetsim.hardware import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'hetsim.hardware' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the loader's lazy ones included (as when ``__init__`` imported them)."""
    return sorted({*globals(), *_LOADER})
