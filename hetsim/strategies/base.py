"""The plug-in protocol every strategy implements, and the registry that names them.

A strategy knows its plan space (a frozen dataclass ``plan_type``), whether it applies to a rig,
a plan a user would write by hand (``default_plan``, no search), the candidates worth ranking, its
resident memory and its schedule (a SimPy process on the engine that reads like the paper's
algorithm). Searching is the planner's job (``hetsim.planner``), which sits above strategies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, ClassVar, Literal

from hetsim.errors import InputError
from hetsim.hardware.rig import Rig
from hetsim.models.spec import LOSSY_DTYPES, ModelSpec, narrowed
from hetsim.sim.engine import Schedule
from hetsim.strategies.plan_io import validate_plan
from hetsim.workload import Workload

Objective = Literal["latency", "throughput", "cost"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput", "cost")

# device -> tag -> bytes, allocated before the schedule starts (weights, pre-allocated KV, ...)
Footprint = Mapping[str, Mapping[str, float]]


class Strategy(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    plan_type: ClassVar[type]
    # Weight precisions a user may ask for with ``--dtype`` (Workload.weight_dtype); the seed strategies
    # run 16-bit weights (FlexGen's own compression is its plan's choice, not --dtype).
    weight_dtypes: ClassVar[tuple[str, ...]] = ("fp16",)
    # KV cache precisions a user may ask for with ``--kv-dtype`` (Workload.kv_dtype); strategies whose
    # plans carry a ``kv_dtype`` take it into their default plan and candidates, the others run 16-bit.
    kv_dtypes: ClassVar[tuple[str, ...]] = ("fp16",)
    # Rough CPU cost of a search, relative to the others: ``compare`` hands the costliest to its
    # worker processes first so that none is left running alone at the end. Order only, no result.
    search_weight: ClassVar[int] = 1
    # Plan fields' ranges that need no rig or model: field -> (low, high, why the bound). ``check_plan``
    # holds a plan file to them (``plan_io.in_ranges``) and a sweep spec its ``plan.<field>`` knobs,
    # before any point runs (10**30 GPU batches ran to a reason quoting 10**25 TB).
    knob_ranges: ClassVar[Mapping[str, tuple[float, float, str]]] = {}

    @abstractmethod
    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        """None when the strategy can run on this rig at all; otherwise why not (one line)."""

    @abstractmethod
    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> Any:
        """A sensible plan without searching (what a user would configure by hand)."""

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterable[Any]:
        """Plans worth ranking, cheapest to enumerate first; ``hetsim.planner`` ranks them in the
        engine. Strategies whose plan space needs a solver leave this as is and register a search
        in the planner instead."""
        yield self.default_plan(rig, model, workload)

    @abstractmethod
    def footprint(self, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        """Memory held for the whole run, per device and tag."""

    @abstractmethod
    def schedule(self, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> Schedule:
        """The SimPy process that runs the workload under ``plan``."""

    @abstractmethod
    def devices(self, plan: Any) -> list[str]:
        """Devices the plan uses (for the price of the run and the weakest grade)."""

    def pass_batch(self, plan: Any) -> int | None:
        """Sequences one pass of the plan runs together, when it splits the batch into passes
        (None: the whole batch at once). A free-batch search gives no more than one pass holds."""
        return None

    def run_floors(
        self, plan: Any, rig: Rig, model: ModelSpec, workload: Workload
    ) -> tuple[float, float] | None:
        """Lower bounds of (TTFT, makespan - TTFT) of the plan's run of ``workload``, every step in
        the engine, as ``hetsim.sim.run.simulate`` makes it (a search's proxy run): far cheaper than
        the run, so a search can leave out a plan they show cannot win (None: no bound known)."""
        return None

    def lossy(self, plan: Any, model: ModelSpec | None = None) -> str:
        """What the plan gives up in model quality, for every output to show ("" = lossless).

        Lossy choices (compressed weights or KV cache) are the user's to ask for: searches try them
        only with ``allow_lossy``, and a lossy ``--dtype`` only runs when the user names it. By default
        a plan's ``weight_dtype`` / ``kv_dtype`` fields say it (16-bit when a plan has none); given the
        model, a 16-bit run of an fp32 checkpoint says so too (reported, not gated)."""
        parts = [
            f"{getattr(plan, field)} {what}"
            for field, what in (("weight_dtype", "weights"), ("kv_dtype", "KV cache"))
            if getattr(plan, field, None) in LOSSY_DTYPES
        ]
        return "; ".join(parts + self._narrowing(plan, model))

    def _narrowing(self, plan: Any, model: ModelSpec | None) -> list[str]:
        if model is None:
            return []
        out = []
        for field, what in (("weight_dtype", "weights"), ("kv_dtype", "KV cache")):
            dtype = getattr(plan, field, "fp16")
            if narrowed(model.dtype, dtype):
                out.append(f"{dtype} {what} from a {model.dtype} checkpoint")
        return out

    # ---- plans as JSON ------------------------------------------------------------------------
    def plan_to_dict(self, plan: Any) -> dict[str, Any]:
        assert is_dataclass(plan), plan
        return _jsonable(asdict(plan))

    def plan_from_dict(self, data: Mapping[str, Any], source: str = "plan") -> Any:
        return validate_plan(self.plan_type, data, source)

    def check_plan(self, plan: Any, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        """Raise ``InputError`` (field ``params.<name>``) when a plan (say, from a file) does not fit
        the model: layer counts that do not add up, fractions out of range, nothing to run on."""
        return None


def no_gpu(rig: Rig) -> str | None:
    """Why a strategy that runs on GPUs cannot run on ``rig``: it has none (else None)."""
    return None if rig.gpus() else "the rig has no GPUs"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


_REGISTRY: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available under its ``name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_strategy(name: str) -> Strategy:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown strategy {name!r} (known: {', '.join(sorted(_REGISTRY))})", field="strategy"
        ) from None


def all_strategies() -> list[Strategy]:
    _load_builtin()
    return list(_REGISTRY.values())


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import hetsim.strategies  # noqa: F401  (modules register themselves on import)
