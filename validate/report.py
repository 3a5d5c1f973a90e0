"""Measured vs predicted: simulate what was run on the calibrated profile, tabulate, save JSON and PNG."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

from hetsim.models.spec import ModelSpec
from hetsim.textfiles import savefig_whole, write_text_atomic
from hetsim.workload import Workload


def predict_cpu(
    rig_path: str, spec: ModelSpec, workload: Workload, world: int, dtype: str
) -> dict[str, float]:
    """Simulate cpu-tp with ``world`` ranks (the first CPU entries of the profile)."""
    from hetsim.hardware import load_rig
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.cpu_tp import CpuTpPlan

    rig = load_rig(rig_path)
    cpus = [c.name for c in rig.cpus()]
    if world > len(cpus):
        raise ValueError(f"the profile has {len(cpus)} CPU entries, the run used {world} ranks")
    plan = CpuTpPlan(
        ranks=tuple(cpus[:world]), weight_dtype=dtype, kv_dtype=dtype, allreduce_dtype="fp32", act_dtype=dtype
    )
    res = simulate(get_strategy("cpu-tp"), plan, rig, spec, workload)
    if not res.feasible:
        raise ValueError(f"the simulator finds the plan infeasible: {res.reason}")
    return {"ttft_s": res.ttft_s, "tpot_s": res.tpot_s, "e2e_s": res.e2e_s, "plan": dataclasses.asdict(plan)}


def predict_plan(
    rig_path: str, strategy: str, plan: Any, spec: ModelSpec, workload: Workload
) -> dict[str, Any]:
    """Simulate ``plan`` (or, when None, the plan hetsim's search picks on this rig) of ``strategy``.

    Raises ValueError with the reason when there is nothing to predict (no plan, infeasible)."""
    from hetsim.api import Problem, not_applicable
    from hetsim.hardware import load_rig
    from hetsim.planner import search
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy

    rig = load_rig(rig_path)
    strat = get_strategy(strategy)
    # the check compare, plan and a plan file make: the strategy's own rule and the precisions it runs
    reason = not_applicable(strat, Problem(spec, spec.name, rig, str(rig_path), workload))
    if reason:
        raise ValueError(f"{strategy} on {rig.name}: {reason}")
    if plan is None:
        plan = search(strat, rig, spec, workload, "throughput")
        if plan is None:
            raise ValueError(f"hetsim finds no feasible {strategy} plan on {rig.name}")
    res = simulate(strat, plan, rig, spec, workload)
    if not res.feasible:
        raise ValueError(f"the simulator finds the plan infeasible: {res.reason}")
    return {"ttft_s": res.ttft_s, "tpot_s": res.tpot_s, "e2e_s": res.e2e_s, "plan": strat.plan_to_dict(plan)}


def error(measured: float, predicted: float) -> float:
    """Signed relative error of the prediction: (predicted - measured) / measured."""
    return (predicted - measured) / measured if measured > 0 else float("nan")


def environment() -> dict[str, Any]:
    import torch

    from validate.calibrate import cpu_name

    return {
        "host": platform.node(),
        "cpu": cpu_name(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        if "measured" not in r or "predicted" not in r:
            continue
        m, p = r["measured"], r["predicted"]
        out.append(
            {
                "model": r["model"]["name"],
                "hidden": r["model"]["hidden"],
                "layers": r["model"]["layers"],
                "run": r["label"],
                "ttft_meas_ms": m["ttft_s"] * 1e3,
                "ttft_pred_ms": p["ttft_s"] * 1e3,
                "ttft_err": error(m["ttft_s"], p["ttft_s"]),
                "tpot_meas_ms": m["tpot_s"] * 1e3,
                "tpot_pred_ms": p["tpot_s"] * 1e3,
                "tpot_err": error(m["tpot_s"], p["tpot_s"]),
            }
        )
    return out


def print_table(runs: list[dict[str, Any]], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title="measured vs predicted (error = predicted / measured - 1)")
    for col in ("model", "hidden", "layers", "run", "TTFT meas ms", "TTFT pred ms", "err", "TPOT meas ms",
                "TPOT pred ms", "err"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("model", "run") else "right")
    for r in rows(runs):
        t.add_row(
            r["model"], str(r["hidden"]), str(r["layers"]), r["run"],
            f"{r['ttft_meas_ms']:.2f}", f"{r['ttft_pred_ms']:.2f}", f"{r['ttft_err']:+.1%}",
            f"{r['tpot_meas_ms']:.2f}", f"{r['tpot_pred_ms']:.2f}", f"{r['tpot_err']:+.1%}",
        )  # fmt: skip
    for r in runs:
        if "measured" in r and "predicted" not in r:
            m = r["measured"]
            t.add_row(r["model"]["name"], str(r["model"]["hidden"]), str(r["model"]["layers"]), r["label"],
                      f"{m['ttft_s'] * 1e3:.2f}", "", "", f"{m['tpot_s'] * 1e3:.2f}", "",
                      "no prediction: " + r.get("prediction", "?"))  # fmt: skip
        if "skipped" in r:
            t.add_row(r["model"]["name"], "", "", r["label"], "skipped: " + r["skipped"], "", "", "", "", "")
    console.print(t)


def save(doc: dict[str, Any], out_dir: str | Path, stem: str = "validate") -> list[Path]:
    """``stem``.json (the full report) and ``stem``.png (measured vs predicted bars)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"{stem}.json"
    write_text_atomic(js, json.dumps(doc, indent=1, default=str))
    paths = [js]
    table = rows(doc["runs"])
    if table:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        labels = [f"{r['model']}\n{r['run']}" for r in table]
        xs = range(len(table))
        for ax, metric in zip(axes, ("ttft", "tpot"), strict=True):
            ax.bar([x - 0.2 for x in xs], [r[f"{metric}_meas_ms"] for r in table], 0.4, label="measured")
            ax.bar([x + 0.2 for x in xs], [r[f"{metric}_pred_ms"] for r in table], 0.4, label="hetsim")
            for x, r in zip(xs, table, strict=True):
                top = max(r[f"{metric}_meas_ms"], r[f"{metric}_pred_ms"])
                ax.annotate(f"{r[f'{metric}_err']:+.0%}", (x, top), ha="center", va="bottom", fontsize=7)
            ax.set_xticks(list(xs), labels, fontsize=6, rotation=30)
            ax.set_ylabel(f"{metric.upper()} (ms)")
            ax.legend(fontsize=7)
        fig.suptitle(f"hetsim vs torch on {doc['environment']['cpu']}", fontsize=9)
        fig.tight_layout()
        png = out / f"{stem}.png"
        savefig_whole(fig, png, dpi=110)
        plt.close(fig)
        paths.append(png)
    return paths
