"""What is asked of the model: an offline batch (prompt and generation lengths), step by step, and
how its tokens pick a mixture-of-experts model's experts (a routing profile)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from hetsim.errors import InputError
from hetsim.textfiles import read_yaml_mapping

# Bounds on the work one run may ask for. Past 2**16 sequences a batch gains nothing (every strategy
# here is bandwidth-bound far below it, and the KV cache of 65536 sequences of even 64 tokens of a 7B
# model is ~2 TB) while the offloading schedules' run time grows with it (~6 s at 2**16, minutes at
# 2**20); 2**20 tokens of context is past every catalogued model's window.
MAX_WORK = {"batch": 2**16, "prompt_len": 2**20, "gen_len": 2**20}
WHY_MAX = {
    "batch": "larger batches gain no throughput and their KV cache fits no rig",
    "prompt_len": "a million tokens, past any catalogued model's context window",
    "gen_len": "a million tokens, past any catalogued model's context window",
}


def largest_batch_where(ok: Callable[[int], bool]) -> int:
    """The largest batch (at most ``MAX_WORK``'s) for which ``ok`` holds, where it holds up to some
    batch and not past it (a footprint growing with the batch); 0 where not even 1 does. Doubling to
    the first batch refused, then bisection: a handful of tests however large the answer."""
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= MAX_WORK["batch"] and ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, MAX_WORK["batch"] + 1)
    while hi - lo > 1:  # ok(lo), not ok(hi) (or past the most)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it keys per-layer caches
class RoutingProfile:
    """How often the router picks each routed expert, per expert layer (e.g. counted over a trace).

    ``shares[j][e]``: the share of layer j's token-expert picks that go to expert e (a layer's shares
    sum to 1); j counts the expert layers only (DeepSeek's dense first layers have none). One row
    stands for every expert layer.
    """

    source: str
    shares: tuple[tuple[float, ...], ...]

    def pick_probs(self, moe_layer: int, top_k: int) -> tuple[float, ...]:
        """Probability that one token picks each expert of expert layer ``moe_layer`` (they sum to k)."""
        row = self.shares[moe_layer if len(self.shares) > 1 else 0]
        return tuple(top_k * s for s in row)

    def check(self, experts: int, top_k: int, moe_layers: int, model: str) -> None:
        """The profile fits the model: one row per expert layer (or one row), one share per expert, no
        expert picked by more than every token (share <= 1/k)."""
        if len(self.shares) not in (1, moe_layers):
            raise InputError(
                f"has {len(self.shares)} rows; {model} has {moe_layers} expert layers (give one row each, "
                "or one row for all)",
                source=self.source,
                field="layers",
            )
        for j, row in enumerate(self.shares):
            if len(row) != experts:
                raise InputError(
                    f"has {len(row)} experts; {model} routes to {experts}",
                    source=self.source,
                    field=f"layers[{j}]",
                )
            top = max(range(experts), key=lambda e: row[e])
            if top_k * row[top] > 1 + 1e-9:
                raise InputError(
                    f"expert {top} takes {row[top]:.3g} of the picks, more than every token can give it with "
                    f"top-{top_k} routing (at most {1 / top_k:.3g})",
                    source=self.source,
                    field=f"layers[{j}]",
                )


def read_routing_profile(path: str | Path) -> RoutingProfile:
    """A routing profile file: YAML (or JSON) with ``layers``, a list of rows, one per expert layer
    (or one row for all), each row one non-negative count or frequency per routed expert; an optional
    ``description``. Rows are normalised to shares."""
    source = str(path)
    doc = read_yaml_mapping(path)
    unknown = sorted(set(doc) - {"layers", "description"})
    if unknown:
        raise InputError("unknown key (known: layers, description)", source=source, field=str(unknown[0]))
    rows = doc.get("layers")
    if not isinstance(rows, list) or not rows:
        raise InputError(
            "must be a non-empty list of rows, one per expert layer", source=source, field="layers"
        )
    shares = []
    for j, row in enumerate(rows):
        where = f"layers[{j}]"
        if not isinstance(row, list) or not row:
            raise InputError("must be a non-empty list of per-expert counts", source=source, field=where)
        for e, v in enumerate(row):
            # a count past a float (an int of 400 digits) made isfinite raise; NaN fails both comparisons
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= sys.float_info.max:
                raise InputError(
                    f"must be a non-negative number, got {v!r:.40}", source=source, field=f"{where}[{e}]"
                )
        counted = sum(row)  # float() of a 400-digit int's sum overflowed; 1e308 + 1e308 is inf
        total = float(counted) if counted <= sys.float_info.max else math.inf
        if total <= 0:
            raise InputError("all counts are zero", source=source, field=where)
        if not math.isfinite(total):  # each share was v / inf = 0: no expert ever picked, silently
            raise InputError(
                "the counts add up past a float's range: scale them down", source=source, field=where
            )
        shares.append(tuple(v / total for v in row))
    return RoutingProfile(source, tuple(shares))


@dataclass(frozen=True)
class Workload:
    """An offline batch: ``batch`` sequences, each a ``prompt_len`` prompt and ``gen_len`` new tokens.

    Strategies may process the batch in blocks of their own choosing (FlexGen); metrics are for
    the whole batch. Serving workloads (request streams) live in ``hetsim.serving``.
    """

    batch: int = 1
    prompt_len: int = 512
    gen_len: int = 32
    # The weight precision the user asks for (``--dtype``); None = each strategy's own (16-bit unless its
    # plan says otherwise). A lossy one (q4_k_m, int4) is never chosen for the user; strategies that
    # cannot run it are not applicable.
    weight_dtype: str | None = None
    # The KV cache precision the user asks for (``--kv-dtype``); None = each strategy's own (16-bit, or
    # the checkpoint's fp32 where a strategy runs it so). Strategies that cannot run it are not applicable.
    kv_dtype: str | None = None
    # How the tokens pick experts (``--routing-profile``); None = uniformly (every expert equally often).
    routing: RoutingProfile | None = None
    # A short run standing for a longer one (``sample``): the generation length of the run it stands for,
    # less the tokens before the sample, by which a runtime that allocates its KV cache up front sizes it
    # (``kv_slots``); 0 = its own.
    alloc_gen_len: int = 0
    # A sample of a longer run (``sample``): the tokens the run generated before it, by which its prompt
    # is grown (0: the run's head, or a run of its own): with ``kv_slots``, the run it stands for (``whole``).
    sample_start: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "gen_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"must be a positive integer, got {value!r}", field=name)
            if value > MAX_WORK[name]:
                raise InputError(f"must be <= {MAX_WORK[name]} ({WHY_MAX[name]}), got {value}", field=name)
        if self.alloc_gen_len and self.alloc_gen_len < self.gen_len:
            raise InputError(f"must be 0 or >= gen_len, got {self.alloc_gen_len}", field="alloc_gen_len")
        if not 0 <= self.sample_start < self.prompt_len:
            raise InputError(f"must be in 0..prompt_len - 1, got {self.sample_start}", field="sample_start")

    def sample(self, start: int, gen_len: int) -> Workload:
        """This run's tokens ``start + 1 .. start + gen_len`` as a run of their own, standing for it (a
        search's proxy, a fast-forward's head, middle and tail samples): the prompt grown by the
        ``start`` tokens before them, the KV cache allocated as the whole run allocates it
        (``kv_slots``), and the whole run kept (``whole``). Its tokens lie inside this run's: past
        them the allocation would be 0 (``kv_slots``: the sample's own) and ``whole`` another run."""
        if not 0 <= start <= self.gen_len - gen_len:
            raise InputError(
                f"a sample of {gen_len} tokens starts in 0..{self.gen_len - gen_len}, got {start}",
                field="sample_start",
            )
        return replace(
            self,
            prompt_len=self.prompt_len + start,
            gen_len=gen_len,
            alloc_gen_len=(self.alloc_gen_len or self.gen_len) - start,
            sample_start=self.sample_start + start,
        )

    def head(self, gen_len: int) -> Workload:
        """This run's first ``gen_len`` tokens, standing for it (``sample``)."""
        return self.sample(0, gen_len)

    @property
    def whole(self) -> Workload:
        """The run this one stands for (``sample``; itself where it is a run of its own): what a
        strategy that plans by the whole run reads from any sample of it (HexGen's split)."""
        prompt = self.prompt_len - self.sample_start
        return replace(
            self, prompt_len=prompt, gen_len=self.kv_slots + 1 - prompt, alloc_gen_len=0, sample_start=0
        )

    @property
    def kv_slots(self) -> int:
        """Token slots per sequence of a KV cache allocated up front for the whole generation: the prompt
        and every generated token but the last (FlexGen 0.1.8, pytorch_backend.py:287-296)."""
        return self.prompt_len + (self.alloc_gen_len or self.gen_len) - 1

    @property
    def context_len(self) -> int:
        """Tokens of context after the last generated token."""
        return self.prompt_len + self.gen_len

    @property
    def total_tokens(self) -> int:
        return self.batch * self.gen_len

    def to_dict(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {
            "batch": self.batch,
            "prompt_len": self.prompt_len,
            "gen_len": self.gen_len,
        }
        if self.weight_dtype:
            out["weight_dtype"] = self.weight_dtype
        if self.kv_dtype:
            out["kv_dtype"] = self.kv_dtype
        if self.routing:
            out["routing_profile"] = self.routing.source
        return out


@dataclass(frozen=True)
class Step:
    """One forward step of the offline batch: the prefill, or decode step ``index`` (1-based)."""

    phase: Literal["prefill", "decode"]
    index: int
    seq_len: int
    kv_len: int


def steps(workload: Workload) -> Iterator[Step]:
    """Prefill (which yields the first token), then ``gen_len - 1`` decode steps."""
    yield Step("prefill", 0, workload.prompt_len, workload.prompt_len)
    for i in range(1, workload.gen_len):
        yield Step("decode", i, 1, workload.prompt_len + i)
