"""``hetsim sweep experiments/NAME.yaml [--dask ADDRESS|local] [--out DIR] [--workers N]``.

Registered by ``hetsim.cli._register_extensions`` through ``register(app)``; heavy imports (pandas,
pyarrow, matplotlib, dask) happen inside the command.
"""

from __future__ import annotations

import signal
from pathlib import Path

import typer


def sweep(
    spec: Path = typer.Argument(..., help="A sweep YAML (see experiments/README.md)."),
    dask: str | None = typer.Option(
        None, "--dask", help="Dask scheduler address, or 'local' for a LocalCluster on loopback."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: <spec dir>/out/<name>)."),
    workers: int = typer.Option(2, "--workers", help="Local processes (or LocalCluster workers)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run points that errored again."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip drawing the spec's plots."),
    plots_only: bool = typer.Option(False, "--plots-only", help="Only redraw plots from stored results."),
) -> None:
    """Run a grid of experiments (local processes or a Dask cluster); skip points already done."""
    from rich.console import Console

    from hetsim.errors import InputError
    from hetsim.sweep.api import default_out, run_sweep
    from hetsim.sweep.spec import load_spec

    if workers < 1:
        raise InputError(f"must be a positive integer, got {workers}", field="--workers")
    console = Console(stderr=True)
    if plots_only:
        from hetsim.sweep.plots import draw_all
        from hetsim.sweep.store import Store

        s = load_spec(spec)
        root = out or default_out(spec, s)
        paths = draw_all(s, Store(root).read(), root / "plots")
        console.print(f"{len(paths)} plot files in {root / 'plots'}", highlight=False)
        return

    def stop(signum, frame):  # SIGTERM: unwind like Ctrl-C so finished points get flushed
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    try:
        report = run_sweep(
            spec, out, dask=dask, workers=workers, plots=not no_plots, retry_failed=retry_failed
        )
    finally:
        signal.signal(signal.SIGTERM, old)
    console.print(
        f"{report.spec.name}: {report.total} points, {report.skipped} already done, ran {report.ran} "
        f"({report.failed} failed); results in {report.out / 'results'}"
        + (f", {len(report.plots)} plot files in {report.out / 'plots'}" if report.plots else ""),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
