"""``hetsim sweep experiments/NAME.yaml [--dask ADDRESS|local] [--out DIR] [--workers N]``.

Registered by ``hetsim.cli._register_extensions`` through ``register(app)``; heavy imports (pandas,
pyarrow, matplotlib, dask) happen inside the command.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer


def sweep(
    ctx: typer.Context,
    spec: Path = typer.Argument(..., help="A sweep YAML (see experiments/README.md)."),
    dask: str | None = typer.Option(
        None, "--dask", help="Dask scheduler address, or 'local' for a LocalCluster on loopback."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: <spec dir>/out/<name>)."),
    workers: int | None = typer.Option(
        None, "--workers", help="Local processes (or LocalCluster workers); default: the usable cores."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run points that errored again."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip drawing the spec's plots."),
    plots_only: bool = typer.Option(False, "--plots-only", help="Only redraw plots from stored results."),
) -> None:
    """Run a grid of experiments (local processes or a Dask cluster); skip points already done."""
    from rich.console import Console

    from hetsim.cli.flags import not_with
    from hetsim.errors import InputError
    from hetsim.sweep.api import default_out, run_sweep
    from hetsim.sweep.runner import MAX_WORKERS
    from hetsim.sweep.spec import load_spec

    for flag in ("--no-plots", "--retry-failed", "--dask"):  # --plots-only runs no point
        not_with(ctx, flag, "--plots-only", plots_only)
    if workers is None:
        from hetsim.cli.commands import _cores

        workers = _cores()
    if workers < 1:
        raise InputError(f"must be a positive integer, got {workers}", field="--workers")
    if workers > MAX_WORKERS:
        raise InputError(f"must be <= {MAX_WORKERS} (processes to start), got {workers}", field="--workers")
    console = Console(stderr=True)
    if plots_only:
        from hetsim.cli.stop import keep
        from hetsim.sweep.plots import draw_all
        from hetsim.sweep.store import Store

        s = load_spec(spec)
        root = out or default_out(spec, s)
        keep(f"the plots drawn before the stop are whole, in {root / 'plots'}")
        paths = draw_all(s, Store(root).read(), root / "plots", workers=workers)
        console.print(f"{len(paths)} plot files in {root / 'plots'}", highlight=False)
        return

    stopped: list[int] = []

    def stop(signum, frame):  # SIGINT/SIGTERM: unwind so finished points get flushed; once only
        if not stopped:
            stopped.append(signum)
            raise Interrupted(signum)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run_sweep(
            spec, out, dask=dask, workers=workers, plots=not no_plots, retry_failed=retry_failed
        )
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _say_interrupted(spec, out, signum)
        raise typer.Exit(128 + signum) from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    console.print(
        f"{report.spec.name}: {report.total} points, {report.skipped} already done, ran {report.ran} "
        f"({report.failed} failed); results in {report.out / 'results'}"
        + (f", {len(report.plots)} plot files in {report.out / 'plots'}" if report.plots else ""),
        highlight=False,
    )


class Interrupted(KeyboardInterrupt):
    """A signal stopped the sweep; ``signum`` sets the exit code (128 + signum: 130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _say_interrupted(spec: Path, out: Path | None, signum: int) -> None:
    """One line: which signal, how many points are kept and where, how to resume."""
    from hetsim.sweep.api import default_out
    from hetsim.sweep.spec import load_spec
    from hetsim.sweep.store import Store

    try:
        root = out or default_out(spec, load_spec(spec))
        kept = f"{len(Store(root).read())} finished points kept in {root / 'results'}"
    except Exception:  # the spec itself was being read: nothing was run
        kept = "nothing kept"
    name = signal.Signals(signum).name
    sys.stderr.write(f"interrupted by {name}: {kept}; run the same command to resume\n")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
