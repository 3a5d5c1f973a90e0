"""The ladder's bisection past the default plan's cap keeps to batches one pass holds, as its climb
does (hetsim.planner.search._Ladder.bisect): a multi-pass batch there is one the ladder never gives."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

search_mod = importlib.import_module("hetsim.planner.search")

TOP = 10  # the default plan's cap
ONE_PASS = 12  # the searched plan runs up to 12 sequences in one pass, more in several


@dataclass(frozen=True)
class _Plan:
    batch_per_pass: int


class _Splitting:
    name = "splitting"

    def pass_batch(self, plan: _Plan) -> int:
        return plan.batch_per_pass


class _Landscape(search_mod._Ladder):
    """Searched plans without a search: the rate rises with the batch, in several passes too."""

    def searched(self, batch: int):
        if batch not in self.plans:
            self.plans[batch] = (_Plan(min(batch, ONE_PASS)), True)
            self.scores[batch] = (0, -float(batch), "splitting")
        return self.plans[batch]


def test_the_bisection_past_the_cap_keeps_to_one_pass(monkeypatch):
    monkeypatch.setattr(search_mod, "largest_batch", lambda *args: TOP)
    ladder = _Landscape(_Splitting(), None, None, None, "throughput", False)
    got = ladder.best()
    plan, fits_ = ladder.searched(got)
    assert fits_
    assert plan.batch_per_pass >= got  # one pass: 11 or 12, not 21 (climb: 11 held, 22 did not)
    assert got > TOP
