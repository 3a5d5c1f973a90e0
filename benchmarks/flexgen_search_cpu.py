"""CPU seconds of FlexGen's whole search on the headline (llama2-70b on mixed-lab, 512 + 32, batch
free; ``--gen-len`` for another), in one process, by part: the LPs (``lp_candidates_lazy``'s
candidates as ``_confirmable`` reads them, or ``lp_candidates_free`` in trees before it),
``_confirmable`` less those, the floors that spare confirmations (``Estimator.floor``, where the
tree has it) and the engine runs (the confirmations), with the result to check two trees give the same one.

    PYTHONPATH=TREE .venv/bin/python benchmarks/flexgen_search_cpu.py     # one run, printed

    .venv/bin/python benchmarks/flexgen_search_cpu.py --base DIR [--repeats 4] [--no-record] [--label TEXT]

The second runs this tree and a checkout of the base (``git worktree add --detach DIR BASE``)
alternating, one fresh process a run (the module caches cold), and appends the minima and medians
to ``results.md``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import networkx  # noqa: F401  (imported before the heap is frozen, as the CLI does)
from record import append, min_median

from hetsim import api
from hetsim.planner import flexgen_lp, ranking
from hetsim.strategies.base import get_strategy

ROOT = Path(__file__).resolve().parents[1]

gc.freeze()
gc.set_threshold(1_000_000, 10, 10)
spent: dict[str, float] = collections.defaultdict(float)


def timed(module: object, name: str, label: str) -> None:
    f: Callable = getattr(module, name)

    def g(*args, **kwargs):
        t = time.process_time()
        out = f(*args, **kwargs)
        spent[label] += time.process_time() - t
        return out

    setattr(module, name, g)


def timed_iter(module: object, name: str, label: str) -> None:
    """Each candidate a generator yields, timed as it is asked for."""
    f: Callable = getattr(module, name)

    def g(*args, **kwargs):
        it = f(*args, **kwargs)
        while True:
            t = time.process_time()
            try:
                out = next(it)
            except StopIteration:
                spent[label] += time.process_time() - t
                return
            spent[label] += time.process_time() - t
            yield out

    setattr(module, name, g)


PARTS = ("LPs", "_confirmable", "floors", "engine")


def measure(gen_len: int = 32) -> None:
    """One search in this process; prints the total, the parts and the result."""
    if hasattr(flexgen_lp, "lp_candidates_lazy"):
        timed_iter(flexgen_lp, "lp_candidates_lazy", "LPs")
    else:
        timed(flexgen_lp, "lp_candidates_free", "LPs")
    timed(flexgen_lp, "_confirmable", "_confirmable")
    timed(ranking, "_estimate", "engine")
    if hasattr(ranking, "Estimator"):
        timed(ranking.Estimator, "floor", "floors")
    problem = api.problem("llama2-70b", "mixed-lab", None, 512, gen_len)
    t0 = time.process_time()
    result = api.best_result(get_strategy("flexgen"), problem, "throughput")
    total = time.process_time() - t0
    if hasattr(flexgen_lp, "lp_candidates_lazy"):  # read inside _confirmable
        spent["_confirmable"] -= spent["LPs"]
    parts = " ".join(f"{k} {spent[k]:.3f}" for k in PARTS)
    print(f"total {total:.3f} {parts} | {result.throughput_tok_s!r} tok/s, batch {result.batch}")


def alternate(base: Path, repeats: int, label: str, write: bool, gen_len: int = 32) -> None:
    """This tree and ``base`` run alternating, ``repeats`` each; the table appended to results.md."""
    trees = {"base": base.resolve(), "branch": ROOT}
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    results: dict[str, set[str]] = {t: set() for t in trees}
    for _ in range(repeats):
        for t, path in trees.items():
            env = {**os.environ, "PYTHONPATH": str(path)}
            out = subprocess.run(
                [sys.executable, __file__, "--gen-len", str(gen_len)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
                cwd=path,
            ).stdout.strip()
            numbers, result = out.split(" | ")
            words = numbers.split()
            runs[t].append({k: float(v) for k, v in zip(words[::2], words[1::2], strict=True)})
            results[t].add(result)
    head = ["total", *PARTS]
    lines = [
        f"| FlexGen's headline search (llama2-70b, mixed-lab, 512 + {gen_len}, batch free), "
        f"{repeats} alternating runs, CPU s min / median | {' | '.join(head)} |",
        "|---|" + "---|" * len(head),
    ]
    for t in trees:
        cells = [min_median([r.get(k, 0.0) for r in runs[t]], "{:.3f}") for k in head]
        lines.append(f"| {t} | {' | '.join(cells)} |")
    got = sorted(results["base"] | results["branch"])
    note = f"Result: {' / '.join(got)} ({'the same in both trees' if len(got) == 1 else 'DIFFERENT'})."
    append(" ".join(filter(None, ["`flexgen_search_cpu.py`", label])), "\n".join(lines), note, write=write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="a checkout of the base, run alternating with this tree")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    ap.add_argument("--label", default="", help="what was measured, added to the title (e.g. a commit)")
    ap.add_argument("--gen-len", type=int, default=32, help="the generation length (default 32)")
    args = ap.parse_args()
    if args.base is None:
        measure(args.gen_len)
    else:
        alternate(args.base, args.repeats, args.label, not args.no_record, args.gen_len)


if __name__ == "__main__":
    main()
