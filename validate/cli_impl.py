"""The body of ``hetsim validate`` (kept out of ``validate.cli`` so that importing the CLI stays light)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hetsim.errors import InputError


def _spec(model: str, layers: int | None, hidden: int | None):
    from hetsim.models import get_model

    spec = get_model(model)
    if spec.quantized:  # torch runs the shape with full-precision random weights: not this checkpoint
        msg = f"{spec.quantized} weights (quantization_config): validate runs unquantised ones; remove it to "
        msg += "measure the shape"
        raise InputError(msg, field="--model")
    if model.endswith(".json"):  # name a config.json shape after its file
        spec = dataclasses.replace(spec, name=Path(model).stem)
    if layers is not None:
        if not 1 <= layers <= spec.layers:
            raise InputError(f"must be in 1..{spec.layers}", field="--layers")
        spec = dataclasses.replace(spec, layers=layers)
    if hidden is not None:  # CI smoke tests only: keeps head_dim, scales heads and MLP
        if not 1 <= hidden <= spec.hidden:  # a narrower copy (99999999999 ran torch out of memory)
            raise InputError(f"must be in 1..{spec.hidden}", field="--hidden")
        heads = max(1, hidden // spec.head_dim)
        ratio = spec.intermediate / spec.hidden
        kv = spec.kv_heads if heads % spec.kv_heads == 0 else heads
        spec = dataclasses.replace(
            spec, name=f"{spec.name}-h{hidden}", hidden=heads * spec.head_dim, heads=heads,
            kv_heads=min(kv, heads), intermediate=int(ratio * heads * spec.head_dim),
        )  # fmt: skip
    return spec


def run_validate(
    *, hw: str, plan: Path | None, model: str | None, strategy: str, ranks: str, layers: int | None,
    hidden: int | None, batch: int, prompt_len: int, gen_len: int, dtype: str, threads: int,
    repeats: int, out: Path, stem: str, rounds: int = 1,
) -> dict[str, Any]:  # fmt: skip
    from rich.console import Console

    from hetsim.workload import Workload
    from validate import report, runners

    # the table has ten columns: keep it readable when the output goes to a log, not a terminal
    console = Console() if Console().is_terminal else Console(width=140)
    from validate.cli import MAX_RANKS, MAX_REPEATS, MAX_ROUNDS, MAX_THREADS, check_count

    try:
        worlds = [int(x) for x in ranks.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"a comma-separated list of rank counts, got {ranks!r}", field="--ranks") from None
    if not worlds:
        raise InputError("give at least one rank count", field="--ranks")
    for world in worlds:
        check_count(world, MAX_RANKS, "--ranks")
    check_count(threads, MAX_THREADS, "--threads")
    plan_obj = None
    if plan is not None:
        from hetsim.api import load_plan

        p, strat, plan_obj = load_plan(plan)
        model, strategy = p.model_ref, strat.name
        batch, prompt_len, gen_len = p.workload.batch, p.workload.prompt_len, p.workload.gen_len
        if strategy == "cpu-tp":
            worlds = [1, len(plan_obj.ranks)] if len(plan_obj.ranks) > 1 else [1]
    if model is None:
        raise InputError("give --plan or --model", field="--model")
    check_count(rounds, MAX_ROUNDS, "--rounds")
    check_count(repeats, MAX_REPEATS, "--repeats")
    if not stem or Path(stem).name != stem or stem in (".", ".."):  # '' wrote ".json"; 'a/b' left --out
        raise InputError(f"must be a file name, got {stem!r}", field="--stem")
    if dtype not in runners.DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (use {', '.join(runners.DTYPES)})", field="--dtype")
    spec = _spec(model, layers, hidden)
    try:
        workload = Workload(batch, prompt_len, gen_len)
    except InputError as exc:  # Workload names its argument: the flag gave it
        flag = {"batch": "--batch", "prompt_len": "--prompt-len", "gen_len": "--gen-len"}.get(exc.field or "")
        raise InputError(exc.message, field=flag or exc.field) from None
    runs: list[dict[str, Any]] = []
    base = {"model": runners.model_record(spec), "workload": workload.to_dict(), "strategy": strategy}
    if strategy not in ("cpu-tp", "cpu", *CUDA_STRATEGIES):  # a plan's strategy is the plan file's
        why = f"validate runs {', '.join(('cpu-tp', *CUDA_STRATEGIES))} plans, not {strategy!r}"
        if plan is not None:
            raise InputError(why, source=str(plan), field="strategy")
        raise InputError(why, field="--strategy")
    from hetsim.hardware import load_rig

    # read before the minutes of measuring, on every path: a bad --hw, or more ranks than its CPU
    # entries (which predict_cpu simulates), was found only after them (a ValueError traceback, the
    # runs lost); a CUDA run skipped for want of CUDA wrote a report for a profile that is not there
    rig = load_rig(hw)
    if strategy in ("cpu-tp", "cpu"):
        cpus = len(list(rig.cpus()))
        for world in worlds:
            if world > cpus:
                raise InputError(
                    f"the profile {hw} has {cpus} CPU entries, fewer than {world} ranks", field="--ranks"
                )
            if spec.heads % world:
                raise InputError(f"{spec.heads} heads do not split over {world} ranks", field="--ranks")
        measured: dict[int, list] = {w: [] for w in worlds}
        for r in range(rounds):  # the rank counts take turns, so slow drift hits them alike
            for world in worlds:
                cfg = runners.RunConfig(
                    model=runners.model_record(spec), batch=batch, prompt_len=prompt_len, gen_len=gen_len,
                    world=world, threads=threads, dtype=dtype, repeats=repeats,
                )  # fmt: skip
                console.print(f"running {spec.name} ({spec.layers} layers) cpu-tp x{world}, round {r + 1}")
                measured[world].append(runners.run_cpu(cfg))
        for world in worlds:
            m = runners.merge_rounds(measured[world])
            pred = report.predict_cpu(hw, spec, workload, world, dtype)
            label = "baseline (1 rank)" if world == 1 else f"cpu-tp {world} ranks"
            runs.append({**base, "label": label, "world": world, "threads": threads, "rounds": rounds,
                         "plan": pred.pop("plan"), "measured": m.to_dict(), "predicted": pred})  # fmt: skip
    else:
        runs.append(_run_cuda(hw, strategy, plan_obj, spec, workload, base, repeats, console))
    doc = {"environment": report.environment(), "profile": hw, "runs": runs}
    report.print_table(runs, console)
    for path in report.save(doc, out, stem):
        console.print(f"wrote {path}")
    return doc


CUDA_STRATEGIES = ("gpu-only", "accelerate", "hetegen", "flexgen")


def _run_cuda(hw: str, strategy: str, plan_obj, spec, workload, base: dict[str, Any], repeats: int, console):
    """One CUDA run: the plan from --plan or hetsim's search on ``hw``, measured, then simulated."""
    from validate import report, runners

    if not runners.cuda_available():
        console.print(f"[yellow]{strategy}: CUDA is not available on this machine; skipped[/yellow]")
        return {**base, "label": strategy, "skipped": "no CUDA"}
    try:
        pred: dict[str, Any] | None = report.predict_plan(hw, strategy, plan_obj, spec, workload)
    except ValueError as exc:
        pred, why = None, str(exc)
    plan = pred.pop("plan") if pred else {}
    if strategy == "flexgen" and plan:  # the run's batch is the plan's block: predict that, before the run
        block = int(plan["gpu_batch_size"]) * int(plan["num_gpu_batches"])
        if block != workload.batch:
            from hetsim.strategies.base import get_strategy
            from hetsim.workload import Workload

            blk = Workload(block, workload.prompt_len, workload.gen_len)
            try:
                pred = report.predict_plan(
                    hw, strategy, get_strategy(strategy).plan_from_dict(plan), spec, blk
                )
                pred.pop("plan")
            except ValueError as exc:  # it had been a traceback after the run, the measurement lost
                pred, why = None, str(exc)
    # Warm up with a whole generation: on the H200 host every gpu-only run's first generation stepped
    # at 70-81 ms at each position the warm-up had not visited, its later ones at 11.5-20.6 ms
    # (medians), whatever the model or batch (cause not traced: validate/results/h200/README.md).
    cfg = runners.RunConfig(
        model=runners.model_record(spec), batch=workload.batch, prompt_len=workload.prompt_len,
        gen_len=workload.gen_len, dtype="fp16", repeats=repeats, warmup_steps=workload.gen_len,
    )  # fmt: skip
    console.print(f"running {spec.name} ({spec.layers} layers) {strategy} on CUDA ...")
    if strategy == "gpu-only":
        m = runners.run_gpu_only(cfg)
    elif strategy == "accelerate":
        m = runners.run_accelerate(
            cfg, int(plan.get("gpu_layers", 0)), pinned=bool(plan.get("pinned", False))
        )
    elif not plan:
        return {**base, "label": strategy, "skipped": f"no {strategy} plan to run: {why}"}
    elif strategy == "hetegen":
        m = runners.run_hetegen(cfg, plan)
    else:
        m = runners.run_flexgen(cfg, plan)
    run = {**base, "label": strategy, "plan": plan, "measured": m.to_dict()}
    if pred is not None:
        run["predicted"] = pred
    else:
        run["prediction"] = why
    return run
