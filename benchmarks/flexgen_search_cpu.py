"""CPU seconds of FlexGen's whole search on the headline (llama2-70b on mixed-lab, 512 + 32, batch
free), in one process, by part: the LPs (``lp_candidates_lazy``'s candidates as ``_confirmable`` reads
them, or ``lp_candidates_free`` in trees before it), ``_confirmable`` less those, and the engine runs
(the confirmations and the final run), with the result to check two trees give the same one.

    PYTHONPATH=TREE .venv/bin/python benchmarks/flexgen_search_cpu.py

Run it alternating against a checkout of the base (``git worktree add --detach DIR BASE``) and take
the minima: one run is one process, the module caches cold.
"""

from __future__ import annotations

import collections
import gc
import time
from collections.abc import Callable

import networkx  # noqa: F401  (imported before the heap is frozen, as the CLI does)

from hetsim import api
from hetsim.planner import flexgen_lp, ranking
from hetsim.strategies.base import get_strategy

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


if hasattr(flexgen_lp, "lp_candidates_lazy"):
    timed_iter(flexgen_lp, "lp_candidates_lazy", "LPs")
else:
    timed(flexgen_lp, "lp_candidates_free", "LPs")
timed(flexgen_lp, "_confirmable", "_confirmable")
timed(ranking, "_estimate", "engine")
problem = api.problem("llama2-70b", "mixed-lab", None, 512, 32)
t0 = time.process_time()
result = api.best_result(get_strategy("flexgen"), problem, "throughput")
total = time.process_time() - t0
if hasattr(flexgen_lp, "lp_candidates_lazy"):  # read inside _confirmable
    spent["_confirmable"] -= spent["LPs"]
parts = " ".join(f"{k} {spent[k]:.3f}" for k in ("LPs", "_confirmable", "engine"))
print(f"total {total:.3f} {parts} | {result.throughput_tok_s!r} tok/s, batch {result.batch}")
