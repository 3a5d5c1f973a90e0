"""Wall and CPU time of the headline command as a user runs it (a fresh process, imports included):

    hetsim compare --model llama2-70b --hw mixed-lab --prompt-len 512 --gen-len G

at G = 32 (the baseline, in the same run) and G = 3584 (a 4096-token context, Llama-2-70B's limit),
alternating. Targets (issue 20): under 1 s at gen 32, and a long generation within 1.2x of it.

    .venv/bin/python benchmarks/compare_speed.py [--repeats 3] [--no-record] [--base DIR] [--label TEXT]

Python caches compiled modules (``__pycache__``) unless ``PYTHONDONTWRITEBYTECODE`` is set, as it is
on the development VM: there every run compiles each hetsim module it imports again (~0.1-0.2 CPU s
per process), which a user pays only on the first run after an install or an edit. Runs here are
timed both ways: "cached" (bytecode written to a temporary ``PYTHONPYCACHEPREFIX`` by an untimed
first run, as from a user's second run) and "compiled" (the environment as it is).

``--base DIR`` runs a checkout of the base (e.g. ``git worktree add DIR main``) too, its package first
on ``PYTHONPATH``, alternating with this tree's runs, so both are measured at the same load; the
table says whether the two printed the same bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from record import append, min_median, run_timed

ROOT = Path(__file__).resolve().parents[1]
GEN_LENS = (32, 3584)


def command(gen_len: int, tree: Path | None = None) -> list[str]:
    """The headline compare; run with ``tree``'s own console script where it has a venv (a base
    from before the console script's entry point moved cannot run this one's)."""
    own = tree / ".venv" / "bin" / "hetsim" if tree is not None else None
    exe = (
        str(own)
        if own and own.exists()
        else shutil.which("hetsim") or str(Path(sys.executable).with_name("hetsim"))
    )
    return [exe, "compare", "--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "512",
            "--gen-len", str(gen_len), "--format", "json"]  # fmt: skip


def environment(tree: Path, pycache: Path | None) -> dict[str, str]:
    """The environment of a run of ``tree``: its package first; bytecode cached under ``pycache``
    (None: as the environment says)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
    }
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    ap.add_argument("--base", type=Path, help="a checkout of the base, run alternating with this tree")
    ap.add_argument("--label", default="", help="what was measured, added to the title (e.g. a commit)")
    args = ap.parse_args()
    trees = {"": ROOT} if args.base is None else {"base": args.base.resolve(), "branch": ROOT}
    modes = ("cached", "compiled")
    rows = [(t, m, g) for m in modes for g in GEN_LENS for t in trees]
    wall: dict[tuple, list[float]] = {r: [] for r in rows}
    cpu: dict[tuple, list[float]] = {r: [] for r in rows}
    outputs: dict[tuple, set[bytes]] = {(m, g): set() for m in modes for g in GEN_LENS}
    with tempfile.TemporaryDirectory() as tmp:
        envs = {
            (t, m): environment(path, Path(tmp) / (t or "tree") if m == "cached" else None)
            for t, path in trees.items()
            for m in modes
        }
        for t, path in trees.items():  # untimed: writes the bytecode the "cached" runs read
            run_timed(command(GEN_LENS[0], path), cwd=path, env=envs[t, "cached"])
        for _ in range(args.repeats):
            for g in GEN_LENS:
                for m in modes:
                    for t, path in trees.items():
                        w, c, out = run_timed(command(g, path), cwd=path, env=envs[t, m])
                        wall[t, m, g].append(w)
                        cpu[t, m, g].append(c)
                        outputs[m, g].add(out)
    base = GEN_LENS[0]
    same = "" if args.base is None else " | same bytes as base"
    lines = [
        f"| `hetsim compare --model llama2-70b --hw mixed-lab --prompt-len 512 --gen-len G` "
        f"({args.repeats} alternating runs) | wall s: min / median | CPU s: min / median | "
        f"min wall / gen {base}'s{same} |",
        "|---|---|---|---|" + ("---|" if same else ""),
    ]
    for t, m, g in rows:
        ratio = min(wall[t, m, g]) / min(wall[t, m, base])
        label = ", ".join(filter(None, [t, f"bytecode {m}", f"G = {g}"]))
        cell = "" if not same else f" | {'yes' if len(outputs[m, g]) == 1 else 'NO'}"
        lines.append(
            f"| {label} | {min_median(wall[t, m, g])} | {min_median(cpu[t, m, g])} | {ratio:.2f}x{cell} |"
        )
    note = (
        f"Targets (issue 20): gen {base} under 1 s wall; any gen length within 1.2x of gen {base}. "
        "Bytecode cached: as from a user's second run; compiled: every hetsim module compiled again "
        "in each process (PYTHONDONTWRITEBYTECODE=1, this VM's setting)."
    )
    title = " ".join(filter(None, ["`compare_speed.py`", args.label]))
    append(title, "\n".join(lines), note, write=not args.no_record)


if __name__ == "__main__":
    main()
