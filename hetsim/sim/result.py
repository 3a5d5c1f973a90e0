"""What one simulated run returns: metrics, or the reason it is infeasible."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

NAN = float("nan")


@dataclass(frozen=True)
class Result:
    strategy: str
    feasible: bool
    reason: str = ""
    plan: Mapping[str, Any] = field(default_factory=dict)
    ttft_s: float = NAN
    tpot_s: float = NAN
    e2e_s: float = NAN
    throughput_tok_s: float = NAN
    peak_mem_bytes: Mapping[str, float] = field(default_factory=dict)
    utilization: Mapping[str, float] = field(default_factory=dict)
    bottleneck: str = ""
    cost_usd_per_mtok: float = NAN
    weakest_grade: str = ""
    tasks: int = 0
    extras: Mapping[str, float] = field(default_factory=dict)
    # what the plan gives up in model quality ("" = lossless): e.g. "4-bit KV cache (group 64)"
    lossy: str = ""
    # the sequences the run generated for (the offline batch; a free-batch search picks it)
    batch: int | None = None

    @classmethod
    def infeasible(cls, strategy: str, reason: str, plan: Mapping[str, Any] | None = None) -> Result:
        return cls(strategy=strategy, feasible=False, reason=reason, plan=dict(plan or {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of docs/architecture.md (NaN becomes null)."""

        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, Mapping):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [clean(v) for v in x]
            return x

        return clean(
            {
                "strategy": self.strategy,
                "feasible": self.feasible,
                "reason": self.reason,
                "plan": dict(self.plan),
                "ttft_s": self.ttft_s,
                "tpot_s": self.tpot_s,
                "e2e_s": self.e2e_s,
                "throughput_tok_s": self.throughput_tok_s,
                "peak_mem_bytes": dict(self.peak_mem_bytes),
                "utilization": dict(self.utilization),
                "bottleneck": self.bottleneck,
                "cost_usd_per_mtok": self.cost_usd_per_mtok,
                "weakest_grade": self.weakest_grade,
                "tasks": self.tasks,
                "extras": dict(self.extras),
                "lossy": self.lossy,
                "batch": self.batch,
            }
        )


def rank_key(objective: str) -> Callable[[Result], tuple]:
    """Sort key: feasible results first, best objective first, then by name for stable ties."""

    def key(r: Result) -> tuple:
        if not r.feasible:
            return (1, 0.0, r.strategy)
        value = {
            "latency": r.e2e_s,
            "throughput": -r.throughput_tok_s,
            "cost": r.cost_usd_per_mtok if math.isfinite(r.cost_usd_per_mtok) else math.inf,
        }[objective]
        return (0, value, r.strategy)

    return key
