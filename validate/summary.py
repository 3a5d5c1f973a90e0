"""Re-simulate the runs of validate reports on another profile and print measured vs predicted.

    python -m validate.summary PROFILE.yaml REPORT.json [REPORT.json ...]

Used to compare profiles on the same measurements (e.g. microbenchmarks only vs after ``--fit``).
"""

from __future__ import annotations

import sys

from hetsim.errors import InputError
from validate.report import error, predict_cpu
from validate.report_file import cpu_runs


def summarize(profile: str, reports: list[str]) -> list[dict]:
    rows = []
    for path in reports:
        for run in cpu_runs(path):  # checked: a malformed run is one line naming the file and runs[i]
            spec = run.spec
            try:
                pred = predict_cpu(profile, spec, run.workload, run.world, run.plan.weight_dtype)
            except ValueError as exc:  # more ranks than the profile's CPU entries, or a run that cannot fit
                raise InputError(f"run {run.index}: {exc}", source=path, field=f"runs[{run.index}]") from None
            rows.append({"model": spec.name, "ranks": run.world,
                         "ttft_err": error(run.ttft_s, pred["ttft_s"]),
                         "tpot_err": error(run.tpot_s, pred["tpot_s"]),
                         "ttft_ms": (run.ttft_s * 1e3, pred["ttft_s"] * 1e3),
                         "tpot_ms": (run.tpot_s * 1e3, pred["tpot_s"] * 1e3)})  # fmt: skip
    return rows


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        rows = summarize(argv[0], argv[1:])
    except InputError as exc:  # a bad profile or report: one line, as the CLI prints it
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2
    for r in rows:
        print(
            f"{r['model'][:22]:22s} x{r['ranks']}  TTFT {r['ttft_ms'][0]:8.2f} -> {r['ttft_ms'][1]:8.2f} "
            f"{r['ttft_err']:+6.1%}   TPOT {r['tpot_ms'][0]:7.2f} -> {r['tpot_ms'][1]:7.2f} "
            f"{r['tpot_err']:+6.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
