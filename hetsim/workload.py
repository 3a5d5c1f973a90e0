"""What is asked of the model: an offline batch (prompt and generation lengths), step by step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from hetsim.errors import InputError

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

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "gen_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"must be a positive integer, got {value!r}", field=name)
            if value > MAX_WORK[name]:
                raise InputError(f"must be <= {MAX_WORK[name]} ({WHY_MAX[name]}), got {value}", field=name)

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
