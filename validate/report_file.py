"""A validate report read back (``calibrate --fit``, ``python -m validate.summary``): one pydantic model.

``hetsim validate`` writes the report (``validate.report.save``); a file edited by hand or cut short is
the user's input, so every field the readers use is checked here, and a bad one is one ``InputError``
naming the file and ``runs[i]`` (the CLI prints it and exits 2), never a KeyError traceback. The
readers use the CPU runs that were measured (a CUDA run, or one skipped, has nothing they refit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hetsim.errors import InputError
from hetsim.models.spec import DTYPES, ModelSpec
from hetsim.strategies.cpu_tp import ALLREDUCE_BYTES
from hetsim.textfiles import parse_json, read_text, validate_strictly
from hetsim.workload import Workload

_Count = Annotated[int, Field(strict=True, ge=1)]
# a NaN step time fed the least-squares fit
_Seconds = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Workload(_Doc):
    batch: _Count
    prompt_len: _Count
    gen_len: _Count


# each dtype a plan names, and the ones it may be
_DTYPE_FIELDS = {
    "weight_dtype": DTYPES,
    "kv_dtype": DTYPES,
    "act_dtype": DTYPES,
    "allreduce_dtype": ALLREDUCE_BYTES,
}


class _Plan(_Doc):
    weight_dtype: str
    kv_dtype: str
    act_dtype: str = "fp16"
    allreduce_dtype: str | None = None  # read only with more than one rank

    @model_validator(mode="after")
    def _known(self) -> _Plan:
        for name, known in _DTYPE_FIELDS.items():
            value = getattr(self, name)
            if value is not None and value not in known:  # None: an allreduce_dtype not given
                raise ValueError(f"plan.{name}: unknown dtype {value!r}")
        return self


class _Measured(_Doc):
    ttft_s: _Seconds
    tpot_s: _Seconds


class _CpuRun(_Doc):
    model: dict[str, Any]
    workload: _Workload
    world: _Count
    plan: _Plan
    measured: _Measured

    @model_validator(mode="after")
    def _reduced(self) -> _CpuRun:
        if self.world > 1 and self.plan.allreduce_dtype is None:
            raise ValueError("plan.allreduce_dtype: needed with more than one rank")
        return self


# A run's model shape (``dataclasses.asdict`` of the ``ModelSpec`` it ran): these are at least 1, the
# other counts at least 0; past 10**8 (``hf_config``'s bound on a config's shapes) none is a model.
_SIZES = frozenset(
    {"hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "max_position"}
    | {"num_experts", "experts_per_token"}
)
_MAX_SHAPE = 10**8


def _model(model_type: type, data: dict[str, Any]) -> Any:
    """``data`` as ``model_type``, each field of its type and in range: a string width was a TypeError
    traceback later, a zero or negative one a fit of nonsense (exit 0)."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(model_type)})
    if unknown:
        raise ValueError(f"model.{unknown[0]}: unknown field")
    try:
        spec = validate_strictly(model_type, data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"model.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    for f in dataclasses.fields(spec):
        v, low = getattr(spec, f.name), 1 if f.name in _SIZES else 0
        if type(v) is int and not low <= v <= _MAX_SHAPE:
            raise ValueError(f"model.{f.name}: must be in {low}..{_MAX_SHAPE}, got {v}")
    if spec.heads % spec.kv_heads:  # as hf_config reads a config.json: more KV heads than heads fit nonsense
        raise ValueError(f"model.kv_heads: {spec.kv_heads} does not divide heads {spec.heads}")
    return spec


@dataclass(frozen=True)
class CpuRun:
    """One measured CPU run of a report, checked."""

    index: int  # its place in the report's runs
    spec: ModelSpec
    workload: Workload
    world: int
    plan: _Plan
    ttft_s: float
    tpot_s: float


class _CudaRun(_Doc):
    workload: _Workload
    model: dict[str, Any]
    label: str
    plan: dict[str, Any]
    measured: _Measured


@dataclass(frozen=True)
class CudaRun:
    """One measured CUDA run of a report with the plan it ran, checked (the plan by its strategy)."""

    index: int
    label: str
    plan: dict[str, Any]
    spec: ModelSpec
    workload: Workload
    ttft_s: float
    tpot_s: float


def _read_run(doc: type[_Doc], run: dict[str, Any], i: int, source: str, model_type: type) -> tuple:
    """``run`` (``runs[i]`` of the report at ``source``) as ``doc``, its model built and checked, its
    workload within hetsim's bounds; anything wrong is one ``InputError`` naming ``runs[i]``."""
    try:
        r: Any = doc.model_validate(run)
        spec = _model(model_type, r.model)
        w = r.workload
        return r, spec, Workload(w.batch, w.prompt_len, w.gen_len)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        raise InputError(
            f"run {i}: {where + ': ' if where else ''}{msg}", source=source, field=f"runs[{i}]"
        ) from None
    except ValueError as exc:  # the model's shape (``_model``)
        raise InputError(f"run {i}: {exc}", source=source, field=f"runs[{i}]") from None
    except InputError as exc:  # a workload past hetsim's bounds
        raise InputError(
            f"run {i}: workload.{exc.field}: {exc.message}", source=source, field=f"runs[{i}]"
        ) from None


def cuda_run(run: dict[str, Any], i: int, source: str) -> CudaRun:
    """``run`` (``runs[i]`` of the report at ``source``) read as a measured CUDA run: a missing, zero or
    non-numeric time, or a model of nonsense shape, is one ``InputError`` naming ``runs[i]`` (it was a
    KeyError/TypeError traceback, or a +nan % error and exit 0)."""
    r, spec, workload = _read_run(_CudaRun, run, i, source, ModelSpec)
    return CudaRun(i, r.label, r.plan, spec, workload, r.measured.ttft_s, r.measured.tpot_s)


def _measured_runs(path: str | Path) -> tuple[str, list[tuple[int, dict[str, Any]]], list[tuple[int, dict]]]:
    """(source, CPU runs, other runs), each as [(i, runs[i])], the measured runs of the validate report
    at ``path``; a report without a list of runs, or a run that is not an object, is one ``InputError``."""
    source = str(path)
    doc = parse_json(read_text(path), source)
    runs = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(runs, list):
        raise InputError("not a validate report (no list of runs)", source=source, field="runs")
    cpu, other = [], []
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise InputError(f"run {i}: not an object", source=source, field=f"runs[{i}]")
        if "measured" in run:
            (cpu if str(run.get("strategy", "")).startswith("cpu") else other).append((i, run))
    return source, cpu, other


def _cpu_runs(source: str, runs: list[tuple[int, dict[str, Any]]], model_type: type) -> list[CpuRun]:
    out = []
    for i, run in runs:
        r, spec, workload = _read_run(_CpuRun, run, i, source, model_type)
        out.append(CpuRun(i, spec, workload, r.world, r.plan, r.measured.ttft_s, r.measured.tpot_s))
    return out


def cpu_runs(path: str | Path, model_type: type = ModelSpec) -> list[CpuRun]:
    """The measured CPU runs of the validate report at ``path``; ``model_type`` builds the model
    (calibrate's fit passes its own)."""
    source, cpu, _ = _measured_runs(path)
    return _cpu_runs(source, cpu, model_type)


def cuda_runs(path: str | Path) -> list[CudaRun]:
    """The measured CUDA runs of the validate report at ``path`` that recorded the plan they ran,
    each read by ``cuda_run``."""
    source, _, other = _measured_runs(path)
    return _cuda_runs(source, other)


def _cuda_runs(source: str, runs: list[tuple[int, dict[str, Any]]]) -> list[CudaRun]:
    """``cuda_run`` of each of ``runs`` that recorded the plan it ran."""
    return [cuda_run(run, i, source) for i, run in runs if run.get("plan")]


@dataclass(frozen=True)
class Report:
    """A validate report's measured runs of both kinds, read from its file once."""

    path: str
    cpu: list[CpuRun]
    cuda: list[CudaRun]


def read_report(path: str | Path) -> Report:
    """The report at ``path``, its CPU runs as ``cpu_runs`` reads them and its CUDA runs as
    ``cuda_runs`` does, from one read of the file."""
    source, cpu, other = _measured_runs(path)
    return Report(source, _cpu_runs(source, cpu, ModelSpec), _cuda_runs(source, other))
