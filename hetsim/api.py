"""The Python API behind the CLI: compare strategies, plan one, simulate a saved plan.

    >>> from hetsim.api import compare_frame
    >>> df = compare_frame("llama2-70b", "mixed-lab", batch=1, prompt_len=512, gen_len=128)

Everything returns ``Result`` objects (or a pandas DataFrame of them); nothing prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic_core import ValidationError

from hetsim import planner
from hetsim import workers as forked
from hetsim.costs.pricing import usd_per_mtok
from hetsim.errors import InputError
from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.models.hf_config import weight_dtype_for
from hetsim.models.registry import get_model
from hetsim.models.spec import ModelSpec, unknown_dtype
from hetsim.planner.search import CP_SAT_SEARCHES
from hetsim.sim.memory import OutOfMemory, budget_problem, usable_bytes
from hetsim.sim.result import Result, rank_key
from hetsim.sim.run import context_reason, remembering_runs, simulate
from hetsim.stopping import keeping
from hetsim.strategies.base import OBJECTIVES, Objective, Strategy, all_strategies, get_strategy
from hetsim.textfiles import parse_json, read_text, validate_strictly
from hetsim.units import fmt_bytes
from hetsim.workload import MAX_WORK, Workload, read_routing_profile

_T = TypeVar("_T")

if TYPE_CHECKING:  # pandas costs ~0.4 s to import; only the DataFrame helpers need it
    import pandas as pd

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Problem:
    """What is being asked: a model on a rig under a workload."""

    model: ModelSpec
    model_ref: str  # what the user typed (name or config.json path)
    rig: Rig
    rig_ref: str
    workload: Workload
    gpu_mem_budget: float | None = None  # bytes each GPU may use; None = all of it
    # No batch given: under a throughput or cost objective each strategy's search picks its own
    # (``workload.batch`` is then 1, the batch of latency runs and of --no-search).
    free_batch: bool = False
    # a budget above some GPU's memory, said ("" when none is): those GPUs use what they hold
    budget_note: str = ""

    def batch_is_free(self, objective: str, search: bool = True) -> bool:
        return self.free_batch and search and objective != "latency"


def load_rig(hw: str) -> Rig:
    """``hetsim.hardware.loader.load_rig``, imported on first use: the rig's schema (pydantic models,
    YAML) is the parent's to read; compare's search workers import this module without it."""
    from hetsim.hardware.loader import load_rig as load

    return load(hw)


def problem(
    model: str,
    hw: str,
    batch: int | None = 1,
    prompt_len: int = 512,
    gen_len: int = 32,
    gpu_mem_budget: float | None = None,
    weight_dtype: str | None = None,
    kv_dtype: str | None = None,
    routing_profile: str | None = None,
) -> Problem:
    rig = _given_by("hw", load_rig, hw)
    note = ""
    if gpu_mem_budget is not None:
        note = budget_note(rig, gpu_mem_budget)
        rig = with_gpu_mem_budget(rig, gpu_mem_budget)
    _known_dtypes(weight_dtype, kv_dtype)
    spec = _given_by("model", get_model, model)
    weight_dtype = weight_dtype_for(spec, weight_dtype, ref=model)  # a quantised checkpoint's own precision
    routing = None
    if routing_profile is not None:
        routing = read_routing_profile(routing_profile)
        if not spec.is_moe:
            raise InputError(f"{model} routes to no experts", source=routing_profile)
        experts, k, moe_layers = spec.num_experts, spec.experts_per_token, spec.layers - spec.dense_layers
        routing.check(experts, k, moe_layers, model)
    workload = Workload(1 if batch is None else batch, prompt_len, gen_len, weight_dtype, kv_dtype, routing)
    return Problem(spec, model, rig, hw, workload, gpu_mem_budget, free_batch=batch is None, budget_note=note)


def _given_by(argument: str, load: Callable[[str], _T], value: str) -> _T:
    """``load(value)``, its InputError marked as ``argument``'s (``InputError.argument``)."""
    try:
        return load(value)
    except InputError as exc:
        exc.argument = exc.argument or argument
        raise


def _known_dtypes(weight_dtype: str | None, kv_dtype: str | None) -> None:
    """``--dtype`` and ``--kv-dtype``, each unset or a dtype hetsim knows."""
    for flag, dt in (("--dtype", weight_dtype), ("--kv-dtype", kv_dtype)):
        if dt is not None and (why := unknown_dtype(dt)) is not None:
            raise InputError(why, field=flag)


def with_gpu_mem_budget(rig: Rig, budget: float) -> Rig:
    """The rig as a strategy may use it: every GPU capped at ``budget`` bytes.

    Capping the capacity the engine's memory ledger enforces makes every strategy honour the budget
    (plots of throughput against GPU memory, as HeteGen's Fig. 8) without each re-implementing it.
    """
    why = budget_problem(budget)
    if why:
        raise InputError(why, field="--gpu-mem-budget")
    devices = {
        name: replace(d, mem_bytes=usable_bytes(d.mem_bytes, budget)) if d.kind == "gpu" else d
        for name, d in rig.devices.items()
    }
    return replace(rig, devices=devices)


def budget_note(rig: Rig, budget: float) -> str:
    """A budget above some of ``rig``'s GPUs, said ("" when it is above none): a budget is "at most
    this much", so those GPUs use what they hold (``usable_bytes``), not an error."""
    over = [d for d in rig.gpus() if usable_bytes(d.mem_bytes, budget) < budget]
    if not over:
        return ""
    named = ", ".join(f"{d.name} ({fmt_bytes(d.mem_bytes)})" for d in over[:4])
    more = f" and {len(over) - 4} more" if len(over) > 4 else ""
    uses = "it uses all it holds" if len(over) == 1 else "each uses all it holds"
    return f"GPU memory budget {fmt_bytes(budget)} is above the memory of {named}{more}: {uses}"


def check_objective(objective: str) -> Objective:
    if objective not in OBJECTIVES:
        raise InputError(
            f"unknown objective {objective!r} (use {', '.join(OBJECTIVES)})", field="--objective"
        )
    return objective  # type: ignore[return-value]


def best_result(
    strategy: Strategy,
    p: Problem,
    objective: Objective,
    *,
    search: bool = True,
    adjust: Callable[[Any], Any] | None = None,
    allow_lossy: bool = False,
    exact: bool = False,
) -> Result:
    """``strategy``'s searched (or, with ``search=False``, default) plan simulated in full.

    ``adjust`` edits the chosen plan before it runs (a sweep's plan knobs); ``allow_lossy`` lets the
    search try plans that change the model's outputs (FlexGen's 4-bit compression); ``exact`` runs
    every decode step of the final simulation (``simulate``'s switch; searches always estimate).
    The search's runs are remembered until the final one, whose fast-forward starts with the run
    that estimated the chosen plan."""
    with remembering_runs():
        return _best_result(strategy, p, objective, search, adjust, allow_lossy, exact)


def _best_result(
    strategy: Strategy,
    p: Problem,
    objective: Objective,
    search: bool,
    adjust: Callable[[Any], Any] | None,
    allow_lossy: bool,
    exact: bool,
) -> Result:
    too_long = context_reason(p.model, p.workload.context_len)
    if too_long:
        return Result.infeasible(strategy.name, too_long)
    reason = not_applicable(strategy, p)
    if reason:
        return Result.infeasible(strategy.name, reason)
    fix = adjust or (lambda plan: plan)
    if p.batch_is_free(objective, search):
        return _best_at_free_batch(strategy, p, objective, fix, allow_lossy, exact)
    try:
        if search:
            plan = planner.search(strategy, p.rig, p.model, p.workload, objective, allow_lossy=allow_lossy)
            plan = fix(plan)
        else:
            plan = fix(strategy.default_plan(p.rig, p.model, p.workload))
    except NoRouteError as exc:  # a search that meets two unconnected devices: the rig is the reason
        return Result.infeasible(strategy.name, str(exc))
    if plan is None:
        return _no_plan(strategy, p, fix, "no feasible plan found by the search", "the default plan")
    return simulate(strategy, plan, p.rig, p.model, p.workload, exact=exact)


def not_applicable(strategy: Strategy, p: Problem) -> str | None:
    """Why ``strategy`` cannot run ``p``'s model on its rig at all ("not applicable: ..."), or None: its
    own rule (``Strategy.applicable``), then the weight and KV precisions it runs. The one check for
    compare and plan (an infeasible row), for a plan file (``load_plan``: bad input) and for serve's
    HexGen (``serve``)."""
    return _not_applicable(strategy, p.rig, p.model, p.workload)


def _not_applicable(strategy: Strategy, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
    reason = strategy.applicable(rig, model, workload)
    wd = workload.weight_dtype
    if not reason and wd and wd not in strategy.weight_dtypes:
        offered = ", ".join(strategy.weight_dtypes) or "none"
        what = (  # a GPTQ/AWQ checkpoint's own weights: no flag asked for them
            f"the checkpoint's {wd} weights (config.json quantization_config) are"
            if wd == model.quantized
            else f"--dtype {wd} is"
        )
        reason = f"{what} not a weight precision it runs (offers: {offered})"
    kd = workload.kv_dtype
    if not reason and kd and kd not in strategy.kv_dtypes:
        offered = ", ".join(strategy.kv_dtypes) or "none"
        reason = f"--kv-dtype {kd} is not a KV precision it runs (offers: {offered})"
    return f"not applicable: {reason}" if reason else None


def _no_plan(strategy: Strategy, p: Problem, fix: Callable[[Any], Any], what: str, example: str) -> Result:
    """An infeasible result that says why: the plan a user would write by hand, and where it breaks."""
    fallback = simulate(
        strategy, fix(strategy.default_plan(p.rig, p.model, p.workload)), p.rig, p.model, p.workload
    )
    why = f": e.g. {example}: {fallback.reason}" if not fallback.feasible else ""
    return Result.infeasible(strategy.name, f"{what}{why}", fallback.plan)


def _best_at_free_batch(
    strategy: Strategy,
    p: Problem,
    objective: Objective,
    fix: Callable[[Any], Any],
    allow_lossy: bool,
    exact: bool = False,
) -> Result:
    """``best_result`` when the search also picks the batch (``planner.search_free_batch``)."""
    try:
        found = planner.search_free_batch(
            strategy, p.rig, p.model, p.workload, objective, allow_lossy=allow_lossy
        )
    except NoRouteError as exc:
        return Result.infeasible(strategy.name, str(exc))
    if found is None:
        return _no_plan(strategy, p, fix, "no feasible plan at any batch", "the default plan at batch 1")
    plan, batch = found
    return simulate(strategy, fix(plan), p.rig, p.model, replace(p.workload, batch=batch), exact=exact)


def compare(
    p: Problem,
    strategies: Sequence[str] | None = None,
    objective: Objective = "throughput",
    *,
    search: bool = True,
    trace_path: str | None = None,
    workers: int = 1,
    allow_lossy: bool = False,
    exact: bool = False,
    started: tuple[ProcessPoolExecutor, int] | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> list[Result]:
    """Every requested (default: every registered) strategy with its best plan, best first.

    ``workers > 1`` searches strategies in that many forked processes (the CLI uses the machine's
    cores); results are the same, in the same order, as with one. ``started``: a pool of that many
    workers forked already (``workers.early``; they count among ``workers``), given the costliest
    jobs first. ``exact``: as for ``best_result``. ``meanwhile``: the caller's own work, called once
    while the last searches leave a forked worker's core free (``workers.scatter``; not called where
    none is, nor when searching here). Interrupted (``KeyboardInterrupt``: Ctrl-C, or
    the CLI's SIGTERM), it raises ``CompareStopped`` with the strategies that had finished.
    """
    chosen = [get_strategy(s) for s in strategies] if strategies else all_strategies()
    names = [s.name for s in chosen]
    finished: dict[int, Result] = {}  # by index in ``chosen``, as each search's result arrives
    try:
        ask = _Ask(p, objective, search, allow_lossy, exact)
        _search_all(chosen, ask, workers, started, finished, meanwhile)
        results = sorted((finished[i] for i in range(len(names))), key=rank_key(objective))
        if trace_path and results and results[0].feasible:
            winner = get_strategy(results[0].strategy)
            plan = winner.plan_from_dict(results[0].plan)
            wl = replace(p.workload, batch=results[0].batch or p.workload.batch)
            simulate(winner, plan, p.rig, p.model, wl, trace_path=trace_path)
    except KeyboardInterrupt as exc:
        kept = sorted(finished.values(), key=rank_key(objective))
        raise CompareStopped(kept, [n for i, n in enumerate(names) if i not in finished]) from exc
    return results


class CompareStopped(KeyboardInterrupt):
    """``compare`` interrupted: ``results``, the strategies whose search had finished, ranked as
    ``compare`` ranks them (the first is best of these only), and ``unfinished``, the names of the
    others (empty when only the winner's trace was being written)."""

    def __init__(self, results: list[Result], unfinished: list[str]) -> None:
        super().__init__(f"{len(results)} strategies finished; not finished: {', '.join(unfinished)}")
        self.results = results
        self.unfinished = unfinished


@dataclass(frozen=True)
class _Ask:
    """What ``compare`` asks of each strategy's search (sent to its workers with the names)."""

    p: Problem
    objective: Objective
    search: bool
    allow_lossy: bool
    exact: bool

    def best(self, strategy: Strategy) -> Result:
        return best_result(
            strategy,
            self.p,
            self.objective,
            search=self.search,
            allow_lossy=self.allow_lossy,
            exact=self.exact,
        )


def _search_all(
    chosen: Sequence[Strategy],
    ask: _Ask,
    workers: int,
    started: tuple[ProcessPoolExecutor, int] | None,
    finished: dict[int, Result],
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Each strategy's best result into ``finished`` (by index in ``chosen``) as it arrives: a job's
    results when its worker returns them (``compare``'s forked workers), or one by one when
    searching here."""
    if workers > 1 and len(chosen) > 1 and forked.can_fork():
        jobs = _worker_jobs(chosen, ask.search)
        calls = [(_best_by_names, ([chosen[i].name for i in job], ask)) for job in jobs]
        more = min(workers, len(jobs)) - (started[1] if started else 0)

        def keep(j: int, results: list[Result]) -> None:
            finished.update(zip(jobs[j], results, strict=True))

        # A pool forked here starts at its first job. Every worker routes copies, so each imports
        # networkx (~0.1 s) and builds the rig's graph itself, in parallel, not here first; the
        # solvers' modules are imported by the one worker that runs their search (OR-Tools' linear
        # solver ~0.05 s, CP-SAT ~0.14 s). The pool forked here is let go when it has nothing left
        # to run: its workers exit while ``started``'s last job runs (``started`` stays the caller's).
        try:
            with forked.frozen_heap(), forked.pool(more) if more > 0 else nullcontext() as late:
                pools = ([started] if started else []) + ([(late, more)] if late else [])
                forked.scatter(pools, calls, keep, release=[late] if late else [], meanwhile=meanwhile)
            return
        except BrokenProcessPool:
            pass  # a worker was killed (out of memory?): search again here, one at a time
    for i, s in enumerate(chosen):
        finished[i] = ask.best(s)


def _worker_jobs(chosen: Sequence[Strategy], search: bool) -> list[list[int]]:
    """Indices of ``chosen`` as the jobs of compare's workers, costliest first (longest-processing-time
    order, by ``search_weight``): one job per strategy, except that the searches which load CP-SAT
    (~0.1 s) share one, so one worker imports it, once."""
    cp_sat = [i for i, s in enumerate(chosen) if search and s.name in CP_SAT_SEARCHES]
    jobs = [[i] for i in range(len(chosen)) if i not in cp_sat] + ([cp_sat] if cp_sat else [])
    return sorted(jobs, key=lambda job: -sum(chosen[i].search_weight for i in job))


def _best_by_names(names: list[str], ask: _Ask) -> list[Result]:
    return [ask.best(get_strategy(n)) for n in names]


def compare_frame(
    model: str,
    hw: str,
    *,
    strategies: Sequence[str] | None = None,
    batch: int = 1,
    prompt_len: int = 512,
    gen_len: int = 32,
    objective: Objective = "throughput",
) -> pd.DataFrame:
    """``compare`` as a pandas DataFrame: one row per strategy, the columns of the JSON output."""
    results = compare(problem(model, hw, batch, prompt_len, gen_len), strategies, objective)
    return results_frame(results)


def results_frame(results: Sequence[Result]) -> pd.DataFrame:
    rows = []
    for r in results:
        d = r.to_dict()
        d["plan"] = json.dumps(d["plan"], sort_keys=True)
        d["peak_mem_bytes"] = json.dumps(d["peak_mem_bytes"], sort_keys=True)
        d["utilization"] = json.dumps(d["utilization"], sort_keys=True)
        d["extras"] = json.dumps(d["extras"], sort_keys=True)
        rows.append(d)
    import pandas as pd

    return pd.DataFrame(rows)


# ---- plan files ---------------------------------------------------------------------------------
@cache
def _plan_document() -> Any:
    """The plan file's pydantic model (``PlanDocument``), made on first use: pydantic's models cost
    ~0.05 CPU s to import and build, which compare's search workers, importing this module, never use."""
    from pydantic import BaseModel, ConfigDict, field_validator
    from pydantic_core import PydanticCustomError

    class _WorkloadDoc(BaseModel):
        model_config = ConfigDict(extra="forbid")
        batch: int
        prompt_len: int
        gen_len: int
        weight_dtype: str | None = None
        kv_dtype: str | None = None
        routing_profile: str | None = None

    class PlanDocument(BaseModel):
        """A plan on disk: enough to re-run exactly what was planned."""

        model_config = ConfigDict(extra="forbid")
        hetsim_plan: Literal[1] = PLAN_FORMAT_VERSION  # the format this version reads
        strategy: str
        model: str
        hardware: str
        workload: _WorkloadDoc
        objective: Objective = "throughput"
        gpu_mem_budget: float | None = None
        params: dict[str, Any]
        lossy: str = ""  # what the plan gives up in model quality ("" = lossless); informational

        @field_validator("hetsim_plan", mode="before")
        @classmethod
        def _a_number(cls, v: Any) -> Any:
            if isinstance(v, bool):  # Literal[1] takes true (== 1), even in strict mode
                raise PydanticCustomError("literal_error", "Input should be 1, not {v}", {"v": json.dumps(v)})
            if isinstance(v, int) and v > PLAN_FORMAT_VERSION:  # said only "Input should be 1"
                raise PydanticCustomError(
                    "literal_error",
                    "format {v} is newer than the one this hetsim reads ({known}): a newer hetsim may have"
                    " written it",
                    {"v": v, "known": PLAN_FORMAT_VERSION},
                )
            return v

    # named as this module's (its ``__getattr__`` finds them): documents pickle as they did
    for cls in (_WorkloadDoc, PlanDocument):
        cls.__qualname__ = cls.__name__
    return PlanDocument


def __getattr__(name: str) -> Any:
    if name == "PlanDocument":
        return _plan_document()
    if name == "_WorkloadDoc":
        return _plan_document().model_fields["workload"].annotation
    raise AttributeError(f"module 'hetsim.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazy plan document's included (``__getattr__``)."""
    return sorted({*globals(), "PlanDocument", "_WorkloadDoc"})


def plan_document(
    p: Problem, strategy: Strategy, plan: Any, objective: Objective, batch: int | None = None
) -> dict[str, Any]:
    """The plan file; ``batch`` is the one the search chose when the problem left it free."""
    wl = replace(p.workload, batch=batch) if batch else p.workload
    doc = _plan_document()(
        strategy=strategy.name,
        model=p.model_ref,
        hardware=str(p.rig_ref),
        workload=wl.to_dict(),
        objective=objective,
        gpu_mem_budget=p.gpu_mem_budget,
        params=strategy.plan_to_dict(plan),
        lossy=strategy.lossy(plan, p.model),
    ).model_dump()
    for key in ("weight_dtype", "kv_dtype", "routing_profile"):  # only what the user asked for is written
        if doc["workload"][key] is None:
            del doc["workload"][key]
    return doc


def load_plan(path: str | Path) -> tuple[Problem, Strategy, Any]:
    """Read and validate a plan JSON; errors name the file and the field."""
    source = str(path)
    raw = parse_json(read_text(path), source)
    try:
        doc = validate_strictly(_plan_document(), raw)  # `true` is not a batch of 1
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(err["msg"], source=source, field=".".join(map(str, err["loc"]))) from None
    try:
        strategy = get_strategy(doc.strategy)
        p = problem(doc.model, doc.hardware, **doc.workload.model_dump(), gpu_mem_budget=doc.gpu_mem_budget)
    except InputError as exc:
        # inside the rig, config.json or routing profile it names (a field, or the file's whole text:
        # malformed, a key twice, not a mapping): that file's error, its line numbers its own
        if exc.source is not None and (exc.field is not None or Path(exc.source).is_file()):
            raise
        flags = {"--gpu-mem-budget": "gpu_mem_budget", "--dtype": "weight_dtype", "--kv-dtype": "kv_dtype"}
        field = flags.get(exc.field or "", exc.field)  # the file's key
        if field in type(doc.workload).model_fields:  # Workload's own check names its argument
            field = f"workload.{field}"
        elif field is None and exc.source is not None:  # a file it names that is missing or unknown
            named = {
                doc.hardware: "hardware",
                doc.model: "model",
                str(Path(doc.model) / "config.json"): "model",  # a model folder: its config.json
                doc.workload.routing_profile: "workload.routing_profile",
            }
            field = named.get(exc.source)
            if field is not None and exc.source not in exc.message:  # which path, read from where
                where = "" if Path(exc.source).is_absolute() else f", from the current folder {Path.cwd()}"
                raise InputError(f"{exc.message}: {exc.source}{where}", source=source, field=field) from None
        raise InputError(exc.message, source=source, field=field) from None
    why = not_applicable(strategy, p)  # as compare and plan decide it: that strategy cannot run this at all
    if why:
        raise InputError(why, source=source, field="strategy")
    plan = strategy.plan_from_dict(doc.params, source)
    for key in ("weight_dtype", "kv_dtype"):  # what the workload asked for is what the plan runs
        asked, runs = getattr(p.workload, key), getattr(plan, key, None)
        if asked and runs is not None and runs != asked:
            raise InputError(
                f"is {runs!r} but the workload asks for {key} {asked!r}", source=source, field=f"params.{key}"
            )
    try:
        strategy.check_plan(plan, p.rig, p.model, p.workload)
    except InputError as exc:
        raise InputError(exc.message, source=source, field=exc.field) from None
    check_plan_names(strategy, plan, p, source)
    return p, strategy, plan


def check_plan_names(strategy: Strategy, plan: Any, p: Problem, source: str) -> None:
    """A plan from a file may name devices the rig lacks or dtypes hetsim lacks: say which."""
    rig = p.rig
    for name in strategy.devices(plan):
        if name not in rig.devices and name not in rig.disks:
            raise InputError(f"{name!r} is not a device of rig {rig.name}", source=source, field="params")
    try:
        strategy.footprint(plan, rig, p.model, p.workload)
    except KeyError as exc:  # a dtype or device name the plan gives and hetsim lacks: which field
        name, params = exc.args[0], strategy.plan_to_dict(plan)
        field = next((f"params.{k}" for k, v in params.items() if v == name), "params")
        raise InputError(f"unknown name {name!r}", source=source, field=field) from None
    except OutOfMemory:
        pass  # a well-formed plan that does not fit: simulating it reports that as a result


# ---- online serving -----------------------------------------------------------------------------
def serve(
    model: str,
    hw: str,
    *,
    rate: float | None = None,
    duration: float | None = None,
    num_requests: int | None = None,
    trace: str | Path | None = None,
    slo: float | None = None,
    slo_scale: float | None = None,
    slo_ref: str = "hexgen-homogeneous",
    target: float = 0.99,
    find_max_rate: bool = False,
    max_batch: int = 8,
    symmetric: bool = False,
    dispatch: str = "least-latency",
    seed: int = 0,
    mode: str = "continuous",
    drop_late: bool = False,
    weight_dtype: str | None = None,
    kv_dtype: str | None = None,
) -> dict[str, Any]:
    """A request stream (Poisson at ``rate``, or a CSV ``trace``) served on the rig under the HexGen
    plan with the best SLO attainment; the JSON document of ``hetsim serve``. ``feasible`` is False
    (with a ``reason``) when no plan fits. Flags are checked here and named in errors. ``mode``:
    ``continuous`` batching or ``hexgen`` (HexGen's static batches); ``drop_late`` drops a request
    that would miss its deadline (HexGen's simulator), which needs ``slo`` or ``slo_scale``.
    ``weight_dtype`` / ``kv_dtype`` (``--dtype`` / ``--kv-dtype``) are the precisions the plans run, as in
    ``compare`` (HexGen's fp16 when None; one HexGen does not run makes the result infeasible); the
    ``--slo-scale`` reference rig keeps HexGen's fp16."""
    from hetsim.planner.hexgen_cpsat import SearchStopped, reference_plan, search_serving
    from hetsim.serving.serve import MODES, Reference, attainment_at, deadlines_for, max_rate

    _check_serve_flags(dispatch, max_batch, target, slo, slo_scale, duration, num_requests)
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r} (use {', '.join(MODES)})", field="--mode")
    if drop_late and slo is None and slo_scale is None:
        raise InputError("--drop-late needs --slo or --slo-scale", field="--drop-late")
    _known_dtypes(weight_dtype, kv_dtype)
    spec, rig = get_model(model), load_rig(hw)
    weight_dtype = weight_dtype_for(spec, weight_dtype, ref=model)  # a quantised checkpoint's own precision
    hexgen = get_strategy("hexgen")
    # the rule compare's rows apply (a rig without GPUs, a precision HexGen does not run): the lengths
    # are the requests', checked below, so the workload here carries only the precisions
    why = _not_applicable(hexgen, rig, spec, Workload(weight_dtype=weight_dtype, kv_dtype=kv_dtype))
    if why:
        return {"feasible": False, "reason": f"hexgen {why}"}
    reqs = _serve_requests(rate, duration, num_requests, trace, seed, lambda n: context_reason(spec, n))
    longest = max(reqs, key=lambda r: r.prompt_len + r.output_len)
    too_long = context_reason(spec, longest.prompt_len + longest.output_len)
    if too_long:
        return {"feasible": False, "reason": f"request {longest.rid}: {too_long}"}
    reference = None
    if slo_scale is not None:
        ref_rig = load_rig(slo_ref)
        try:
            ref_plan = reference_plan(ref_rig, spec, max_batch)
        except ValueError as exc:  # no replica fits (a rig without GPUs, too little memory): a traceback
            raise InputError(f"{exc}: --slo-scale needs one that can serve it", field="--slo-ref") from None
        reference = Reference.build(ref_rig, spec, ref_plan)
    deadlines = (
        deadlines_for(reqs, slo_s=slo, slo_scale=slo_scale, reference=reference)
        if slo is not None or slo_scale is not None
        else None
    )
    if find_max_rate and deadlines is None:
        raise InputError("--max-rate needs --slo or --slo-scale", field="--max-rate")

    def document(plan: Any, result: Any) -> dict[str, Any]:
        doc = _serve_document(
            model, hw, reqs, rate, seed, slo, slo_scale, slo_ref, symmetric, rig, plan, result
        )
        if (
            weight_dtype or kv_dtype
        ):  # the precisions asked for, and what they give up (absent: HexGen's fp16)
            doc["plan"].update(weight_dtype=plan.weight_dtype, kv_dtype=plan.kv_dtype)
            doc["lossy"] = hexgen.lossy(plan, spec)
        doc.update(result.summary(deadlines))
        doc.update(_rig_cost(rig, result))
        return doc

    try:
        found = search_serving(
            rig,
            spec,
            reqs,
            deadlines,
            symmetric=symmetric,
            max_batch=max_batch,
            dispatch=dispatch,
            mode=mode,
            drop_late=drop_late,
            weight_dtype=weight_dtype or "fp16",
            kv_dtype=kv_dtype or "fp16",
        )
    except NoRouteError as exc:
        return {"feasible": False, "reason": str(exc)}
    except SearchStopped as stopped:
        with keeping():
            kept = _stopped_document(stopped, document, deadlines, len(reqs))
        raise ServeStopped(kept) from stopped
    if found is None:
        return {"feasible": False, "reason": f"no feasible plan for {spec.name} on {rig.name}"}
    plan, result = found
    doc = document(plan, result)
    if find_max_rate:
        doc["target_attainment"] = target
        try:
            doc["max_rate"] = max_rate(
                lambda r: attainment_at(
                    plan,
                    rig,
                    spec,
                    r,
                    n=len(reqs),
                    seed=seed,
                    slo_s=slo,
                    slo_scale=slo_scale,
                    reference=reference,
                    dispatch=dispatch,
                    mode=mode,
                    drop_late=drop_late,
                ),
                target,
                lo=0.05,
                hi=max(0.1, rate or 1.0),
                iterations=8,
            )
        except KeyboardInterrupt as exc:  # the served plan is whole; only its highest rate is missing
            doc["max_rate"] = None
            raise ServeStopped(
                {**doc, "partial": {"max_rate": "not found: stopped during its search"}}
            ) from exc
    return doc


class ServeStopped(KeyboardInterrupt):
    """``serve`` interrupted (Ctrl-C, or the CLI's SIGTERM) once something was served: ``doc`` is
    ``serve``'s document of it, with ``partial`` saying what it is. Stopped while a candidate plan was
    served and none before it: that plan's requests finished by the simulated time reached
    (``simulated_s``; ``finished`` of the ``arrived`` of all ``requests``), their latency, TTFT and
    TPOT, throughput and costs over them, and SLO attainment over the requests decided by then
    (finished, or unfinished past their deadline or dropped: ``slo_over`` of them). Stopped after some
    candidates were served whole (``plans_served`` of ``candidate_plans``): the best of those, whole.
    Stopped during the ``--max-rate`` search: the served plan, whole, without ``max_rate``."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(f"serve stopped: {doc['partial']}")
        self.doc = doc


def _stopped_document(
    stopped: Any, document: Callable[[Any, Any], dict[str, Any]], deadlines: Any, total: int
) -> dict[str, Any]:
    """``serve``'s document of what a stopped search had served (``ServeStopped``)."""
    partial: dict[str, Any] = {"plans_served": stopped.served, "candidate_plans": stopped.candidates}
    if stopped.best is not None:
        return {**document(*stopped.best), "partial": partial}
    plan, run = stopped.running
    doc = document(plan, run.result)
    partial.update(
        simulated_s=run.now_s, finished=len(run.result.finished), arrived=run.arrived, requests=total
    )
    if deadlines is not None:
        doc["slo_attainment"], partial["slo_over"] = run.attainment(deadlines)
    return {**doc, "partial": partial}


def _serve_document(
    model: str,
    hw: str,
    reqs: Sequence[Any],
    rate: float | None,
    seed: int,
    slo: float | None,
    slo_scale: float | None,
    slo_ref: str,
    symmetric: bool,
    rig: Rig,
    plan: Any,
    result: Any,
) -> dict[str, Any]:
    """What was asked and the plan that served it (the summary and costs are added after)."""
    return {
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
    }


def _rig_cost(rig: Rig, result: Any) -> dict[str, Any]:
    """The plan may leave GPUs idle: what renting the whole rig costs per generated token."""
    tokens = result.generated_tokens
    per_mtok = (
        usd_per_mtok(rig.price_per_hour, result.makespan_s, tokens) if tokens and result.makespan_s else None
    )
    return {"rig_price_usd_per_hour": rig.price_per_hour, "rig_cost_usd_per_mtok": per_mtok}


def _check_serve_flags(
    dispatch: str,
    max_batch: int,
    target: float,
    slo: float | None,
    slo_scale: float | None,
    duration: float | None,
    num_requests: int | None,
) -> None:
    from hetsim.serving.dispatcher import POLICIES

    if dispatch not in POLICIES:
        raise InputError(f"unknown policy {dispatch!r} (use {', '.join(POLICIES)})", field="--dispatch")
    if not 1 <= max_batch <= MAX_WORK["batch"]:
        raise InputError(f"must be in [1, {MAX_WORK['batch']}], got {max_batch}", field="--max-batch")
    if not 0 < target <= 1:
        raise InputError(f"must be in (0, 1], got {target}", field="--target")
    if slo is not None and slo_scale is not None:
        raise InputError("give --slo or --slo-scale, not both", field="--slo")
    for name, v in (("--slo", slo), ("--slo-scale", slo_scale), ("--duration", duration)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise InputError(f"must be a positive number, got {v}", field=name)
    if num_requests is not None and num_requests < 1:
        raise InputError(f"must be a positive integer, got {num_requests}", field="--num-requests")


def _serve_requests(
    rate: float | None,
    duration: float | None,
    num_requests: int | None,
    trace: str | Path | None,
    seed: int,
    too_long: Callable[[int], str | None] | None = None,
) -> list[Any]:
    """The requests of a Poisson stream or a ``trace`` (whose rows ``too_long`` refuses, naming the line)."""
    from hetsim.serving.workload import poisson_requests, read_trace

    if trace is not None:
        if rate is not None:
            raise InputError("give --rate or --requests, not both", field="--rate")
        return read_trace(trace, too_long)
    if rate is None:
        raise InputError("give --rate (with --duration or --num-requests) or --requests", field="--rate")
    if duration is None and num_requests is None:
        num_requests = 200
    reqs = poisson_requests(rate, n=num_requests, duration_s=duration, seed=seed)
    if not reqs:
        raise InputError("no request arrives within the duration", field="--duration")
    return reqs
