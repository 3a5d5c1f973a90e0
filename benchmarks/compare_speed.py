"""Wall and CPU time of the headline command as a user runs it (a fresh process, imports included):

    hetsim compare --model llama2-70b --hw mixed-lab --prompt-len 512 --gen-len G

at G = 32 (the baseline, in the same run) and G = 3584 (a 4096-token context, Llama-2-70B's limit),
alternating. Targets (issue 20): under 1 s at gen 32, and a long generation within 1.2x of it.

    .venv/bin/python benchmarks/compare_speed.py [--repeats 3] [--no-record]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from record import append, min_median, run_timed

ROOT = Path(__file__).resolve().parents[1]
GEN_LENS = (32, 3584)


def command(gen_len: int) -> list[str]:
    exe = shutil.which("hetsim") or str(Path(sys.executable).with_name("hetsim"))
    return [exe, "compare", "--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "512",
            "--gen-len", str(gen_len), "--format", "json"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    args = ap.parse_args()
    wall: dict[int, list[float]] = {g: [] for g in GEN_LENS}
    cpu: dict[int, list[float]] = {g: [] for g in GEN_LENS}
    for _ in range(args.repeats):
        for g in GEN_LENS:
            w, c, _ = run_timed(command(g), cwd=ROOT)
            wall[g].append(w)
            cpu[g].append(c)
    base = GEN_LENS[0]
    lines = [
        f"| `hetsim compare --model llama2-70b --hw mixed-lab --prompt-len 512 --gen-len G` "
        f"({args.repeats} alternating runs) | wall s: min / median | CPU s: min / median | "
        f"min wall / gen {base}'s |",
        "|---|---|---|---|",
    ]
    for g in GEN_LENS:
        ratio = min(wall[g]) / min(wall[base])
        lines.append(f"| G = {g} | {min_median(wall[g])} | {min_median(cpu[g])} | {ratio:.2f}x |")
    note = f"Targets (issue 20): gen {base} under 1 s wall; any gen length within 1.2x of gen {base}."
    append("`compare_speed.py`", "\n".join(lines), note, write=not args.no_record)


if __name__ == "__main__":
    main()
