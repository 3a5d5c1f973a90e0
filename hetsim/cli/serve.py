"""``hetsim serve``: a request stream on a heterogeneous rig under a HexGen plan.

Flags and printing; the work is ``hetsim.api.serve``. Registered by ``hetsim.cli.commands`` through
``register(app)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from hetsim.cli.flags import needs
from hetsim.errors import InputError


def serve(
    ctx: typer.Context,
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
        "least-latency", "--dispatch", help="least-latency | weighted | round-robin | earliest-available"
    ),
    mode: str = typer.Option(
        "continuous", "--mode", help="continuous (batching) | hexgen (static batches, HexGen's runtime)"
    ),
    drop_late: bool = typer.Option(
        False, "--drop-late", help="Drop a request that would miss its deadline (HexGen's simulator)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the Poisson arrivals (--rate, --max-rate)."),
    fmt: str = typer.Option("table", "--format", help="table | json"),
    dtype: str | None = typer.Option(
        None, "--dtype", help="Weight precision the plans run (HexGen runs fp16); others are refused."
    ),
    kv_dtype: str | None = typer.Option(
        None, "--kv-dtype", help="KV cache precision the plans run (e.g. int8, lossy: shown in the output)."
    ),
) -> None:
    """Simulate online serving: Poisson or trace arrivals, continuous batching (or HexGen's static
    batches, --mode hexgen), SLO attainment."""
    from hetsim import api
    from hetsim.cli.stop import keep

    if fmt not in ("table", "json"):
        raise InputError(f"unknown format {fmt!r} (use table, json)", field="--format")
    needs(ctx, "--slo-ref", "--slo-scale", slo_scale is not None)
    needs(ctx, "--target", "--max-rate", find_max_rate)
    for flag in ("--duration", "--num-requests"):  # a trace's requests are its own
        needs(ctx, flag, "--rate", rate is not None)
    needs(ctx, "--seed", "--rate or --max-rate", rate is not None or find_max_rate)  # a trace's arrivals too
    # stopped before the first candidate's run began (the candidates, their estimates, the --slo-scale
    # reference): no plan served, nothing to print
    keep("it had served no plan yet: nothing to print")
    try:
        doc = api.serve(
            model,
            hw,
            rate=rate,
            duration=duration,
            num_requests=num_requests,
            trace=requests,
            slo=slo,
            slo_scale=slo_scale,
            slo_ref=slo_ref,
            target=target,
            find_max_rate=find_max_rate,
            max_batch=max_batch,
            symmetric=symmetric,
            dispatch=dispatch,
            seed=seed,
            mode=mode,
            drop_late=drop_late,
            weight_dtype=dtype,
            kv_dtype=kv_dtype,
        )
    except api.ServeStopped as stopped:  # what was served by the stop, marked partial
        from hetsim.cli.stop import stopping_signal
        from hetsim.stopping import keeping

        doc = {**stopped.doc, "partial": {"stopped_by": stopping_signal(), **stopped.doc["partial"]}}
        with keeping():
            _emit(doc, fmt)
        keep(_kept(doc["partial"]))
        raise
    if not doc["feasible"]:
        sys.stderr.write(f"error: {doc['reason']}\n")
        raise typer.Exit(1)
    _emit(doc, fmt)


def _emit(doc: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    else:
        _print_table(doc)
    sys.stdout.flush()


def _kept(partial: dict[str, Any]) -> str:
    """The interrupted line's account of what a stopped serve printed (``api.ServeStopped``)."""
    if "max_rate" in partial:
        return "the served plan's metrics are printed, whole; --max-rate's search did not finish"
    searched = f"{partial['plans_served']} of {partial['candidate_plans']} candidate plans served"
    if "simulated_s" not in partial:
        return f"the best plan of the {searched} is printed with its whole run, marked partial"
    return (
        f"the metrics of the {partial['finished']} requests finished by simulated "
        f"{partial['simulated_s']:.6g} s ({partial['arrived']} of {partial['requests']} arrived) "
        f"are printed, marked partial; {searched}"
    )


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
    n, done = doc["requests"], doc.get("finished", doc["requests"])
    over = f"{n} requests" if done == n else f"{n} requests; percentiles over the {done} finished"
    if "partial" in doc:  # a line of its own: the table's title wraps at the table's width
        console.print(f"PARTIAL: {_partial_line(doc['partial'])}", highlight=False)
    t = Table(title=f"hetsim serve: {doc['model']} on {doc['hardware']} ({over})")
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
    keys = (
        "mode",
        "dropped",
        "slo_attainment",
        "max_rate",
        "throughput_tok_s",
        "cost_usd_per_mtok",
        "price_usd_per_hour",
    )
    if "kv_dtype" in doc["plan"]:
        lossy = f" (lossy: {doc['lossy']})" if doc.get("lossy") else ""
        console.print(
            f"precision: weights {doc['plan']['weight_dtype']}, KV cache {doc['plan']['kv_dtype']}{lossy}",
            highlight=False,
        )
    for key in (*keys, "rig_cost_usd_per_mtok", "rig_price_usd_per_hour"):
        if key in doc:
            console.print(f"{key}: {_fmt(doc[key])}", highlight=False)


def _partial_line(partial: dict[str, Any]) -> str:
    stopped = f"stopped by {partial['stopped_by']}"
    if "max_rate" in partial:
        return f"{stopped} in the --max-rate search (max_rate {partial['max_rate']})"
    searched = f"{partial['plans_served']} of {partial['candidate_plans']} candidate plans served"
    if "simulated_s" not in partial:
        return f"{stopped} after {searched}: the best of them"
    return (
        f"{stopped} at simulated {partial['simulated_s']:.6g} s: {partial['finished']} requests "
        f"finished, {partial['arrived']} arrived, of {partial['requests']}; metrics over the finished"
        + (f", SLO attainment over the {partial['slo_over']} decided" if "slo_over" in partial else "")
        + f"; {searched}"
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
