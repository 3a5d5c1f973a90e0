"""Points per second of the shipped strategy-map sweep as a user runs it (a fresh process, both
cores), each run into an empty folder so that no point is skipped as done, with and without its
plots (alternating):

    hetsim sweep experiments/strategy-map.yaml --out TMPDIR [--no-plots]

Target (issue 20): at least 50 points/s. The table gives points per wall second and per CPU second
(the workers' CPU included; the machine's load moves it less than wall time).

    .venv/bin/python benchmarks/sweep_speed.py [--repeats 3] [--spec SWEEP.yaml] [--no-record] [--label TEXT]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from record import append, min_median, run_timed

from hetsim.sweep.grid import expand
from hetsim.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


VARIANTS = {"whole command (plots drawn)": [], "points only (`--no-plots`)": ["--no-plots"]}


def command(spec: Path, out: Path, extra: list[str]) -> list[str]:
    exe = shutil.which("hetsim") or str(Path(sys.executable).with_name("hetsim"))
    return [exe, "sweep", str(spec), "--out", str(out), *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spec", type=Path, default=ROOT / "experiments" / "strategy-map.yaml")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    ap.add_argument("--label", default="", help="what was measured, added to the title (e.g. a commit)")
    args = ap.parse_args()
    spec = args.spec.resolve()
    points = len(expand(load_spec(spec)))
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant, extra in VARIANTS.items():
            with tempfile.TemporaryDirectory() as tmp:
                w, c, _ = run_timed(command(spec, Path(tmp) / "out", extra), cwd=ROOT)
            wall[variant].append(w)
            cpu[variant].append(c)
    rel = spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec
    lines = [
        f"| `hetsim sweep {rel}` ({points} points, 2 workers, {args.repeats} alternating runs) "
        "| wall s: min / median | CPU s: min / median | points per wall s (best) | points per CPU s (best) |",
        "|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        lines.append(
            f"| {v} | {min_median(wall[v])} | {min_median(cpu[v])} | {points / min(wall[v]):.1f} "
            f"| {points / min(cpu[v]):.1f} |"
        )
    note = "Target (issue 20): >= 50 points per wall second on this 2-core machine (whole command)."
    append(
        " ".join(filter(None, ["`sweep_speed.py`", args.label])),
        "\n".join(lines),
        note,
        write=not args.no_record,
    )


if __name__ == "__main__":
    main()
