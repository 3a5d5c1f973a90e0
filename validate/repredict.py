"""Predict recorded validate runs again on a (re)calibrated profile, without running anything.

A validate report records what ran (model, workload, strategy, the plan) and what it measured; a
profile refitted later (or built from the same microbenchmarks by newer code) predicts the same
plans again. ``python -m validate.repredict REPORT.json ... --hw PROFILE.yaml [--offload-hw P.yaml]``
prints one table row per run: measured TTFT/TPOT and the new prediction's error. Runs of the
offloading strategies (accelerate, hetegen, flexgen) take ``--offload-hw`` when given (the profile
their plans were searched on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OFFLOADING = ("accelerate", "hetegen", "flexgen")


def repredict(report: Path, hw: str, offload_hw: str | None) -> list[dict]:
    from hetsim.models.spec import ModelSpec
    from hetsim.strategies.base import get_strategy
    from hetsim.workload import Workload
    from validate.report import error, predict_plan

    rows = []
    for run in json.loads(report.read_text())["runs"]:
        if "measured" not in run or not run.get("plan"):
            continue
        label, plan, m = run["label"], run["plan"], run["measured"]
        w = run["workload"]
        batch = w["batch"]
        if label == "flexgen":  # the run's batch is the plan's block
            batch = int(plan["gpu_batch_size"]) * int(plan["num_gpu_batches"])
        workload = Workload(batch, w["prompt_len"], w["gen_len"])
        profile = offload_hw if (offload_hw and label in OFFLOADING) else hw
        plan_obj = get_strategy(label).plan_from_dict(plan)
        p = predict_plan(profile, label, plan_obj, ModelSpec(**run["model"]), workload)
        row = {"report": report.stem, "run": label, "model": run["model"]["name"], "batch": batch,
               "prompt_len": w["prompt_len"], "gen_len": w["gen_len"]}  # fmt: skip
        for key in ("ttft", "tpot"):
            meas, pred = m[f"{key}_s"], p[f"{key}_s"]
            row |= {f"{key}_meas_s": meas, f"{key}_pred_s": pred, f"{key}_err": error(meas, pred)}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--hw", required=True)
    ap.add_argument("--offload-hw")
    a = ap.parse_args(argv)
    print("| run | model | batch/prompt/gen | TTFT meas / pred ms | err | TPOT meas / pred ms | err |")
    print("|---|---|---|---|---|---|---|")
    for report in a.reports:
        for r in repredict(report, a.hw, a.offload_hw):
            cells = [r["run"], r["model"], f"{r['batch']}/{r['prompt_len']}/{r['gen_len']}"]
            for key in ("ttft", "tpot"):
                cells.append(f"{r[f'{key}_meas_s'] * 1e3:.2f} / {r[f'{key}_pred_s'] * 1e3:.2f}")
                cells.append(f"{r[f'{key}_err'] * 100:+.0f} %")
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
