"""The device catalogue: ``hardware_profiles/{gpus,cpus,links,disks}/NAME.yaml`` and
``hardware_profiles/efficiency.yaml`` (per device class defaults).

Loaded once per profiles directory and cached. Every file is validated on load; a bad file
raises ``InputError`` naming the file and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hetsim.errors import InputError
from hetsim.hardware.schema import CpuSpec, DiskSpec, EfficiencyFile, GpuSpec, LinkSpec, whole_number
from hetsim.textfiles import read_yaml_mapping, validate_strictly

PROFILES_ENV = "HETSIM_PROFILES"
SECTIONS: dict[str, type[BaseModel]] = {
    "gpus": GpuSpec,
    "cpus": CpuSpec,
    "links": LinkSpec,
    "disks": DiskSpec,
}


def profiles_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$HETSIM_PROFILES``, else ``<repo root>/hardware_profiles``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "hardware_profiles"


def dotted(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """('nodes', 0, 'gpus', 1, 'memory') -> 'nodes[0].gpus[1].memory'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(exc: ValidationError, source: str, prefix: str = "") -> InputError:
    """The first pydantic error (an unknown key first) as one clear InputError line."""
    errors = exc.errors()
    # a typo shows up as a missing field plus an unknown one: the unknown one explains it
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # drop pydantic's internal tags (union branch names, 'function-after[...]') from the path
    loc = [p for p in err["loc"] if isinstance(p, int) or ("[" not in p and p not in ("str", "float", "int"))]
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field (typo?)"
    elif err["type"] == "int_type" and isinstance(err.get("input"), float):
        msg = whole_number(err["input"])
    return InputError(msg, source=source, field=dotted(loc, prefix) or None)


def read_yaml(path: Path) -> dict[str, Any]:
    """A catalogue or rig file (UTF-8, strict YAML: duplicate keys refused, ``1e-9`` a number)."""
    return read_yaml_mapping(path)


@dataclass(frozen=True)
class Entry:
    """One catalogue entry: the validated spec, its raw mapping (for per-rig overrides) and file."""

    spec: Any
    raw: dict[str, Any]
    source: str


@dataclass(frozen=True)
class Catalog:
    root: Path
    gpus: dict[str, Entry] = field(default_factory=dict)
    cpus: dict[str, Entry] = field(default_factory=dict)
    links: dict[str, Entry] = field(default_factory=dict)
    disks: dict[str, Entry] = field(default_factory=dict)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)  # section -> alias -> name
    efficiency: EfficiencyFile | None = None
    efficiency_source: str = ""

    def section(self, name: str) -> dict[str, Entry]:
        return getattr(self, name)

    def resolve(self, section: str, name: str) -> Entry | None:
        entries = self.section(section)
        key = self.aliases.get(section, {}).get(name, name)
        return entries.get(key)

    def names(self, section: str) -> list[str]:
        return sorted(self.section(section))


def _load(root: Path) -> Catalog:
    if not root.is_dir():
        raise InputError("hardware profiles directory not found", source=str(root))
    cat = Catalog(root=root)
    for section, model in SECTIONS.items():
        aliases: dict[str, str] = {}
        folder = root / section
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            raw = read_yaml(path)
            try:
                spec = validate_strictly(model, raw, whole_floats=False)
            except ValidationError as exc:
                raise validation_error(exc, str(path)) from None
            if spec.name != path.stem:
                raise InputError(
                    f"name {spec.name!r} must match the file name", source=str(path), field="name"
                )
            cat.section(section)[spec.name] = Entry(spec, raw, str(path))
            for alias in spec.aliases:
                aliases[alias] = spec.name
        cat.aliases[section] = aliases
    for section, aliases in cat.aliases.items():
        for alias, target in aliases.items():
            if alias in cat.section(section):
                raise InputError(
                    f"alias {alias!r} of {target!r} clashes with an entry",
                    source=cat.section(section)[target].source,
                    field="aliases",
                )
    eff_path = root / "efficiency.yaml"
    raw = read_yaml(eff_path)
    try:
        eff = validate_strictly(EfficiencyFile, raw, whole_floats=False)
    except ValidationError as exc:
        raise validation_error(exc, str(eff_path)) from None
    object.__setattr__(cat, "efficiency", eff)
    object.__setattr__(cat, "efficiency_source", str(eff_path))
    return cat


@lru_cache(maxsize=8)
def _cached(root: str) -> Catalog:
    return _load(Path(root))


def load_catalog(profiles: str | os.PathLike[str] | None = None) -> Catalog:
    """The catalogue under ``profiles`` (see ``profiles_dir``), loaded once and cached."""
    return _cached(str(profiles_dir(profiles).resolve()))
