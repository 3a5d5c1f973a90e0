"""Per-request records and what is reported from them: latency, TTFT, TPOT, percentiles, SLO
attainment, throughput and cost per million generated tokens.

A request can end a run unfinished: dropped (HexGen's drop-late) or cut off by a horizon. Latency,
TTFT and TPOT percentiles and means are over the *finished* requests, as serving benchmarks report
them (vLLM's ``benchmark_serving`` counts only completed requests), with the number finished and
unfinished beside them; SLO attainment is over every request, an unfinished one a miss. So a run
that drops half its requests shows the latencies of the half it served and, next to them, the
half it did not."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hetsim.costs.pricing import usd_per_mtok

INF = float("inf")
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RequestRecord:
    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int
    first_token_s: float = INF  # inf: never got there within the run
    finish_s: float = INF
    replica: int = -1

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        if self.output_len <= 1 or not math.isfinite(self.finish_s):
            return 0.0 if self.output_len <= 1 else INF
        return (self.finish_s - self.first_token_s) / (self.output_len - 1)


@dataclass(frozen=True)
class ServeResult:
    feasible: bool
    reason: str = ""
    records: tuple[RequestRecord, ...] = ()
    makespan_s: float = 0.0
    price_per_hour: float = 0.0
    replicas: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def latencies(self) -> np.ndarray:
        """Every request's latency, in request order (inf: unfinished)."""
        return np.array([r.latency_s for r in self.records])

    @property
    def finished(self) -> tuple[RequestRecord, ...]:
        return tuple(r for r in self.records if math.isfinite(r.finish_s))

    def mean_latency_s(self) -> float:
        """Mean latency of the finished requests (inf when none finished)."""
        done = self.finished
        return float(np.mean([r.latency_s for r in done])) if done else INF

    def attainment(self, deadlines: Sequence[float] | np.ndarray) -> float:
        """Fraction of requests finished within their deadline (unfinished ones miss)."""
        if not self.records:
            return 0.0
        return float(np.mean(self.latencies() <= np.asarray(deadlines)))

    @property
    def generated_tokens(self) -> int:
        return sum(r.output_len for r in self.records if math.isfinite(r.finish_s))

    @property
    def cost_usd_per_mtok(self) -> float:
        tokens = self.generated_tokens
        if not tokens or self.makespan_s <= 0:
            return INF
        return usd_per_mtok(self.price_per_hour, self.makespan_s, tokens)

    def summary(self, deadlines: Sequence[float] | np.ndarray | None = None) -> dict[str, Any]:
        """A JSON-ready digest (non-finite numbers become None). Percentiles and means are over the
        finished requests (None when none finished); ``unfinished`` counts the rest, dropped ones
        included (``dropped``, when the run could drop, says how many of them were)."""
        if not self.feasible:
            return {"feasible": False, "reason": self.reason}
        done = self.finished
        out: dict[str, Any] = {
            "feasible": True,
            "requests": len(self.records),
            "finished": len(done),
            "unfinished": len(self.records) - len(done),
            "replicas": self.replicas,
            "makespan_s": self.makespan_s,
            "throughput_tok_s": self.generated_tokens / self.makespan_s if self.makespan_s else 0.0,
            "price_usd_per_hour": self.price_per_hour,
            "cost_usd_per_mtok": self.cost_usd_per_mtok,
        }
        for name, values in (
            ("latency_s", [r.latency_s for r in done]),
            ("ttft_s", [r.ttft_s for r in done]),
            ("tpot_s", [r.tpot_s for r in done]),
        ):
            arr = np.asarray(values, dtype=float)
            out[name] = {f"p{p}": float(np.percentile(arr, p)) if done else INF for p in PERCENTILES}
            out[name]["mean"] = float(np.mean(arr)) if done else INF
        if deadlines is not None:
            out["slo_attainment"] = self.attainment(deadlines)
        out.update(self.extras)
        return _finite(out)


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
