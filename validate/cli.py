"""``hetsim calibrate`` and ``hetsim validate`` (registered by ``hetsim.cli`` through ``register``).

torch is imported inside the commands, so ``hetsim`` works without it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hetsim.errors import InputError

CPU_STRATEGIES = ("cpu-tp", "cpu")
# A rank is a process; --threads goes to torch.set_num_threads, a C int: counts past these are typos
# (99999999999 overflowed there, and as ranks ran out of memory), not machines.
MAX_RANKS = 1024
MAX_THREADS = 4096
# Each repeat is one whole timed generation, each round every rank count again: the reference protocol
# takes 3 and 3; 99999999999 ran for ever (the audit's hang).
MAX_REPEATS = MAX_ROUNDS = 1000


def check_count(value: int, high: int, field: str) -> None:
    """``value`` in [1, ``high``], else one ``InputError`` naming the flag."""
    if not 1 <= value <= high:
        raise InputError(f"must be in [1, {high}], got {value}", field=field)


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("needs torch: pip install 'hetsim[validate]'", field="torch") from None


def calibrate(
    ctx: typer.Context,
    out: Path = typer.Option(Path("calibrated.yaml"), "--out", help="profile (rig YAML) to write"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda adds the GPU benchmarks)"),
    quick: bool = typer.Option(False, "--quick", help="a few seconds, for CI"),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="torch threads per rank (default: torch's own, all cores, as plain torch runs)",
    ),
    ranks: int = typer.Option(
        1, "--ranks", help="CPU entries (one process each); above 1 also measures the gloo all-reduce"
    ),
    fit: bool = typer.Option(False, "--fit", help="refit efficiencies of --profile to validate reports"),
    profile: Path | None = typer.Option(None, "--profile", help="profile to refit (default: --out)"),
    runs: list[Path] | None = typer.Argument(None, help="validate reports (JSON) for --fit"),
    from_profiles: Path | None = typer.Option(
        None, "--from-profiles", help="measured kernel tables (Vidur's format) to fit instead of measuring"
    ),
    gpu: str | None = typer.Option(None, "--gpu", help="catalogue GPU the --from-profiles tables measured"),
) -> None:
    """Measure this machine with torch microbenchmarks and write a hardware profile; or, with
    --from-profiles, fit a GPU's profile to measured kernel tables."""
    from hetsim.cli.flags import needs, not_with

    needs(ctx, "--gpu", "--from-profiles", from_profiles is not None)
    needs(ctx, "--profile", "--fit", fit)
    needs(ctx, "RUNS", "--fit", fit)
    not_with(ctx, "--fit", "--from-profiles", from_profiles is not None)
    for flag in ("--device", "--quick", "--threads", "--ranks"):  # what measuring this machine takes
        not_with(ctx, flag, "--fit", fit)
        not_with(ctx, flag, "--from-profiles", from_profiles is not None)
    if from_profiles is not None:
        _from_profiles(from_profiles, gpu, out)
        return
    _need_torch()
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from validate import calibrate as cal

    console = Console()
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r} (use cpu or cuda)", field="--device")
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    check_count(threads, MAX_THREADS, "--threads")
    check_count(ranks, MAX_RANKS, "--ranks")
    if fit:
        base = profile or out
        if not runs:
            raise InputError("give the validate reports to fit to", field="RUNS")
        for r in runs:
            if not Path(r).is_file():  # a folder said "no such file"
                raise InputError(
                    "is a folder, not a file" if Path(r).is_dir() else "no such file", source=str(r)
                )
        if profile is None and not Path(out).is_file():  # said "calibrated.yaml: rig file not found"
            why = "no profile to refit: --profile not given, so it is --out's file, which is not there"
            raise InputError(why, source=f"--out {out}")
        try:
            fitted = cal.fit_runs(base, list(runs), out)
        except ValueError as exc:
            raise InputError(str(exc), field="RUNS") from None
        console.print(f"refitted {base} -> {out}: " + ", ".join(f"{k}={v:.4g}" for k, v in fitted.items()))
        return
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            console.print("[yellow]CUDA not available: skipping the GPU benchmarks[/yellow]")
            device = "cpu"
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as pr:
        task = pr.add_task("calibrating", total=None)
        raw = cal.measure(
            threads=threads,
            ranks=ranks,
            quick=quick,
            device=device,
            progress=lambda msg: pr.update(task, description=msg),
        )
    d = cal.derive(raw)
    cal.write_profile(cal.build_profile(raw, d), raw, out)
    from hetsim.hardware import load_rig

    load_rig(out)  # the profile must load
    console.print(f"wrote {out} (+ {out.with_suffix('.microbench.json').name})")
    for k, v in d.items():
        console.print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")


def _from_profiles(root: Path, gpu: str | None, out: Path) -> None:
    from rich.console import Console

    from validate import gpu_profile

    if gpu is None:
        raise InputError("give the GPU the tables measured (a catalogue name)", field="--gpu")
    try:
        import scipy  # noqa: F401
    except ImportError:
        raise InputError("needs scipy: pip install 'hetsim[validate]'", field="scipy") from None
    if not root.is_dir():
        raise InputError("no such folder", source=str(root), field="--from-profiles")
    doc, report = gpu_profile.build(root, gpu, out)
    gpu_profile.write(doc, out)
    k = report["kernels"]
    err = report["kernel_errors_in_sample"]
    console = Console()
    console.print(f"wrote {out}: {k['samples']} kernels, median error {err['median']:.1%} (in sample)")
    console.print(
        f"  matmul {k['matmul']:.3f} (half at {k['matmul_half_rows']:.1f} rows), memory {k['memory']:.3f}, "
        f"elementwise memory {k['elementwise_memory']:.3f}, overhead {k['overhead_s'] * 1e6:.2f} us"
    )
    for ranks, ar in report.get("allreduce", {}).items():
        lat, bw = ar["latency_s"] * 1e6, ar["bandwidth"] / 1e9
        console.print(f"  all-reduce over {ranks} ranks: {lat:.2f} us + bytes / {bw:.1f} GB/s")


def validate(
    ctx: typer.Context,
    hw: Path = typer.Option(..., "--hw", help="calibrated profile (from hetsim calibrate)"),
    plan: Path | None = typer.Option(None, "--plan", help="plan JSON (model, workload, strategy)"),
    model: str | None = typer.Option(None, "--model"),
    strategy: str = typer.Option("cpu-tp", "--strategy"),
    ranks: str = typer.Option("1,2", "--ranks", help="cpu-tp rank counts to run (1 = the baseline)"),
    layers: int | None = typer.Option(None, "--layers", help="cut the depth (never the width)"),
    hidden: int | None = typer.Option(None, "--hidden", help="CI smoke tests only: override the width"),
    batch: int = typer.Option(1, "--batch"),
    prompt_len: int = typer.Option(16, "--prompt-len"),
    gen_len: int = typer.Option(8, "--gen-len"),
    dtype: str = typer.Option("fp32", "--dtype", help="weight/KV dtype of the real run"),
    threads: int = typer.Option(1, "--threads", help="torch threads per rank"),
    repeats: int = typer.Option(3, "--repeats", help="timed generations per run (median kept)"),
    rounds: int = typer.Option(3, "--rounds", help="runs per rank count, taking turns (median kept)"),
    out: Path = typer.Option(Path("validate/results"), "--out", help="folder for the JSON and PNG"),
    stem: str = typer.Option("validate", "--stem", help="file name stem of the report"),
) -> None:
    """Run a plan for real on torch, simulate it on the calibrated profile, compare."""
    from hetsim.cli.flags import not_with

    # the plan says these (a cpu-tp plan its rank counts: 1 and its ranks; other plans run no cpu-tp)
    for flag in ("--model", "--strategy", "--batch", "--prompt-len", "--gen-len", "--ranks"):
        not_with(ctx, flag, "--plan", plan is not None)
    _need_torch()
    from validate.cli_impl import run_validate

    run_validate(
        hw=str(hw), plan=plan, model=model, strategy=strategy, ranks=ranks, layers=layers, hidden=hidden,
        batch=batch, prompt_len=prompt_len, gen_len=gen_len, dtype=dtype, threads=threads,
        repeats=repeats, out=out, stem=stem, rounds=rounds,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
    app.command("validate")(validate)


__all__ = ["calibrate", "register", "validate"]
