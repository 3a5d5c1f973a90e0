"""CPU seconds of FlexGen's whole search on the headline (llama2-70b on mixed-lab, 512 + 32, batch
free), in one process, by part: the LPs (``lp_candidates_free``), ``_confirmable`` and the engine
runs (the confirmations and the final run), with the result to check two trees give the same one.

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


timed(flexgen_lp, "lp_candidates_free", "LPs")
timed(flexgen_lp, "_confirmable", "_confirmable")
timed(ranking, "_estimate", "engine")
problem = api.problem("llama2-70b", "mixed-lab", None, 512, 32)
t0 = time.process_time()
result = api.best_result(get_strategy("flexgen"), problem, "throughput")
total = time.process_time() - t0
parts = " ".join(f"{k} {v:.3f}" for k, v in spent.items())
print(f"total {total:.3f} {parts} | {result.throughput_tok_s!r} tok/s, batch {result.batch}")
