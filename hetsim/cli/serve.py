"""``hetsim serve``: a request stream on a heterogeneous rig under a HexGen plan.

Registered by ``hetsim.cli`` (``EXTENSION_MODULES``) through ``register(app)``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import typer

from hetsim.errors import InputError


def serve(
    model: str = typer.Option(..., "--model", help="Model name or config.json path."),
    hw: str = typer.Option(..., "--hw", help="Rig name or rig YAML path."),
    rate: float | None = typer.Option(None, "--rate", help="Poisson arrival rate (requests/s)."),
    duration: float | None = typer.Option(None, "--duration", help="Seconds of Poisson arrivals."),
    num_requests: int | None = typer.Option(None, "--num-requests", help="Number of Poisson requests."),
    requests: Path | None = typer.Option(
        None, "--requests", help="CSV trace: arrival_s,prompt_len,output_len (instead of --rate)."
    ),
    slo: float | None = typer.Option(None, "--slo", help="Latency deadline in seconds."),
    slo_scale: float | None = typer.Option(
        None, "--slo-scale", help="Deadline = scale x single-request latency on --slo-ref."
    ),
    slo_ref: str = typer.Option("hexgen-homogeneous", "--slo-ref", help="Reference rig for --slo-scale."),
    target: float = typer.Option(0.99, "--target", help="SLO attainment target for --max-rate."),
    find_max_rate: bool = typer.Option(False, "--max-rate", help="Bisect the highest rate meeting --target."),
    max_batch: int = typer.Option(8, "--max-batch", help="Sequences per in-flight batch."),
    symmetric: bool = typer.Option(False, "--symmetric", help="Uniform TP x PP baseline plans only."),
    dispatch: str = typer.Option(
        "least-latency", "--dispatch", help="least-latency | weighted | round-robin"
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the arrival process."),
    fmt: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """Simulate online serving: Poisson or trace arrivals, continuous batching, SLO attainment."""
    from hetsim.hardware.loader import load_rig
    from hetsim.models.registry import get_model
    from hetsim.planner.hexgen_cpsat import search_serving
    from hetsim.serving.dispatcher import POLICIES
    from hetsim.serving.sim import Reference, attainment_at, deadlines_for, max_rate, reference_plan
    from hetsim.serving.workload import poisson_requests, read_trace

    if fmt not in ("table", "json"):
        raise InputError(f"unknown format {fmt!r} (use table, json)", field="--format")
    if dispatch not in POLICIES:
        raise InputError(f"unknown policy {dispatch!r} (use {', '.join(POLICIES)})", field="--dispatch")
    if max_batch < 1:
        raise InputError(f"must be a positive integer, got {max_batch}", field="--max-batch")
    if not 0 < target <= 1:
        raise InputError(f"must be in (0, 1], got {target}", field="--target")
    if slo is not None and slo_scale is not None:
        raise InputError("give --slo or --slo-scale, not both", field="--slo")
    for name, v in (("--slo", slo), ("--slo-scale", slo_scale), ("--duration", duration)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise InputError(f"must be a positive number, got {v}", field=name)
    if num_requests is not None and num_requests < 1:
        raise InputError(f"must be a positive integer, got {num_requests}", field="--num-requests")
    spec, rig = get_model(model), load_rig(hw)
    if requests is not None:
        if rate is not None:
            raise InputError("give --rate or --requests, not both", field="--rate")
        reqs = read_trace(requests)
    else:
        if rate is None:
            raise InputError("give --rate (with --duration or --num-requests) or --requests", field="--rate")
        if duration is None and num_requests is None:
            num_requests = 200
        reqs = poisson_requests(rate, n=num_requests, duration_s=duration, seed=seed)
        if not reqs:
            raise InputError("no request arrives within the duration", field="--duration")
    reference = None
    if slo_scale is not None:
        ref_rig = load_rig(slo_ref)
        reference = Reference.build(ref_rig, spec, reference_plan(ref_rig, spec, max_batch))
    deadlines = (
        deadlines_for(reqs, slo_s=slo, slo_scale=slo_scale, reference=reference)
        if slo is not None or slo_scale is not None
        else None
    )
    found = search_serving(
        rig, spec, reqs, deadlines, symmetric=symmetric, max_batch=max_batch, dispatch=dispatch
    )
    if found is None:
        sys.stderr.write(f"error: no feasible plan for {spec.name} on {rig.name}\n")
        raise typer.Exit(1)
    plan, result = found
    doc: dict[str, Any] = {
        "model": model,
        "hardware": hw,
        "requests": len(reqs),
        "rate": rate,
        "seed": seed,
        "slo_s": slo,
        "slo_scale": slo_scale,
        "slo_ref": slo_ref if slo_scale is not None else None,
        "plan": {
            "replicas": [
                [{"gpus": list(s.devices), "tp": len(s.devices), "layers": s.layers} for s in r.stages]
                for r in plan.replicas
            ],
            "max_batch": plan.max_batch,
            "symmetric": symmetric,
        },
        **result.summary(deadlines),
    }
    # the plan may leave GPUs idle; what renting the whole rig costs per generated token
    tokens = result.generated_tokens
    doc["rig_price_usd_per_hour"] = rig.price_per_hour
    doc["rig_cost_usd_per_mtok"] = (
        rig.price_per_hour / 3600.0 * result.makespan_s / tokens * 1e6
        if tokens and result.makespan_s
        else None
    )
    if find_max_rate and deadlines is not None:
        n = len(reqs)
        doc["target_attainment"] = target
        doc["max_rate"] = max_rate(
            lambda r: attainment_at(
                plan,
                rig,
                spec,
                r,
                n=n,
                seed=seed,
                slo_s=slo,
                slo_scale=slo_scale,
                reference=reference,
                dispatch=dispatch,
            ),
            target,
            lo=0.05,
            hi=max(0.1, rate or 1.0),
            iterations=8,
        )
    elif find_max_rate:
        raise InputError("--max-rate needs --slo or --slo-scale", field="--max-rate")
    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    else:
        _print_table(doc)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    t = Table(title=f"hetsim serve: {doc['model']} on {doc['hardware']} ({doc['requests']} requests)")
    t.add_column("metric")
    for p in ("p50", "p90", "p99", "mean"):
        t.add_column(p, justify="right")
    for key in ("latency_s", "ttft_s", "tpot_s"):
        row = doc.get(key) or {}
        t.add_row(key, *(_fmt(row.get(p)) for p in ("p50", "p90", "p99", "mean")))
    console.print(t)
    shape = "; ".join(
        " > ".join(f"{s['gpus'][0].split('.')[0]} tp{s['tp']} x{s['layers']}" for s in rep)
        for rep in doc["plan"]["replicas"]
    )
    console.print(f"plan: {len(doc['plan']['replicas'])} replicas: {shape}", highlight=False)
    keys = ("slo_attainment", "max_rate", "throughput_tok_s", "cost_usd_per_mtok", "price_usd_per_hour")
    for key in (*keys, "rig_cost_usd_per_mtok", "rig_price_usd_per_hour"):
        if key in doc:
            console.print(f"{key}: {_fmt(doc[key])}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
