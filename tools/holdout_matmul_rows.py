"""Held-out error of the CPU GEMM rate a profile books from calibrate's measured rates per rows
(``MatmulCurve.rows``: a power law between the rows run, Hockney's shape from the nearest outside
them) and of Hockney's curve fitted through the same rows (what profiles booked before session 20),
on every recorded calibrate sidecar under validate/results. Both come from the code that books them
(``calibrate._matmul_curve``, ``MatmulCurve.gemm_compute``). Each test fits on some of a sweep's rows
and predicts every K x N run at the others; no run scored is in its fit:

- each interior m left out in turn (neither the smallest nor the largest m run);
- fit on --quick's rows (2, 8, 32, 128), predict the other rows (inside 2..128, and past 128);
- fit on m <= 32, predict m > 32.

    python tools/holdout_matmul_rows.py
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hetsim.hardware.types import MatmulCurve
from validate import calibrate as cal

ROOT = Path(__file__).resolve().parents[1] / "validate/results"
QUICK = (2, 8, 32, 128)


def sweeps() -> Iterator[list[dict[str, Any]]]:
    """Each recorded sidecar's runs of one dtype with a GEMM sweep of 3 or more rows."""
    for path in sorted(ROOT.glob("**/*microbench.json")):
        raw = json.loads(path.read_text())
        for dt in cal._dtypes(raw):
            runs = [g for g in raw["gemm"] if g["dtype"] == dt]
            if len({g["m"] for g in runs if g["m"] > 1}) >= 3:
                yield runs


def booked(runs: list[dict[str, Any]]) -> dict[str, Callable[[float], float]]:
    """FLOP/s at m rows, as a profile calibrated from ``runs`` books it: Hockney's curve and the
    measured rows."""
    c = cal._matmul_curve(runs)
    rows = tuple((m, r / c["peak"]) for m, r in c["points"])
    curve = MatmulCurve(c["flops_inf"] / c["peak"], c["rows_half"], 1.0, 0.0, rows)
    return {
        "hockney": lambda m: c["flops_inf"] * m / (m + c["rows_half"]),
        "rows": lambda m: curve.gemm_compute(m) * c["peak"],
    }


def _fits(ms: list[int]) -> dict[str, list[set[int]]]:
    """Test -> the row sets fitted (``ms``: a sweep's GEMM rows, increasing)."""
    return {
        "each interior m left out": [set(ms) - {m} for m in ms[1:-1]],
        "fit on --quick's rows": [set(ms) & set(QUICK)],
        "fit on m <= 32": [{m for m in ms if m <= 32}],
    }


def errors() -> dict[tuple[str, str], dict[str, list[float]]]:
    """(test, inside | past the largest rows fitted) -> method -> predicted / measured - 1, per run."""
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for runs in sweeps():
        ms = sorted({g["m"] for g in runs if g["m"] > 1})
        for test, fits in _fits(ms).items():
            for fit in fits:
                held = [g for g in runs if g["m"] > 1 and g["m"] not in fit]
                if not held:
                    continue
                pred = booked([g for g in runs if g["m"] == 1 or g["m"] in fit])
                for g in held:
                    where = "inside" if g["m"] < max(fit) else "past"
                    errs = out.setdefault((test, where), {k: [] for k in pred})
                    for k, f in pred.items():
                        errs[k].append(f(g["m"]) / g["flops"] - 1)
    return out


def main() -> int:
    print("| held-out test | rows predicted | runs | Hockney mean abs error (max) | measured rows (max) |")
    print("|---|---|---|---|---|")
    for (test, where), errs in errors().items():
        cells = [
            f"{statistics.fmean(abs(e) for e in v):.1%} ({max(abs(e) for e in v):.0%})" for v in errs.values()
        ]
        print(f"| {test} | {where} | {len(errs['rows'])} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
