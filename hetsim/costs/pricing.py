"""What a run costs: the hourly price of what a plan occupies, and dollars per million tokens."""

from __future__ import annotations

from collections.abc import Iterable

from hetsim.hardware.rig import Rig


def price_of(rig: Rig, devices: Iterable[str]) -> float:
    """Hourly price of what a plan occupies: its devices, plus the nodes they sit in."""
    used = [rig.devices[d] for d in devices if d in rig.devices]
    nodes = {d.node for d in used}
    return sum(d.price_per_hour for d in used) + sum(rig.nodes[n].price_per_hour for n in nodes)


def usd_per_mtok(price_per_hour: float, seconds: float, tokens: float) -> float:
    """Dollars per million generated tokens when ``tokens`` take ``seconds`` at ``price_per_hour``."""
    return price_per_hour / 3600.0 * seconds / tokens * 1e6
