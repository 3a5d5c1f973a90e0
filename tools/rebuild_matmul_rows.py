"""Write calibrate's measured GEMM rates (``matmul_by_dtype.<dtype>.by_rows``) into the shipped profiles
built from recorded microbench sidecars, from those sidecars. Every other line stays as recorded (some
profiles were edited by hand after calibrate wrote them), so the block is inserted as text.

    python tools/rebuild_matmul_rows.py            # rewrite the profiles
    python tools/rebuild_matmul_rows.py --check    # exit 1 if any profile differs from its sidecar's rates
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from hetsim.textfiles import write_text_atomic
from hetsim.units import parse_flops
from validate import calibrate as cal

ROOT = Path(__file__).resolve().parents[1] / "validate/results"
# profile -> the sidecar calibrate wrote it from (issue/ is final/'s profile plus kernel_issue)
SIDECARS = {
    **{f"h200/{t}/{p}.yaml": f"h200/{t}/gpu.microbench.json"
       for t in ("before", "after", "final", "s19") for p in ("gpu", "gpu-10g")},
    **{f"h200/issue/{p}.yaml": "h200/final/gpu.microbench.json" for p in ("gpu", "gpu-10g")},
    "cpu-holdout/profile.yaml": "cpu-holdout/profile.microbench.json",
}  # fmt: skip


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _by_rows(doc: dict[str, Any], raw: dict[str, Any], rank: int, dt: str) -> dict[str, Any]:
    """calibrate's block, as shares of the profile's own peak (a fitted profile may have moved it), so
    that the profile books the rates the sidecar measured."""
    cpu = doc["nodes"][0]["cpus"][rank]
    curve = {**cal.derive(raw)["curves"][dt], "peak": parse_flops(cpu["peak_flops"][dt]["value"])}
    meas = f"measured by {doc['source']}"  # the recorded stamp: host, day, torch, threads
    return cal._matmul_entry(dt, curve, meas, "")["by_rows"]


def rebuilt(text: str, raw: dict[str, Any]) -> str:
    doc = yaml.safe_load(text)
    lines, out, rank = text.splitlines(keepends=True), [], -1
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.strip() != "matmul_by_dtype:":
            continue
        rank += 1
        table = _indent(line)
        while i < len(lines) and _indent(lines[i]) > table:  # one dtype entry per loop
            dt = lines[i].strip().rstrip(":")
            out.append(lines[i])
            i += 1
            body = _indent(lines[i])
            while i < len(lines) and _indent(lines[i]) >= body:
                if _indent(lines[i]) == body and lines[i].strip() == "by_rows:":  # the old block: dropped
                    i += 1
                    while i < len(lines) and _indent(lines[i]) > body:
                        i += 1
                    continue
                out.append(lines[i])
                i += 1
            block = yaml.safe_dump(
                {"by_rows": _by_rows(doc, raw, rank, dt)}, sort_keys=False, width=110 - body
            )
            out += [" " * body + b + "\n" for b in block.splitlines()]
    return "".join(out)


def main(argv: list[str]) -> int:
    stale = []
    for rel, side in SIDECARS.items():
        path = ROOT / rel
        old = path.read_text()
        text = rebuilt(old, json.loads((ROOT / side).read_text()))
        if text != old:
            stale.append(rel)
            if "--check" not in argv:
                write_text_atomic(path, text)
    print(("stale: " if "--check" in argv else "rewrote: ") + (", ".join(stale) or "none"))
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
