"""Results on disk: ``<out>/results/part-NNNNN.parquet``, one file per batch of finished points.

Each file is written to a temporary name unique to the process and renamed, so a killed sweep
never leaves half a file. Rows are keyed by ``point_id``; reading keeps the last row of each id (a
re-run of failed points supersedes the failure).

Several sweeps may share one output folder (two terminals, a resumed run beside a running one):
writing a part, merging parts and reading them all happen under a lock on ``results/.lock``
(``fcntl.flock``: exclusive to write, shared to read), so no writer takes another's part number
and a merge never deletes a part it did not read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hetsim.sweep.runner import RESULT_COLUMNS
from hetsim.textfiles import open_whole

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

RESULT_TYPES: dict[str, pa.DataType] = {
    "feasible": pa.bool_(),
    "ttft_s": pa.float64(),
    "tpot_s": pa.float64(),
    "e2e_s": pa.float64(),
    "throughput_tok_s": pa.float64(),
    "cost_usd_per_mtok": pa.float64(),
}


def _infer(values: Iterable[Any]) -> pa.DataType:
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, bool) for v in vals):
        return pa.bool_()
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return pa.int64()
    if vals and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        return pa.float64()
    return pa.string()


def schema_for(points: list[Mapping[str, Any]], config_columns: list[str]) -> pa.Schema:
    fields = [pa.field("point_id", pa.string())]
    fields += [pa.field(c, _infer(p.get(c) for p in points)) for c in config_columns]
    fields += [pa.field(c, RESULT_TYPES.get(c, pa.string())) for c in RESULT_COLUMNS]
    return pa.schema(fields)


def _cell(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if typ == pa.string() and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    if typ == pa.float64():
        return float(value)
    return value


@contextmanager
def _locked(folder: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock on ``folder/.lock`` (POSIX); elsewhere a no-op."""
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_part(table: pa.Table, path: Path) -> None:
    """Write the part whole or not at all (``open_whole``: a temporary file beside, renamed over)."""
    with open_whole(path, "wb") as f:
        pq.write_table(table, f)


class Store:
    """Append-only Parquet parts under ``root/results``; ``flush`` writes the buffered rows."""

    def __init__(self, root: str | Path, schema: pa.Schema | None = None, *, every: int = 64, every_s=2.0):
        self.root = Path(root)
        self.dir = self.root / "results"
        self.schema = schema
        self.every, self.every_s = every, every_s
        self.buffer: list[dict[str, Any]] = []
        self._last = time.monotonic()

    # ---- reading ------------------------------------------------------------------------------
    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet")) if self.dir.is_dir() else []

    def read(self) -> pd.DataFrame:
        """All rows, last row per point_id, sorted by point_id."""
        if not self.dir.is_dir():
            return pd.DataFrame(columns=["point_id", *RESULT_COLUMNS])
        with _locked(self.dir, exclusive=False):
            return self._read()

    def _read(self) -> pd.DataFrame:
        frames = [pq.read_table(p).to_pandas() for p in self.parts()]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=["point_id", *RESULT_COLUMNS])
        df = pd.concat(frames, ignore_index=True)
        df = df.drop_duplicates("point_id", keep="last")
        return df.sort_values("point_id", kind="stable").reset_index(drop=True)

    def done(self, *, retry_failed: bool = False) -> set[str]:
        df = self.read()
        if not len(df):
            return set()
        if retry_failed:
            df = df[df["error"].fillna("") == ""]
        return set(df["point_id"])

    # ---- writing ------------------------------------------------------------------------------
    def add(self, row: Mapping[str, Any]) -> None:
        self.buffer.append(dict(row))
        if len(self.buffer) >= self.every or time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self.buffer:
            return
        assert self.schema is not None, "a Store that writes needs a schema"
        self.dir.mkdir(parents=True, exist_ok=True)
        cols = {
            f.name: pa.array([_cell(r.get(f.name), f.type) for r in self.buffer], type=f.type)
            for f in self.schema
        }
        table = pa.table(cols, schema=self.schema)
        with _locked(self.dir, exclusive=True):
            parts = self.parts()
            n = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
            while (path := self.dir / f"part-{n:05d}.parquet").exists():
                n += 1
            _write_part(table, path)
        self.buffer = []

    def compact(self) -> None:
        """Merge all parts into one (after a complete run), keeping one row per point."""
        if not self.dir.is_dir():
            return
        with _locked(self.dir, exclusive=True):
            parts = self.parts()
            if not parts:  # one part too: its rows sorted as a merge would leave them
                return
            df = self._read()
            # the merged file is written after (and so wins over) the parts; a kill before the
            # parts are deleted only leaves duplicates that reading drops
            last = int(parts[-1].stem.split("-")[1])
            merged = self.dir / f"part-{last + 1:05d}.parquet"
            _write_part(pa.Table.from_pandas(df, preserve_index=False), merged)
            for p in parts:
                p.unlink()
            # one name whatever the flushes were: the same rows give the same folder, byte for byte
            os.replace(merged, self.dir / "part-00000.parquet")
