"""``run_sweep``: spec -> points -> (skip the done ones) -> runner -> Parquet store -> plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hetsim.errors import InputError
from hetsim.sweep.grid import check_scaled_links, expand, knob_columns
from hetsim.sweep.runner import check_dask_address, execute
from hetsim.sweep.spec import SweepSpec, load_spec
from hetsim.sweep.store import Store, schema_for


@dataclass
class SweepReport:
    spec: SweepSpec
    out: Path
    total: int
    skipped: int
    ran: int = 0
    failed: int = 0
    plots: list[Path] = field(default_factory=list)
    results: pd.DataFrame | None = None


def default_out(spec_path: str | Path, spec: SweepSpec) -> Path:
    return Path(spec_path).resolve().parent / "out" / spec.name


def run_sweep(
    spec_path: str | Path,
    out: str | Path | None = None,
    *,
    dask: str | None = None,
    workers: int = 2,
    progress: bool = True,
    plots: bool = True,
    retry_failed: bool = False,
    stop_after: int | None = None,
) -> SweepReport:
    if dask:
        check_dask_address(dask)
    spec = load_spec(spec_path)
    try:
        points = expand(spec)
    except ValueError as exc:
        raise InputError(str(exc), source=str(spec_path), field="grids") from None
    check_scaled_links(spec, str(spec_path))
    root = Path(out) if out is not None else default_out(spec_path, spec)
    store = Store(root, schema_for(points, knob_columns(points)))
    done = store.done(retry_failed=retry_failed)
    todo = [p for p in points if p["point_id"] not in done]
    report = SweepReport(spec, root, total=len(points), skipped=len(points) - len(todo))

    bar = _Bar(len(points), report.skipped, spec.name) if progress else None
    drawing = plots and bool(spec.plots)

    def on_row(row: dict) -> None:
        if drawing and not report.ran:
            _import_plots()
        store.add(row)
        report.ran += 1
        report.failed += bool(row.get("error"))
        if bar:
            bar.advance(bool(row.get("error")))

    timeout = None if dask else spec.timeout_s
    try:
        execute(todo, dask=dask, workers=workers, timeout_s=timeout, on_row=on_row, stop_after=stop_after)
    finally:
        store.flush()  # keep every finished point, whatever stopped the run
        if bar:
            bar.stop()
    store.compact()
    report.results = store.read()
    if drawing:
        from hetsim.sweep.plots import draw_all

        report.plots = draw_all(spec, report.results, root / "plots", workers=workers)
    return report


def _import_plots() -> None:
    """Import matplotlib (~0.4 s) while the points run, not after them: called with the first
    finished row, when the local pool's workers are already forked (they do not inherit it), and
    the main process waits on them with a core to spare at the points' tail."""
    import hetsim.sweep.plots  # noqa: F401


class _Bar:
    """A rich progress bar: points done, failed and left."""

    def __init__(self, total: int, skipped: int, name: str):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.done, self.failed = total, skipped, 0
        self.progress = Progress(
            TextColumn(f"[bold]{name}[/bold]"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(name, total=total, completed=skipped, status=self._status())
        self.progress.start()

    def _status(self) -> str:
        return f"done {self.done}  failed {self.failed}  left {self.total - self.done}"

    def advance(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        self.progress.update(self.task, advance=1, status=self._status())

    def stop(self) -> None:
        self.progress.stop()
