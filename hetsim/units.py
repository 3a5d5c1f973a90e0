"""Human units at the boundary, SI inside.

GB = 1e9 bytes and GiB = 2**30 bytes are never mixed up. Rates accept ``/s`` or ``ps``;
bits are lower-case ``b`` (``100 Gb/s`` = 12.5e9 bytes/s), bytes upper-case ``B``.
Plain numbers pass through unchanged (already SI).
"""

from __future__ import annotations

import math
import re

_DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}

# A decimal number as people and programs write one: ASCII digits, sign, fraction, exponent. Python's
# int() and float() (and re's \d) also read other scripts' digits ("٣" is 3) and "1_000", which no
# spreadsheet or CSV writer means as a number; a file or flag so written is refused, not guessed at.
_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*(\S*)\s*$")
_INTEGER = re.compile(r"\s*[0-9]+\s*")


class UnitError(ValueError):
    """A quantity that cannot be parsed in the expected dimension."""


def _split(text: str | float | int) -> tuple[float, str]:
    if isinstance(text, bool):
        raise UnitError(f"expected a quantity, got {text!r}")
    if isinstance(text, int | float):
        return float(text), ""
    m = _QUANTITY.match(str(text))
    if not m:
        raise UnitError(f"cannot parse quantity {text!r}")
    return float(m.group(1)), m.group(2)


def _prefix(prefix: str, what: str, text: object) -> float:
    if prefix in _BINARY:
        return _BINARY[prefix]
    if prefix in _DECIMAL:
        return _DECIMAL[prefix]
    raise UnitError(f"unknown unit prefix {prefix!r} in {what} {text!r}")


def is_bare_number(text: str | float | int) -> bool:
    """A number without a unit (``64``, ``"64"``): a size so given is bytes (``--gpu-mem-budget 24``, a
    rig's ``memory: 64``), which the size checks name when it is absurdly small."""
    if isinstance(text, int | float):
        return not isinstance(text, bool)
    m = _QUANTITY.match(text)
    return bool(m) and not m.group(2)


def parse_decimal(text: str) -> float:
    """A text cell (a CSV's) holding a plain decimal number, blanks around it allowed; ValueError for
    anything else (``float`` alone reads "1_000", "٣", "nan" and "infinity")."""
    m = _QUANTITY.match(text)
    if not m or m.group(2):
        raise ValueError(f"not a decimal number: {text!r}")
    return float(m.group(1))


def misread_number(text: str) -> bool:
    """Whether Python (``int``, ``float``, pydantic's lax mode) would read ``text`` as a finite number
    that is no ASCII decimal one ("1_000", "٣"): what a flag's value must not be taken as. The words
    ``float`` reads as infinite or NaN are left to the checks of finite values, which name them."""
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and not is_bare_number(text)


def parse_count(text: str) -> int:
    """A text cell holding a whole number in ASCII digits (``parse_decimal``'s rule, no sign, fraction or
    exponent), blanks around it allowed; ValueError for anything else."""
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def parse_bytes(text: str | float | int) -> float:
    """'16 GB' -> 16e9, '16 GiB' -> 17179869184, '512 MB' -> 5.12e8, 1e9 -> 1e9."""
    value, unit = _split(text)
    if unit == "":
        return value
    if unit.endswith("B"):
        return value * _prefix(unit[:-1], "size", text)
    if unit.endswith("b"):
        return value * _prefix(unit[:-1], "size", text) / 8.0
    raise UnitError(f"unknown size unit {unit!r} in {text!r} (use B, KB, MB, GB, GiB, ...)")


def parse_bandwidth(text: str | float | int) -> float:
    """'12 GB/s' -> 12e9 bytes/s, '100 Gb/s' or '100 Gbps' -> 12.5e9 bytes/s."""
    value, unit = _split(text)
    if unit == "":
        return value
    for suffix in ("/s", "ps"):
        if unit.endswith(suffix):
            return parse_bytes(f"{value} {unit[: -len(suffix)]}")
    raise UnitError(f"unknown bandwidth unit {unit!r} in {text!r} (use GB/s, Gb/s, Gbps, ...)")


def parse_flops(text: str | float | int) -> float:
    """'65 TFLOPS' -> 6.5e13 FLOP/s, '312 TOPS' -> 3.12e14 op/s."""
    value, unit = _split(text)
    if unit == "":
        return value
    for suffix in ("FLOPS", "FLOP/s", "OPS", "OP/s"):
        if unit.endswith(suffix):
            return value * _prefix(unit[: -len(suffix)], "compute rate", text)
    raise UnitError(f"unknown compute unit {unit!r} in {text!r} (use TFLOPS, GFLOPS, TOPS)")


def parse_time(text: str | float | int) -> float:
    """'30 us' -> 3e-5 s, '2 ms' -> 2e-3 s."""
    value, unit = _split(text)
    if unit == "":
        return value
    if unit in _TIME:
        return value * _TIME[unit]
    raise UnitError(f"unknown time unit {unit!r} in {text!r} (use s, ms, us, ns)")


def parse_frequency(text: str | float | int) -> float:
    """'2.3 GHz' -> 2.3e9 Hz, '5600 MT/s' -> 5.6e9 transfers/s."""
    value, unit = _split(text)
    if unit == "":
        return value
    for suffix in ("Hz", "T/s", "T"):
        if unit.endswith(suffix):
            return value * _prefix(unit[: -len(suffix)], "frequency", text)
    raise UnitError(f"unknown frequency unit {unit!r} in {text!r} (use GHz, MHz, MT/s)")


def fmt_bytes(n: float) -> str:
    """Decimal, human-readable: 1.37e11 -> '137.4 GB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_time(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(t) >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"
