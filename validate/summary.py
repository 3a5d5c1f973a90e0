"""Re-simulate the runs of validate reports on another profile and print measured vs predicted.

    python -m validate.summary PROFILE.yaml REPORT.json [REPORT.json ...] [--offload PROFILE.yaml]

Used to compare profiles on the same measurements (e.g. microbenchmarks only vs after ``--fit``).
CPU runs are simulated as they ran (cpu-tp ranks); CUDA runs replay the plan they recorded, the
offloading ones (accelerate, hetegen, flexgen) on ``--offload`` where given (the profile their plans
were searched on).
"""

from __future__ import annotations

import sys

from hetsim.errors import InputError
from validate.report import error, predict_cpu
from validate.report_file import Report, cpu_runs, cuda_runs, read_report

OFFLOADING = ("accelerate", "hetegen", "flexgen")


def _row(head: dict, ttft_s: float, tpot_s: float, pred: dict) -> dict:
    """One table row: ``head``'s columns, then measured and predicted TTFT/TPOT and their errors."""
    return {**head, "ttft_err": error(ttft_s, pred["ttft_s"]), "tpot_err": error(tpot_s, pred["tpot_s"]),
            "ttft_ms": (ttft_s * 1e3, pred["ttft_s"] * 1e3),
            "tpot_ms": (tpot_s * 1e3, pred["tpot_s"] * 1e3)}  # fmt: skip


def summarize(profile: str, reports: list[str] | list[Report]) -> list[dict]:
    """The CPU runs of ``reports`` (paths, or reports read once by ``read_report``) simulated on
    ``profile`` as they ran."""
    rows = []
    for report in reports:
        path = report.path if isinstance(report, Report) else report
        runs = report.cpu if isinstance(report, Report) else cpu_runs(report)
        for run in runs:  # checked: a malformed run is one line naming the file and runs[i]
            spec = run.spec
            try:
                pred = predict_cpu(profile, spec, run.workload, run.world, run.plan.weight_dtype)
            except ValueError as exc:  # more ranks than the profile's CPU entries, or a run that cannot fit
                raise InputError(f"run {run.index}: {exc}", source=path, field=f"runs[{run.index}]") from None
            rows.append(_row({"model": spec.name, "ranks": run.world}, run.ttft_s, run.tpot_s, pred))
    return rows


def summarize_cuda(profile: str, reports: list[str] | list[Report], offload: str | None = None) -> list[dict]:
    """The CUDA runs of ``reports`` (paths, or reports read by ``read_report``), their recorded plans
    simulated on ``profile`` (``offload`` for the offloading strategies); a FlexGen run's batch is its
    plan's block."""

    from hetsim.strategies.base import get_strategy
    from hetsim.workload import Workload
    from validate.report import predict_plan

    rows = []
    for report in reports:
        path = report.path if isinstance(report, Report) else report
        runs = report.cuda if isinstance(report, Report) else cuda_runs(report)
        for run in runs:  # checked as the CPU runs are: one line naming runs[i]
            i = run.index
            try:
                flexgen = run.label == "flexgen"
                block = int(run.plan["gpu_batch_size"]) * int(run.plan["num_gpu_batches"]) if flexgen else 0
                w = run.workload
                workload = Workload(block or w.batch, w.prompt_len, w.gen_len)
                hw = offload if (offload and run.label in OFFLOADING) else profile
                plan = get_strategy(run.label).plan_from_dict(run.plan)
                pred = predict_plan(hw, run.label, plan, run.spec, workload)
            except (KeyError, TypeError, ValueError, InputError) as exc:
                why = exc.message if isinstance(exc, InputError) else str(exc)
                why = f"missing {why}" if isinstance(exc, KeyError) else why
                raise InputError(f"run {i}: {why}", source=path, field=f"runs[{i}]") from None
            head = {"model": run.spec.name, "run": run.label, "batch": workload.batch}
            rows.append(_row(head, run.ttft_s, run.tpot_s, pred))
    return rows


def main(argv: list[str]) -> int:
    offload = None
    if "--offload" in argv:
        at = argv.index("--offload")
        offload, argv = (argv[at + 1] if at + 1 < len(argv) else None), argv[:at] + argv[at + 2 :]
        if offload is None:
            print("error: --offload needs a profile", file=sys.stderr)
            return 2
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        reports = [read_report(path) for path in argv[1:]]  # each file read once, for both kinds of run
        rows = summarize(argv[0], reports)
        cuda = summarize_cuda(argv[0], reports, offload)
    except InputError as exc:  # a bad profile or report: one line, as the CLI prints it
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2
    for r in cuda:
        print(
            f"{r['model'][:14]:14s} {r['run']:10s} b{r['batch']:<3d} TTFT {r['ttft_ms'][0]:8.2f} -> "
            f"{r['ttft_ms'][1]:8.2f} {r['ttft_err']:+6.1%}   TPOT {r['tpot_ms'][0]:7.2f} -> "
            f"{r['tpot_ms'][1]:7.2f} {r['tpot_err']:+6.1%}"
        )
    for r in rows:
        print(
            f"{r['model'][:22]:22s} x{r['ranks']}  TTFT {r['ttft_ms'][0]:8.2f} -> {r['ttft_ms'][1]:8.2f} "
            f"{r['ttft_err']:+6.1%}   TPOT {r['tpot_ms'][0]:7.2f} -> {r['tpot_ms'][1]:7.2f} "
            f"{r['tpot_err']:+6.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
