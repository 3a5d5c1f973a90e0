"""Request streams: Poisson arrivals from a seeded generator, or a CSV trace.

Poisson streams of a fixed number of requests draw unit-rate gaps once and divide them by the
rate, so the same seed gives the same requests (and lengths) at every rate, just closer together:
sweeps over rate compare like with like.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hetsim.errors import InputError
from hetsim.textfiles import read_text
from hetsim.units import parse_count, parse_decimal

PAPER_LENGTHS = (32, 64, 128)  # HexGen's input and output lengths (HexGen, arXiv 2311.11514)
TRACE_FIELDS = ("arrival_s", "prompt_len", "output_len")


# One stream's size: percentiles and attainment are stable to <1% long before this, while the
# event simulation's time and memory grow with it (~minutes per 10^5 requests on big rigs).
MAX_REQUESTS = 100_000
# Below this the arrival times of even a short stream run past what a float second can say usefully
# (at 1e-308 they overflow to infinity); no serving question is asked at one request a fortnight.
MIN_RATE = 1e-6
# A trace spans at most ~30 years: later arrivals are a unit mistake (ms or us read as s).
MAX_ARRIVAL_S = 1e9
WHY_MAX_REQUESTS = "more requests do not sharpen the percentiles, only lengthen the run"


@dataclass(frozen=True)
class Request:
    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int


def poisson_requests(
    rate: float,
    *,
    n: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    prompt_lens: Sequence[int] = PAPER_LENGTHS,
    output_lens: Sequence[int] = PAPER_LENGTHS,
) -> list[Request]:
    """Poisson arrivals at ``rate`` req/s, bounded by ``n`` requests or ``duration_s`` seconds
    (both: whichever ends first); lengths drawn uniformly from the given choices."""
    if not (rate >= MIN_RATE and math.isfinite(rate)):
        raise InputError(
            f"must be a finite number >= {MIN_RATE:g} requests/s (one a ~12 days), got {rate}", field="--rate"
        )
    if n is None and duration_s is None:
        raise InputError("give a number of requests or a duration", field="--duration")
    if seed < 0:
        raise InputError(f"must be a non-negative integer, got {seed}", field="--seed")
    if n is not None and n > MAX_REQUESTS:
        raise InputError(f"must be <= {MAX_REQUESTS} ({WHY_MAX_REQUESTS}), got {n}", field="--num-requests")
    if n is None and rate * float(duration_s) > MAX_REQUESTS:  # type: ignore[arg-type]
        # the flag to lower: a rate over the cap per second overflows it in any duration of a second
        # or more (``--rate 1e308 --duration 1`` blamed the duration); otherwise the duration is long
        field = "--rate" if rate > MAX_REQUESTS else "--duration"
        raise InputError(
            f"{rate:g} requests/s x {float(duration_s):g} s = {rate * float(duration_s):.3g} requests; "  # type: ignore[arg-type]
            f"at most {MAX_REQUESTS} ({WHY_MAX_REQUESTS})",
            field=field,
        )
    root = np.random.SeedSequence(seed)
    gaps_rng, len_rng = (np.random.default_rng(s) for s in root.spawn(2))
    if n is None:
        # enough unit-rate gaps to cover the duration with overwhelming probability
        expect = rate * float(duration_s)  # type: ignore[arg-type]
        n_draw = int(expect + 10 * np.sqrt(expect + 1) + 10)
    else:
        n_draw = n
    arrivals = np.cumsum(gaps_rng.exponential(1.0, n_draw)) / rate
    if duration_s is not None:
        arrivals = arrivals[arrivals <= duration_s]
    prompts = len_rng.choice(np.asarray(prompt_lens), size=n_draw)
    outputs = len_rng.choice(np.asarray(output_lens), size=n_draw)
    return [
        Request(i, float(a), int(p), int(o))
        for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs, strict=False))
    ]


def read_trace(path: str | Path, too_long: Callable[[int], str | None] | None = None) -> list[Request]:
    """A CSV with columns arrival_s, prompt_len, output_len (header required), sorted by arrival.
    ``too_long(prompt_len + output_len)``: why a row's context does not fit the model, or None."""
    source = str(path)
    text = read_text(path)
    reader = csv.DictReader(text.splitlines())
    # names as written after ", " (a spreadsheet's or a person's header): the values' spaces are
    # dropped by their parsers, so the header's are too
    header = reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    rows, lines = [], []  # each row's line in the file: the reader skips blank lines
    for row in reader:
        rows.append(row)
        lines.append(reader.line_num)
    for name in TRACE_FIELDS:
        if name not in header:
            raise InputError(f"missing column (need {', '.join(TRACE_FIELDS)})", source=source, field=name)
        if header.count(name) > 1:  # the reader would keep the last one's values
            raise InputError("column given twice", source=source, field=name)
    if not rows:
        raise InputError("no requests in the trace", source=source)
    if len(rows) > MAX_REQUESTS:
        raise InputError(f"{len(rows)} requests; at most {MAX_REQUESTS} ({WHY_MAX_REQUESTS})", source=source)
    out = []
    for i, row in zip(lines, rows, strict=True):
        if None in row:  # more values than columns: which belongs to which is a guess
            raise InputError(f"line {i}: more values than the header has columns", source=source)
        short = next((name for name in TRACE_FIELDS if row[name] is None), None)
        if short is not None:  # said "not a positive integer: None"
            raise InputError(
                f"line {i}: fewer values than the header has columns", source=source, field=short
            )
        try:
            arrival = parse_decimal(row["arrival_s"])
            if not 0 <= arrival <= MAX_ARRIVAL_S:
                raise ValueError
        except (TypeError, ValueError):
            raise InputError(
                f"line {i}: not a time in [0, {MAX_ARRIVAL_S:g}] s: {row['arrival_s']!r}",
                source=source,
                field="arrival_s",
            ) from None
        lengths = []
        for name in ("prompt_len", "output_len"):
            try:
                v = parse_count(row[name])
                if v < 1:
                    raise ValueError
            except (TypeError, ValueError):
                raise InputError(
                    f"line {i}: not a positive integer: {row[name]!r}", source=source, field=name
                ) from None
            lengths.append(v)
        why = too_long(sum(lengths)) if too_long else None
        if why:  # the file's row, not a plan's limit: refused naming it, as a bad cell is
            raise InputError(f"line {i}: {why}", source=source, field="prompt_len + output_len")
        out.append((arrival, i, lengths[0], lengths[1]))
    out.sort()
    return [Request(k, a, p, o) for k, (a, _, p, o) in enumerate(out)]
