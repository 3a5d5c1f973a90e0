"""Hardware model: catalogue of devices and links, rigs, routes (see docs/hardware-profiles.md)."""

from hetsim.hardware.loader import catalog, list_rigs, load_rig, rig_to_dict
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
