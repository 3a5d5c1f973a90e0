"""The ``hetsim`` application: compare, plan, simulate, model, hw; serve and sweep from their modules.

Errors: every bad input (an ``InputError``, a pydantic/YAML/JSON error that escaped conversion, a
bad flag value) prints one line ``error: <file>: <field>: <message>`` on stderr and exits with 2;
no traceback. ``main`` does that; the console script (``hetsim.cli.entry:run``) calls it, and
``app`` called as a function (an install whose script still names ``hetsim.cli:app``) does too.

Commands from other modules: ``hetsim.cli.serve``, ``hetsim.cli.sweep`` and, where the package has
it, ``validate.cli`` (calibrate, validate) each define ``register(app: typer.Typer) -> None``; they
import heavy dependencies (torch, dask) inside the command, not at module import.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import importlib
import itertools
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
import yaml
from pydantic_core import ValidationError

from hetsim.cli.collecting import CLI_GC_THRESHOLD
from hetsim.cli.outstream import named_stdout
from hetsim.cli.stop import Stop, keep, kill_children, signal_of, stopping_signal
from hetsim.errors import InputError
from hetsim.stopping import keeping

if TYPE_CHECKING:
    from rich.console import Console

    from hetsim import api
    from hetsim.sim.result import Result

# The simulator (api, hardware, models, report, strategies: pydantic, the catalogue, numpy) is
# imported inside the commands that use it, so `hetsim --help` and bad flags answer at once.

# typer >= 0.20 vendors click (typer._click); older typer uses click itself. Find the classes either way.
_cx = sys.modules[typer.BadParameter.__module__]
UsageError: type[Exception] = _cx.UsageError
NoArgsIsHelpError: type[Exception] | None = getattr(_cx, "NoArgsIsHelpError", None)
EXIT_ERRORS = tuple({typer.Exit, *(c for c in (getattr(_cx, "Exit", None),) if c)})
ABORT_ERRORS = tuple({typer.Abort, *(c for c in (getattr(_cx, "Abort", None),) if c)})

FORMATS = ("table", "json", "csv")
EXTENSION_MODULES = ("hetsim.cli.serve", "hetsim.cli.sweep", "validate.cli")
# What a compare's search worker forked before the problem is read imports meanwhile: the search
# and networkx (every strategy routes copies).
SEARCH_MODULES = ("hetsim.api", "hetsim.strategies", "networkx")
# And where FlexGen is searched (its job is the costliest, the first an early worker runs): its LP
# model and OR-Tools' linear solver (~0.045 CPU s, which the job otherwise begins with), and the
# solver's protobuf messages (``build_lp`` imports them at the first LP: ~0.01 CPU s more).
FLEXGEN_MODULES = ("hetsim.planner.flexgen_lp", "ortools.linear_solver.linear_solver_pb2")

# Piped output (not a terminal) gets wide tables instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200


@cache
def out() -> Console:
    """Standard output's console, made on first use: rich (~0.02 s) is imported only by output that
    needs it (not by JSON, before a compare's workers start)."""
    from rich.console import Console

    return Console(width=_WIDTH)


@cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, width=_WIDTH)


class _App(typer.Typer):
    """A Typer whose console-script entry point reports errors as one line (see ``main``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - exercised via subprocess
        exit_process(main(kwargs.get("args"), process=True))


app = _App(
    name="hetsim",
    help="Simulate and plan LLM inference on heterogeneous hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Built-in model shapes.", no_args_is_help=True)
hw_app = typer.Typer(help="Hardware rigs (hardware_profiles/rigs).", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(hw_app, name="hw")


# ---- shared option handling -----------------------------------------------------------------
def _check_format(fmt: str, allowed: Sequence[str] = FORMATS) -> str:
    if fmt not in allowed:
        raise InputError(f"unknown format {fmt!r} (use {', '.join(allowed)})", field="--format")
    return fmt


def _positive(**flags: int) -> None:
    for name, value in flags.items():
        if value < 1:
            raise InputError(f"must be a positive integer, got {value}", field=f"--{name.replace('_', '-')}")


def _problem(
    model: str,
    hw: str,
    batch: int | None,
    prompt_len: int,
    gen_len: int,
    gpu_mem_budget: str | None = None,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    routing_profile: Path | None = None,
) -> api.Problem:
    from hetsim import api
    from hetsim.sim.memory import too_small
    from hetsim.units import UnitError, is_bare_number, parse_bytes

    _positive(batch=1 if batch is None else batch, prompt_len=prompt_len, gen_len=gen_len)
    budget = None
    if gpu_mem_budget is not None:
        try:
            budget = parse_bytes(gpu_mem_budget)
        except UnitError as exc:
            raise InputError(str(exc), field="--gpu-mem-budget") from None
        # zero and negatives: api's check says so; here a size too small, most likely a missing unit
        if too_small(budget):
            bare = is_bare_number(gpu_mem_budget)
            hint = f"a bare number is bytes: give a unit, e.g. '{gpu_mem_budget.strip()} GB'"
            raise InputError(
                f"{gpu_mem_budget!r} is {budget:g} bytes, below any model's working set; "
                + (hint if bare else "give a size such as '6 GB' or '512 MB'"),
                field="--gpu-mem-budget",
            )
    routing = str(routing_profile) if routing_profile is not None else None
    try:
        return api.problem(model, hw, batch, prompt_len, gen_len, budget, dtype, kv_dtype, routing)
    except InputError as exc:  # the workload's own checks name its fields: name the flags here
        if exc.source is None and exc.field in ("batch", "prompt_len", "gen_len"):
            raise InputError(exc.message, field="--" + exc.field.replace("_", "-")) from None
        raise


def _say_budget_note(p: api.Problem) -> None:
    """A GPU memory budget above a GPU's memory runs (the GPU's own size binds), said on stderr once the
    command's output is out (an error line stays the only line of a failed command)."""
    if p.budget_note:
        err().print(f"note: {p.budget_note}", highlight=False, soft_wrap=True)


def _strategy_names(text: str | None, flag: str) -> list[str] | None:
    """The names in ``--strategies``/``--strategy`` (None: all), each known, or an error naming the
    flag; all of none (no strategy registered) ends the command with its own line, exit 1."""
    from hetsim.strategies.base import all_strategies, get_strategy

    names = _split_names(text)
    if names is None and text is not None and text.strip() != "all":  # '' or ',': all, silently
        raise InputError("is empty: give strategy names, 'all', or leave the flag out", field=flag)
    for name in names or ():
        try:
            get_strategy(name)
        except InputError as exc:
            raise InputError(exc.message, field=flag) from None
    if names is None and not all_strategies():
        err().print("error: no strategies are registered (hetsim.strategies is empty)", highlight=False)
        raise typer.Exit(1)
    return names


def _cores() -> int:
    """Processes for searching strategies side by side: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Search workers forked by ``_main`` from the arguments, before typer parsed them, for the command
# it runs (``_search_workers`` hands them out); None outside.
_forked: tuple[int, tuple[Any, int] | None] | None = None
# The commands that search, and the flag that names their strategies.
SEARCHING = {"compare": "--strategies", "plan": "--strategy"}


@contextmanager
def _search_workers(strategies: str | None) -> Iterator[tuple[int, tuple[Any, int] | None]]:
    """The cores to search on and, where ``--strategies`` leaves several, search workers forked now
    (``api.compare``'s ``started``): one per core but the parent's, no more than the strategies
    named, importing the search while the parent reads the problem (~0.1 s sooner at their first
    job on the headline compare). Those ``_main`` forked for this command, where it did.

    ``hetsim.api`` is imported here, before the fork: the parent needs it before its first job
    goes out anyway, and a worker forked after inherits it (each importing it again cost ~0.055 CPU
    s cached, ~0.12 s compiled). On the headline compare the parent's reading still ends after an
    early worker's imports, so the worker also imports FlexGen's LP solver (``FLEXGEN_MODULES``)
    before that first job, FlexGen's, arrives."""
    if _forked is not None:
        yield _forked
        return
    from hetsim import workers

    cores, given = _cores(), _split_names(strategies)
    # no more than the jobs can use: one per strategy named (all registered: not known before the
    # strategies are imported, which is the workers' part)
    named = len(set(given)) if given is not None else cores
    early = min(cores - 1, named) if named > 1 else 0
    modules = SEARCH_MODULES + (FLEXGEN_MODULES if given is None or "flexgen" in given else ())
    if early and workers.can_fork():
        importlib.import_module("hetsim.api")
    with workers.early(early, modules) as started:
        yield cores, (started, early) if started else None


def _tables_imported() -> None:
    """rich's console and tables (~0.03 CPU s) imported while a search worker's core is free and the
    last search still runs, not after it: the table is printed that much sooner."""
    import rich.console
    import rich.table  # noqa: F401


def _let_go(started: tuple[Any, int] | None) -> None:
    """The early workers, done with, told to exit without waiting for them: the kernel frees their
    heap (~10 ms on the headline compare) while the parent prints (``workers.early``'s end waits for
    them, after the printing)."""
    if started is not None:
        started[0].shutdown(wait=False)


@contextmanager
def _forking(args: Sequence[str]) -> Iterator[None]:
    """For a searching command (``SEARCHING``), its search workers forked before typer parses
    ``args``: parsing the flags imports pydantic (typer's coercion, ~0.05 CPU s), which the workers
    do not need, so they start that much sooner. The strategies are read from ``args`` as typer
    reads them (the last ``--strategies X`` or ``--strategies=X``); a worker count from odd
    arguments only changes the speed, never a result, and bad arguments fail in typer as before
    (the workers killed, not waited for: an exception leaving ``early`` kills them)."""
    global _forked
    words = list(itertools.takewhile(lambda a: not a.startswith("-"), args))
    flag = SEARCHING.get(words[0]) if len(words) == 1 else None
    if flag is None or "--help" in args:
        yield
        return
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    with _search_workers(value) as forked:
        _forked = forked
        try:
            yield
        finally:
            _forked = None


def _split_names(text: str | None) -> list[str] | None:
    if not text or text.strip() == "all":
        return None
    return [s.strip() for s in text.split(",") if s.strip()] or None


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _emit_results(
    fmt: str,
    model: str,
    hardware: str,
    workload: Any,
    results: Sequence[Result],
    free_batch: bool = False,
    partial: dict[str, Any] | None = None,
    quantized: str = "",
) -> None:
    """``partial``: a stopped compare's ``{"stopped_by": signal, "not_finished": names}`` (in the
    JSON as ``partial``, in the table's title; CSV has rows only: the stderr line says it).
    ``quantized``: the checkpoint's own weight precision (``ModelSpec.quantized``), named as such."""
    from hetsim import api
    from hetsim.models.spec import LOSSY_DTYPES
    from hetsim.report import compare_document, results_table

    if fmt == "json":
        doc = compare_document(model, hardware, workload, results, free_batch)
        _print_json(doc if partial is None else {**doc, "partial": partial})
    elif fmt == "csv":
        sys.stdout.write(api.results_frame(results).to_csv(index=False))
    elif partial is not None:
        title = f"PARTIAL: stopped by {partial['stopped_by']}, " + (
            f"not finished: {', '.join(partial['not_finished'])}; finished strategies, best first"
            if partial["not_finished"]
            else "trace not written; strategies, best first"
        )
        out().print(results_table(results, title=title))
    elif any(getattr(workload, key, None) for key in ("weight_dtype", "kv_dtype", "routing")):
        asked = [f"routing profile {workload.routing.source}"] if workload.routing else []
        for dt, what, flag in (
            (workload.weight_dtype, "weights", "--dtype"),
            (workload.kv_dtype, "KV cache", "--kv-dtype"),
        ):
            if dt:
                why = f"as asked with {flag}" if dt != quantized or what != "weights" else "the checkpoint's"
                asked.append(f"{what} {dt}" + (f" (lossy, {why})" if dt in LOSSY_DTYPES else ""))
        out().print(results_table(results, title="Strategies, best first; " + "; ".join(asked)))
    else:
        out().print(results_table(results))


BatchOpt = typer.Option(
    None,
    "--batch",
    help="Sequences in the offline batch (default: under throughput or cost each strategy's search picks "
    "its best batch, shown per row; 1 under latency and with --no-search).",
)
DtypeOpt = typer.Option(
    None,
    "--dtype",
    help="Weight precision to run (e.g. q4_k_m, lossy); strategies that cannot run it are not applicable.",
)
KvDtypeOpt = typer.Option(
    None,
    "--kv-dtype",
    help="KV cache precision to run (e.g. int8, lossy); strategies that cannot run it are not applicable.",
)
RoutingOpt = typer.Option(
    None,
    "--routing-profile",
    help="YAML/JSON of how often each routed expert is picked, per expert layer (MoE models; default: "
    "uniform). It sets the distinct experts a batch reads and which experts moe-offload keeps on the GPU.",
)
PromptOpt = typer.Option(512, "--prompt-len", help="Prompt tokens per sequence.")
GenOpt = typer.Option(32, "--gen-len", help="Generated tokens per sequence.")
ObjectiveOpt = typer.Option("throughput", "--objective", help="latency | throughput | cost")
LossyOpt = typer.Option(
    False,
    "--allow-compression",
    help="Let searches try lossy plans (FlexGen's 4-bit weights / KV cache); results say so.",
)
BudgetOpt = typer.Option(
    None, "--gpu-mem-budget", help="GPU memory each strategy may use per GPU, e.g. '6.25 GB' (default: all)."
)


# ---- model ----------------------------------------------------------------------------------
@model_app.command("list")
def model_list(fmt: str = typer.Option("table", "--format", help="table | json")) -> None:
    """List the built-in models."""
    from hetsim.models import get_model, list_models
    from hetsim.report import model_dict, models_table

    _check_format(fmt, ("table", "json"))
    specs = [get_model(n) for n in list_models()]
    if fmt == "json":
        _print_json([model_dict(s) for s in specs])
    else:
        out().print(models_table(specs))


@model_app.command("show")
def model_show(
    model: str = typer.Argument(..., help="Model name or path to a Hugging Face config.json."),
    fmt: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """Shapes, parameter count and fp16 sizes of one model."""
    from hetsim.models import get_model
    from hetsim.report import model_dict, model_table

    _check_format(fmt, ("table", "json"))
    spec = get_model(model)
    if fmt == "json":
        _print_json(model_dict(spec))
    else:
        out().print(model_table(spec))


# ---- hw -------------------------------------------------------------------------------------
@hw_app.command("list")
def hw_list(fmt: str = typer.Option("table", "--format", help="table | json")) -> None:
    """List the shipped rigs."""
    from hetsim.hardware import list_rigs, load_rig
    from hetsim.report import rigs_table

    _check_format(fmt, ("table", "json"))
    rows: list[tuple[str, Any]] = []
    for name in list_rigs():
        try:
            rows.append((name, load_rig(name)))
        except InputError as exc:
            rows.append((name, exc.line()))
    if fmt == "json":
        _print_json(
            [
                {"name": n, "error": r}
                if isinstance(r, str)
                else {"name": n, "price_per_hour": r.price_per_hour}
                for n, r in rows
            ]
        )
    else:
        out().print(rigs_table(rows))


@hw_app.command("show")
def hw_show(
    rig: str = typer.Argument(..., help="Rig name or path to a rig YAML."),
    fmt: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """Devices, disks, links and price of a rig, with the weakest evidence grade of each."""
    from hetsim.hardware import load_rig, rig_to_dict
    from hetsim.report import rig_tables

    _check_format(fmt, ("table", "json"))
    r = load_rig(rig)
    summary = rig_to_dict(r)
    if fmt == "json":
        _print_json(summary)
        return
    for table in rig_tables(r, summary):
        out().print(table)


# ---- compare / plan / simulate --------------------------------------------------------------
@app.command()
def compare(
    model: str = typer.Option(..., "--model", help="Model name or config.json path."),
    hw: str = typer.Option(..., "--hw", help="Rig name or rig YAML path."),
    strategies: str | None = typer.Option(None, "--strategies", help="Comma-separated (default: all)."),
    batch: int | None = BatchOpt,
    prompt_len: int = PromptOpt,
    gen_len: int = GenOpt,
    objective: str = ObjectiveOpt,
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    trace: Path | None = typer.Option(None, "--trace", help="Chrome trace of the winner's run."),
    no_search: bool = typer.Option(False, "--no-search", help="Use each strategy's default plan."),
    gpu_mem_budget: str | None = BudgetOpt,
    allow_compression: bool = LossyOpt,
    dtype: str | None = DtypeOpt,
    kv_dtype: str | None = KvDtypeOpt,
    routing_profile: Path | None = RoutingOpt,
    exact: bool = typer.Option(
        False, "--exact", help="Simulate every decode step (long generations are fast-forwarded)."
    ),
) -> None:
    """Every strategy's best plan on this rig, ranked by the objective (winner first)."""
    _check_format(fmt)
    with _search_workers(strategies) as (cores, started):
        from hetsim import api

        obj = api.check_objective(objective)
        p = _problem(model, hw, batch, prompt_len, gen_len, gpu_mem_budget, dtype, kv_dtype, routing_profile)
        names = _strategy_names(strategies, "--strategies")
        free = p.batch_is_free(obj, not no_search)
        try:
            results = api.compare(
                p,
                names,
                obj,
                search=not no_search,
                trace_path=str(trace) if trace else None,
                workers=cores,
                allow_lossy=allow_compression,
                exact=exact,
                started=started,
                meanwhile=_tables_imported if fmt == "table" else None,
            )
            _let_go(started)
        except api.CompareStopped as stopped:  # the finished strategies' rows, marked partial
            if stopped.results:
                # every search ended and no trace was asked: the comparison is whole, printed as such
                whole = not stopped.unfinished and not trace
                partial = (
                    None if whole else {"stopped_by": stopping_signal(), "not_finished": stopped.unfinished}
                )
                with keeping():
                    _emit_results(
                        fmt,
                        p.model_ref,
                        p.rig_ref,
                        p.workload,
                        stopped.results,
                        free,
                        partial,
                        p.model.quantized,
                    )
                    sys.stdout.flush()  # the grace clock's exit would drop what is buffered
                keep(_compare_kept(len(stopped.results), stopped.unfinished, whole))
            raise
    _emit_results(fmt, p.model_ref, p.rig_ref, p.workload, results, free, quantized=p.model.quantized)
    _say_budget_note(p)
    if trace and fmt == "table":
        if results and results[0].feasible:
            err().print(f"trace of {results[0].strategy} written to {trace}", highlight=False)
        else:
            err().print("no feasible strategy: no trace written", highlight=False)


def _compare_kept(n: int, unfinished: Sequence[str], whole: bool) -> str:
    if not unfinished:
        return "every strategy finished and is printed" + ("" if whole else "; the trace was not written")
    rows = f"the rows of the {n} finished strateg{'y' if n == 1 else 'ies'}"
    return f"{rows} are printed, marked partial; not finished: {', '.join(unfinished)}"


@app.command()
def plan(
    model: str = typer.Option(..., "--model", help="Model name or config.json path."),
    hw: str = typer.Option(..., "--hw", help="Rig name or rig YAML path."),
    strategy: str = typer.Option("all", "--strategy", help="A strategy name, or 'all'."),
    batch: int | None = BatchOpt,
    prompt_len: int = PromptOpt,
    gen_len: int = GenOpt,
    objective: str = ObjectiveOpt,
    out_path: Path | None = typer.Option(None, "--out", help="Write the plan document here."),
    fmt: str = typer.Option("table", "--format", help="table | json (json prints the plan document)"),
    gpu_mem_budget: str | None = BudgetOpt,
    allow_compression: bool = LossyOpt,
    dtype: str | None = DtypeOpt,
    kv_dtype: str | None = KvDtypeOpt,
    routing_profile: Path | None = RoutingOpt,
) -> None:
    """Search the best plan (of one strategy, or of all: the winner) and write it as JSON."""
    _check_format(fmt, ("table", "json"))
    with _search_workers(strategy) as (cores, started):
        from hetsim import api

        obj = api.check_objective(objective)
        p = _problem(model, hw, batch, prompt_len, gen_len, gpu_mem_budget, dtype, kv_dtype, routing_profile)
        names = _strategy_names(strategy, "--strategy")
        results = api.compare(p, names, obj, workers=cores, allow_lossy=allow_compression, started=started)
        _let_go(started)
    from hetsim.report import plan_summary_table, results_table
    from hetsim.strategies.base import get_strategy

    if fmt == "table" and (names is None or len(names) > 1):
        out().print(results_table(results, title=f"Best plan of each strategy ({obj}), best first"))
    best = next((r for r in results if r.feasible), None)
    if best is None:
        reasons = "; ".join(f"{r.strategy}: {r.reason}" for r in results) or "nothing to plan"
        err().print(f"error: no feasible plan ({reasons})", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    winner = get_strategy(best.strategy)
    doc = api.plan_document(p, winner, winner.plan_from_dict(best.plan), obj, best.batch)
    if out_path is not None:
        from hetsim.textfiles import write_text_atomic

        write_text_atomic(out_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
        keep(f"its plan, written whole to {out_path} before the stop, is kept")
    if fmt == "json":
        _print_json(doc)
        _say_budget_note(p)
        return
    out().print(plan_summary_table(doc, best))
    if names is None or len(names) > 1:
        out().print(f"winner: [bold]{best.strategy}[/bold]")
    if out_path is not None:
        out().print(f"plan written to {out_path}", highlight=False)
    _say_budget_note(p)


@app.command()
def simulate(
    plan_path: Path = typer.Option(..., "--plan", help="A plan JSON written by `hetsim plan --out`."),
    trace: Path | None = typer.Option(None, "--trace", help="Write a Chrome trace of the run."),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    exact: bool = typer.Option(
        False, "--exact", help="Simulate every decode step (long generations are fast-forwarded)."
    ),
) -> None:
    """Run exactly the plan in a plan file."""
    from hetsim import api
    from hetsim.sim.run import SimulateStopped
    from hetsim.sim.run import simulate as run_plan

    _check_format(fmt)
    p, strategy, plan_obj = api.load_plan(plan_path)
    keep(_simulate_keeps(exact, trace))
    try:
        result = run_plan(
            strategy,
            plan_obj,
            p.rig,
            p.model,
            p.workload,
            trace_path=str(trace) if trace else None,
            exact=exact,
        )
    except SimulateStopped as stopped:  # how far the run got, marked partial
        if stopped.progress is not None:
            partial = {"stopped_by": stopping_signal(), "strategy": strategy.name, **stopped.progress}
            with keeping():
                _emit_simulate_partial(fmt, p, partial, trace)
            keep(_simulate_kept(partial, fmt, trace))
        raise
    _emit_results(fmt, p.model_ref, p.rig_ref, p.workload, [result], quantized=p.model.quantized)
    _say_budget_note(p)
    if trace and fmt == "table":
        err().print(f"trace written to {trace}", highlight=False)


def _emit_simulate_partial(fmt: str, p: api.Problem, partial: dict[str, Any], trace: Path | None) -> None:
    """A stopped simulate's progress: in the JSON as ``partial`` beside no results, in the table as
    its line; CSV has result rows only (none: the stderr line says how far it got)."""
    from hetsim.report import compare_document

    if fmt == "json":
        _print_json({**compare_document(p.model_ref, p.rig_ref, p.workload, []), "partial": partial})
    elif fmt == "table":
        out().print(
            f"PARTIAL: {_simulate_progress(partial)}; no metrics: they are over the whole generation"
            + (f"; trace not written, {trace} is left as it was" if trace else ""),
            highlight=False,
            soft_wrap=True,
        )
    sys.stdout.flush()


def _simulate_progress(partial: dict[str, Any]) -> str:
    from hetsim.report import fmt_peak

    ttft = partial["ttft_s"]
    return (
        f"{partial['strategy']} stopped by {partial['stopped_by']} at simulated "
        f"{partial['simulated_s']:.6g} s: {partial['tokens']} of {partial['tokens_total']} tokens made, "
        + ("no TTFT (not every first token counted)" if ttft is None else f"TTFT {ttft:.6g} s")
        + f", peak memory so far {fmt_peak(partial['peak_mem_bytes'])}"
    )


def _simulate_kept(partial: dict[str, Any], fmt: str, trace: Path | None) -> str:
    """The interrupted line's account of a stopped simulate that got somewhere."""
    told = "not printed: CSV has result rows only" if fmt == "csv" else "printed, marked partial"
    return (
        f"how far it got is {told}: {partial['tokens']} of {partial['tokens_total']} tokens made by "
        f"simulated {partial['simulated_s']:.6g} s; no whole-run metrics"
        + (f"; {trace} not written" if trace else "")
    )


def _simulate_keeps(exact: bool, trace: Path | None) -> str:
    """Why a stopped simulate prints nothing (its interrupted line): a plan's metrics are its whole run's."""
    why = "it keeps no partial results: throughput, TPOT, cost and utilisation are over the whole generation"
    if trace is not None:
        return f"{why}; the trace is written only whole, {trace} is left as it was"
    # without --exact a long generation is fast-forwarded: seconds, not the minutes of every step
    return why + ("; without --exact long generations are fast-forwarded" if exact else "")


# ---- commands from other modules ------------------------------------------------------------
def _register_extensions() -> None:
    """Add the commands of ``EXTENSION_MODULES`` (a module the package lacks is skipped)."""
    for module_name in EXTENSION_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            parts = module_name.split(".")
            if exc.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
                raise  # the module exists but something it imports does not: a real bug
            continue
        module.register(app)


_register_extensions()


# ---- entry point ----------------------------------------------------------------------------
def _error_line(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return exc.line()
    if isinstance(exc, typer.BadParameter):
        field = None
        if exc.param is not None:
            opts = getattr(exc.param, "opts", None)
            field = opts[0] if opts else exc.param.name
        message = exc.message or ("is required" if isinstance(exc, _cx.MissingParameter) else "bad value")
        return ": ".join(x for x in (field or exc.param_hint, message) if x)  # type: ignore[misc]
    if isinstance(exc, UsageError):
        return exc.format_message()
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{exc.title}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at line {exc.lineno})"
    if isinstance(exc, yaml.YAMLError):
        return f"malformed YAML: {str(exc).splitlines()[0] if str(exc) else 'syntax error'}"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"  # any OS error on a path (NotADirectoryError too)
    return str(exc)


USER_ERRORS = (InputError, UsageError, ValidationError, json.JSONDecodeError, yaml.YAMLError, OSError)


def main(argv: Sequence[str] | None = None, *, process: bool = False) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 no result, 2 bad input, 128 + signal number when
    SIGINT or SIGTERM stopped it: 130, 143). ``process``: the process is hetsim's own (the console
    script), which a second signal, or a command not gone ``STOP_GRACE_S`` after the first, ends at
    once; a caller's (a script or notebook calling ``main``) is never ended."""
    threshold = gc.get_threshold()
    gc.set_threshold(CLI_GC_THRESHOLD, *threshold[1:])
    stop = Stop(_command_name(argv), process)
    try:
        try:
            with stop:
                code = _main(argv)
        except KeyboardInterrupt as exc:  # landed outside the command (typer turns one inside into 130)
            code = 130
            if (
                stop.signum is None and not stop.entered
            ):  # the caller's handler raised it (the console script's)
                stop.signum = signal_of(exc)
        except Exception:
            if stop.signum is None:
                raise
            code = 130  # what stopping did (its workers killed: BrokenProcessPool), not a bug
        if stop.signum is None:  # a signal after the output (``late``) ends it as one after main does
            # (in a caller's process ``restore`` hands it to the caller's handler: the run finished)
            return code if stop.late is None or not process else 128 + stop.late
        # one forked as the signal came is in no pool's list (the raise came first)
        kill_children(stop.spare)
        stop.say()
        return 128 + stop.signum
    finally:
        gc.set_threshold(*threshold)  # first: ``restore`` can raise (a late signal, to the caller's handler)
        stop.restore()


def _command_name(argv: Sequence[str] | None) -> str:
    """The command's words from the arguments (``compare``, ``model show``): before the first flag."""
    args = list(sys.argv[1:] if argv is None else argv)
    words = list(itertools.takewhile(lambda a: not a.startswith("-"), args))
    words = words[:2] if words[:1] in (["model"], ["hw"]) else words[:1]
    return " ".join(["hetsim", *words])


def _main(argv: Sequence[str] | None) -> int:
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)  # read, never changed, by the three below
    try:
        _refuse_empty(args, command)
        _refuse_misread_numbers(args, command)
        _refuse_writing_over_inputs(args)
        _refuse_unwritable_outputs(args)
        with _forking(args), named_stdout():
            rv = command.main(
                args=list(argv) if argv is not None else None, prog_name="hetsim", standalone_mode=False
            )
    except EXIT_ERRORS as exc:
        return exc.exit_code  # type: ignore[attr-defined]
    except ABORT_ERRORS:
        err().print("aborted", highlight=False)
        return 130
    except USER_ERRORS as exc:
        if NoArgsIsHelpError is not None and isinstance(exc, NoArgsIsHelpError):
            return 0  # typer already printed the help
        line = _as_written(" ".join(_error_line(_naming_the_flag(exc, argv)).split()))
        sys.stderr.write(f"error: {line}\n")
        return 2
    return rv if isinstance(rv, int) else 0


def _as_written(line: str) -> str:
    """``line`` with a path's bytes that are no UTF-8 (Python holds them as the surrogates U+DC80..
    U+DCFF) shown as ``\\xff``, as ``ls -b`` shows them: they printed as ``\\udcff``, a character the
    file's name does not have."""
    try:
        return line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # another lone surrogate: no path's byte, left as it was
        return line


# Flags naming a file whose errors would otherwise show only the path: a routing profile, or an
# output (its directory missing, a directory given) that is not the command's main input; and
# flags taking a name or a file, whose errors about a name (no such file) would show the name alone.
FILE_FLAGS = ("--routing-profile", "--trace", "--out", "--from-profiles")
NAME_FLAGS = ("--hw", "--slo-ref", "--profile")  # calibrate --profile: a rig name or file, as --hw
# a command's main input file: its errors name it already; given '' it said only ".: is a directory"
INPUT_FLAGS = ("--plan", "--requests")


def _flag_values(args: list[str]) -> list[tuple[str, str]]:
    """(flag, the argument after it) and (flag, value) of each ``--flag=value``."""
    return [*itertools.pairwise(args), *(a.partition("=")[::2] for a in args if "=" in a)]


def _refuse_empty(args: list[str], command: Any) -> None:
    """A file flag or ``--dask`` given '' (a shell variable left unset), before any work: Path('') is
    this folder, so ``sweep --out ''`` and ``validate --out ''`` wrote into it, ``--trace ''`` said
    only ".: Is a directory" and ``--dask ''`` ran locally. (A name flag's '' is an unknown name.)"""
    for flag, value in _flag_values(args):
        if not value and flag in (*FILE_FLAGS, *INPUT_FLAGS, "--dask"):
            why = "a file's path" if flag != "--dask" else "a scheduler's address or 'local'"
            raise InputError(f"is empty: give {why}", field=flag)
    # An empty positional argument (after the command's words, another value or a flag that takes no
    # value): ``sweep ''`` and ``calibrate --fit ''`` said only ".: is a directory" / ".: no such file".
    for before, value in itertools.pairwise(args):
        if value:
            continue
        sub = _subcommand(command, args)
        switch = before in _valueless_flags(sub)
        if not before.startswith("-") or switch:
            # a command with no positional argument (compare, plan): the '' is a switch's value
            # (``compare --no-search ''`` named "compare's argument", which it has none of)
            if not any(getattr(p, "param_type_name", "") == "argument" for p in sub.params):
                if switch:
                    raise InputError("takes no value (it is a switch), got ''", field=before)
                raise InputError("takes no argument, got ''", field=_command_name(args))
            field = f"{_command_name(args)}'s argument"
            raise InputError("is empty: give a name or a file's path", field=field)


def _refuse_misread_numbers(args: list[str], command: Any) -> None:
    """A number flag's value that Python reads as a number though it is no ASCII decimal one, before
    any work: ``--batch 1_6`` planned a batch of 16 and ``--seed ٣`` (an Arabic-Indic three) ran seed
    3 (typer's parsing, pydantic's lax mode or click's ``int``). Other bad values keep their lines."""
    from hetsim.units import misread_number

    numbers = {o for p in _subcommand(command, args).params if _takes_number(p) for o in p.opts}
    for flag, value in _flag_values(args):
        if flag in numbers and misread_number(value):
            why = "must be a number in ASCII decimal digits (no '_' or other scripts' digits)"
            raise InputError(f"{why}, got {value!r}", field=flag)


# A file a command reads, which no output of it may be (calibrate's --profile, refitted in place by
# design, is not one).
READ_FLAGS = ("--plan", "--hw", "--model", "--routing-profile", "--requests", "--from-profiles")
WRITE_FLAGS = ("--out", "--trace")


def _refuse_writing_over_inputs(args: list[str]) -> None:
    """An output path that is a file the command reads, before any work: ``simulate --plan p.json
    --trace p.json`` wrote the trace over the plan, and ``plan --hw rig.yaml --out rig.yaml`` the plan
    over the rig (a model folder's input is its config.json)."""
    pairs = _flag_values(args)
    read = [(f, v) for f, v in pairs if f in READ_FLAGS and v]
    for flag, value in pairs:
        if flag not in WRITE_FLAGS or not value or not Path(value).is_file():
            continue
        for source, named in read:
            for path in (Path(named), Path(named) / "config.json"):
                if path.is_file() and os.path.samefile(path, value):
                    why = f"is the file {source} reads: writing it would overwrite that input"
                    raise InputError(f"{why}; give another path", field=f"{flag} {value}")


FOLDER_OUTPUTS = ("sweep", "validate")  # the commands whose --out is a folder


def _makes_folders(args: list[str]) -> bool:
    """Whether the command makes the folders above its --out: the folder outputs and calibrate's
    measuring (``write_profile``); every other write goes into a folder that is there."""
    if not args or args[0] not in (*FOLDER_OUTPUTS, "calibrate"):
        return False
    # each word, not _flag_values' (flag, next) pairs: a trailing ``--fit`` (``calibrate --out new/c.yaml
    # r.json --fit``) is no pair's first and was taken for measuring, the folder's check skipped
    refits = any(a == "--fit" or a.partition("=")[0] == "--from-profiles" for a in args)
    return args[0] != "calibrate" or not refits


def _refuse_unwritable_outputs(args: list[str]) -> None:
    """An --out or --trace path that cannot take its output, before any work: a folder where a file
    goes, a file where a folder goes, a file where a folder above it must be, or a folder above it
    missing where the command makes none. ``calibrate`` measured for minutes, ``validate`` ran its
    plan, ``plan --out`` and ``--trace`` searched (and printed the table), then the write failed and the
    work was lost. A file's errors are the ones its write would raise (``--out DIR: Is a directory``)."""
    folder_out = bool(args) and args[0] in FOLDER_OUTPUTS
    makes_folders = _makes_folders(args)
    for flag, value in _flag_values(args):
        if flag not in WRITE_FLAGS or not value:
            continue
        path, folder = Path(value), flag == "--out" and folder_out
        if path.is_dir() and not folder:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), value)
        if folder and path.exists() and not path.is_dir():
            raise InputError("is a file, not a folder", field=f"{flag} {value}")
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), value)
        flag_makes = makes_folders and flag == "--out"
        if not flag_makes and not path.parent.is_dir():
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), value)


def _takes_number(param: Any) -> bool:
    """Whether a click parameter takes an int or a float (typer >= 0.2x: its annotation, which pydantic
    parses; earlier: click's type)."""
    described = getattr(param, "type_descriptor", None)
    if described is not None:
        return getattr(described, "annotation", None) in (int, float)
    return str(getattr(getattr(param, "type", None), "name", "")).startswith(("integer", "float"))


def _subcommand(command: Any, args: list[str]) -> Any:
    """The click command ``args`` name (``model show``: the group's subcommand)."""
    for word in itertools.takewhile(lambda a: not a.startswith("-"), args):
        if word not in getattr(command, "commands", {}):  # a group's subcommands (click or typer's own)
            break
        command = command.commands[word]
    return command


def _valueless_flags(command: Any) -> set[str]:
    """The flags of ``command`` that take no value (``--fit``, ``--quick``): what follows one is a
    positional argument. Read from click's own parameters (only when an empty value needs it)."""
    flags = (p for p in command.params if getattr(p, "is_flag", False) or getattr(p, "count", False))
    return {o for p in flags for o in (*p.opts, *p.secondary_opts)}


def _naming_the_flag(exc: BaseException, argv: Sequence[str] | None) -> BaseException:
    """``exc`` naming the flag that gave its file or name (``--trace PATH: ...``, ``--model: ...``)
    where the error names only the path, the name or an internal field."""
    pairs = _flag_values(list(sys.argv[1:] if argv is None else argv))
    if isinstance(exc, InputError) and exc.source is None and exc.field == "model":  # a name, not a file
        return InputError(exc.message, field="--model") if any(f == "--model" for f, _ in pairs) else exc
    path = exc.source if isinstance(exc, InputError) else getattr(exc, "filename", None)
    if not isinstance(path, str):
        return exc
    # the whole config.json (missing, a folder, not JSON); a folder's is its config.json (``--model /``)
    if isinstance(exc, InputError) and exc.field is None and exc.argument in (None, "model"):
        for flag, value in pairs:
            folder = str(Path(value) / "config.json") if value else None
            if flag == "--model" and value and path in (value, str(Path(value)), folder):
                return InputError(exc.message, source=f"--model {path}")
    for flag, value in pairs:
        if not value and path == "." and flag in NAME_FLAGS:  # Path("") is this folder (calibrate --profile)
            return InputError("is empty: give a file's path", field=flag)
        if path != value and not (value and path == str(Path(value))):
            continue
        if flag in FILE_FLAGS or (flag in NAME_FLAGS and not (value and Path(value).is_file())):
            named = f"{flag} {path}" if path else flag
            if isinstance(exc, InputError):
                return InputError(exc.message, source=named, field=exc.field)
            return OSError(exc.errno, exc.strerror, named)  # type: ignore[attr-defined]
    return exc


def exit_process(code: int) -> NoReturn:
    """End the process with ``code``, its heap frozen first (``gc.freeze``): the interpreter's last act
    is otherwise a full collection of every object the command imported or made (~0.04 CPU s after a
    compare, serial), just before the memory goes back to the system. All it skips is finalizing
    cyclic garbage at exit, which Python does not promise; atexit handlers and flushes still run.
    For the process's own end only: the heap stays frozen (tests call ``main``, not this).

    A command a signal stopped (``code`` 128 + the signal) ends at once, its output flushed: its
    workers are killed, and what it keeps is written whole already. The interpreter's exit would
    join the threads its process pools left, and an interrupt at an unlucky bytecode can leave one
    that never ends: a lock a ``with`` took just before the raise is never released (CPython's
    bpo-29988; the sweep's pools hold signals for this, ``runner._signals_at_safe_points``), and the
    pool's manager thread waits on it (seen on 3.11 with SIGTERM injected during a broken pool's
    shutdown: 6 of 6 runs hung). The process then hung after its line, holding its pipes: the rare
    timeout of test_signal_stops_compare_and_its_workers. Inside ``main`` the grace timer ends such
    a hang; after it, nothing did.

    A command that ended by itself, with no thread but this one left, ends as the interpreter would
    up to its atexit handlers (output flushed, the handlers run), then at once: the interpreter's
    finalization after them (tearing down every module, freeing every object one by one: ~15-25 ms
    after a compare, serial, after the output) does nothing a command's result needs: its files are
    written and closed by then (``textfiles``), temporary files and directories are atexit's, and
    with no other thread the threads' exit has nothing to join. Where flushing fails (a closed pipe)
    or another thread runs, the interpreter ends it as before; so too where something in the process
    waits for the ``SystemExit`` (``_watched``: a profiler, a tracer, ``-i``)."""
    gc.freeze()
    if code >= 128:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing to keep
                stream.flush()
        os._exit(code)
    # CPython's own: the stdlib has no public way to run the handlers before os._exit (it clears them)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None and not _watched() and _flushed() and threading.active_count() == 1:
        run_exit_handlers()
        if _flushed() and threading.active_count() == 1:
            os._exit(code)
    sys.exit(code)


def _watched() -> bool:
    """Whether something in this process acts after the script's ``SystemExit``, which ``os._exit``
    would end first: a profiler or tracer (``python -m cProfile -o FILE``, ``coverage run``, ``python
    -m trace``, pdb: their output is written once the script's exit reaches them; on 3.12+ cProfile
    and coverage may watch through ``sys.monitoring`` instead) or ``python -i`` (its prompt)."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    if sys.flags.inspect or os.environ.get("PYTHONINSPECT"):
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(i) is not None for i in range(6))


def _flushed() -> bool:
    """Standard output and error flushed (False: a closed or broken pipe, for the interpreter's exit
    to report as it does)."""
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    exit_process(main(process=True))
