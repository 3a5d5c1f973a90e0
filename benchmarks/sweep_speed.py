"""Points per second of the shipped strategy-map sweep as a user runs it (a fresh process, both
cores), each run into an empty folder so that no point is skipped as done, with and without its
plots (alternating):

    hetsim sweep experiments/strategy-map.yaml --out TMPDIR [--no-plots]

Target (issue 20): at least 50 points/s. The table gives points per wall second and per CPU second
(the workers' CPU included; the machine's load moves it less than wall time).

    .venv/bin/python benchmarks/sweep_speed.py [--repeats 3] [--spec SWEEP.yaml] [--no-record] [--label TEXT]
        [--base DIR]

``--base DIR`` runs a checkout of the base (e.g. ``git worktree add DIR main``) too, its package first
on ``PYTHONPATH``, alternating with this tree's runs, so both are measured at the same load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from record import append, min_median, run_timed

from hetsim.cli.commands import _cores
from hetsim.sweep.grid import expand
from hetsim.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


VARIANTS = {"whole command (plots drawn)": [], "points only (`--no-plots`)": ["--no-plots"]}


def command(spec: Path, out: Path, extra: list[str]) -> list[str]:
    exe = shutil.which("hetsim") or str(Path(sys.executable).with_name("hetsim"))
    # --workers given, so a base older than the usable-cores default runs as many as the title says
    return [exe, "sweep", str(spec), "--out", str(out), "--workers", str(_cores()), *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spec", type=Path, default=ROOT / "experiments" / "strategy-map.yaml")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    ap.add_argument("--label", default="", help="what was measured, added to the title (e.g. a commit)")
    ap.add_argument("--base", type=Path, help="a checkout of the base, run alternating with this tree")
    args = ap.parse_args()
    spec = args.spec.resolve()
    points = len(expand(load_spec(spec)))
    trees = {"": ROOT} if args.base is None else {"base": args.base.resolve(), "branch": ROOT}
    rows = [f"{t}: {v}".lstrip(": ") for t in trees for v in VARIANTS]
    wall: dict[str, list[float]] = {r: [] for r in rows}
    cpu: dict[str, list[float]] = {r: [] for r in rows}
    for _ in range(args.repeats):
        for tree, path in trees.items():
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")])),
            }
            for variant, extra in VARIANTS.items():
                with tempfile.TemporaryDirectory() as tmp:
                    w, c, _ = run_timed(command(spec, Path(tmp) / "out", extra), cwd=path, env=env)
                row = f"{tree}: {variant}".lstrip(": ")
                wall[row].append(w)
                cpu[row].append(c)
    rel = spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec
    lines = [
        f"| `hetsim sweep {rel}` ({points} points, {_cores()} workers: the usable cores, "
        f"{args.repeats} alternating runs) "
        "| wall s: min / median | CPU s: min / median | points per wall s (best) | points per CPU s (best) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r} | {min_median(wall[r])} | {min_median(cpu[r])} | {points / min(wall[r]):.1f} "
            f"| {points / min(cpu[r]):.1f} |"
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
