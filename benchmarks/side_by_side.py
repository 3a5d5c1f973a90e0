"""Wall time of hetsim commands, this tree against a baseline tree, alternating in one run.

The development machine is shared and its load moves by 2-3x within minutes, so a number measured
alone says little; runs of the two trees alternate (base, new, base, new, ...) and the table gives
the minimum and median of each, the least CPU time (user + system, worker processes included: less
moved by the load than wall time), and whether the two printed the same bytes.

    git archive BASE_COMMIT | (mkdir -p /tmp/base && tar -x -C /tmp/base)
    .venv/bin/python benchmarks/side_by_side.py --base /tmp/base --repeats 3 [--only help,serve]
        [--no-record]     # print only (by default the table is appended to benchmarks/results.md)

Each run is a fresh process (``python -m hetsim.cli ...``, imports included) with ``PYTHONPATH``
set to the tree under test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from record import append, run_timed

ROOT = Path(__file__).resolve().parents[1]

CASES: dict[str, list[str]] = {
    "help": ["--help"],
    "compare-gen32": ["compare", "--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "512",
                      "--gen-len", "32", "--format", "json"],
    "compare-gen128": ["compare", "--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "512",
                       "--gen-len", "128", "--format", "json"],
    "compare-gen3584": ["compare", "--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "512",
                        "--gen-len", "3584", "--format", "json"],
    "compare-opt30b-t4": ["compare", "--model", "opt-30b", "--hw", "flexgen-t4", "--format", "json"],
    "compare-opt30b-t4-batch8": ["compare", "--model", "opt-30b", "--hw", "flexgen-t4", "--batch", "8",
                                 "--format", "json"],
    "serve-600s": ["serve", "--model", "llama2-70b", "--hw", "hexgen-full-budget", "--rate", "5",
                   "--duration", "600", "--format", "json"],
    "serve-3600s": ["serve", "--model", "llama2-70b", "--hw", "hexgen-full-budget", "--rate", "5",
                    "--duration", "3600", "--format", "json"],
    "plan-hexgen-58gpu": ["plan", "--model", "llama2-70b", "--hw", "hexgen-full-budget", "--strategy",
                          "hexgen", "--format", "json"],
}  # fmt: skip


def run_once(tree: Path, args: list[str]) -> tuple[float, float, bytes]:
    """(wall s, CPU s of the process and the workers it waited for, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # cwd too: ``python -m`` puts the working directory ahead of PYTHONPATH
    return run_timed([sys.executable, "-m", "hetsim.cli", *args], env=env, cwd=tree)


# name, base wall times, new wall times, same output, base CPU times, new CPU times
Row = tuple[str, list[float], list[float], bool, list[float], list[float]]


def measure(base: Path, new_tree: Path, names: list[str], repeats: int) -> list[Row]:
    rows = []
    for name in names:
        old, new, same, cpu_old, cpu_new = [], [], True, [], []
        for _ in range(repeats):
            t_old, c_old, out_old = run_once(base, CASES[name])
            t_new, c_new, out_new = run_once(new_tree, CASES[name])
            old.append(t_old)
            new.append(t_new)
            cpu_old.append(c_old)
            cpu_new.append(c_new)
            same = same and out_old == out_new
            print(f"  {name}: base {t_old:.2f} s ({c_old:.2f} CPU s), new {t_new:.2f} s ({c_new:.2f} CPU s)",
                  file=sys.stderr, flush=True)  # fmt: skip
        rows.append((name, old, new, same, cpu_old, cpu_new))
    return rows


def table(rows: list[Row], repeats: int) -> str:
    lines = [
        f"| command (fresh process; {repeats} alternating runs each) | base min / median | "
        "new min / median | speed-up (minima) | CPU s base / new (minima) | same output |",
        "|---|---|---|---|---|---|",
    ]
    for name, old, new, same, cpu_old, cpu_new in rows:
        cmd = "hetsim " + " ".join(CASES[name])
        lines.append(
            f"| `{cmd}` | {min(old):.2f} / {statistics.median(old):.2f} s | {min(new):.2f} / "
            f"{statistics.median(new):.2f} s | {min(old) / min(new):.1f}x | "
            f"{min(cpu_old):.2f} / {min(cpu_new):.2f} s | {'yes' if same else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="source tree of the baseline commit")
    ap.add_argument("--new", type=Path, default=ROOT, help="source tree under test (default: this one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--label", default="", help="what the baseline is (a commit), for the heading")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    rows = measure(args.base.resolve(), args.new.resolve(), names, args.repeats)
    title = f"`side_by_side.py` against {args.label or args.base}"
    append(title, table(rows, args.repeats), "Compare within a row only.", write=not args.no_record)


if __name__ == "__main__":
    main()
