"""Caches that make the engine and the planners faster change no number: each run here is compared
to the bit with the same run with the cache switched off."""

from __future__ import annotations

import pytest

from hetsim import api
from hetsim.sim import engine as engine_mod
from hetsim.sim.engine import Engine
from hetsim.workers import WORKER_GC_THRESHOLD


def _uncached_lockstep(self, devices, work, repeat=1):
    return self._lockstep_compute(devices, work, repeat)


def _bits(results):
    """Every field to the last bit (repr: NaN costs compare equal, floats round-trip exactly)."""
    return [repr(r) for r in results]


@pytest.mark.parametrize(
    ("model", "rig", "strategies"),
    [
        ("llama2-70b", "hexgen-homogeneous", ["hexgen"]),
        ("qwen-72b", "cputp-4x8575c", ["cpu-tp"]),
        ("llama2-13b", "mixed-lab", ["accelerate", "layer-offload", "deepspeed"]),
    ],
)
def test_lockstep_cache_changes_no_result(monkeypatch, model, rig, strategies):
    p = api.problem(model, rig, 2, 128, 8)
    cached = api.compare(p, strategies)
    monkeypatch.setattr(Engine, "lockstep_fixed", _uncached_lockstep)
    assert _bits(api.compare(p, strategies)) == _bits(cached)
    assert any(r.feasible for r in cached)


def test_serving_is_bit_identical_without_the_lockstep_cache(monkeypatch):
    args = dict(rate=1.0, num_requests=30, slo_scale=5.0, seed=3)
    cached = api.serve("llama2-7b", "hexgen-half-budget", **args)
    monkeypatch.setattr(Engine, "lockstep_fixed", _uncached_lockstep)
    assert repr(api.serve("llama2-7b", "hexgen-half-budget", **args)) == repr(cached)
    assert cached["feasible"]


def test_lockstep_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(engine_mod, "_LOCKSTEP_CACHE_MAX", 2)
    p = api.problem("llama2-70b", "hexgen-homogeneous", 1, 64, 6)
    bounded = api.compare(p, ["hexgen"], search=False)
    monkeypatch.setattr(Engine, "lockstep_fixed", _uncached_lockstep)
    assert _bits(api.compare(p, ["hexgen"], search=False)) == _bits(bounded)


def _with_events(book):
    """A ``book_*`` method that also schedules the SimPy timeout ``compute``/``transfer`` would."""

    def booked(self, *args, **kwargs):
        end = book(self, *args, **kwargs)
        self.env.timeout(end - self.env.now)
        return end

    return booked


@pytest.mark.parametrize(
    ("model", "rig", "strategy", "dtype"),
    [
        ("llama2-70b", "mixed-lab", "hetegen", None),
        ("opt-13b", "hetegen-a10", "hetegen", None),
        ("qwen3-30b-a3b", "ktransformers-2s", "moe-offload", "q4_k_m"),
    ],
)
def test_booking_without_an_event_changes_no_result(monkeypatch, model, rig, strategy, dtype):
    """Paths joined by their end times book tasks nobody waits on; scheduling a timeout for each
    (as ``compute`` and ``transfer`` do) gives the same numbers to the bit."""
    p = api.problem(model, rig, 2, 96, 5, weight_dtype=dtype)
    fast = api.compare(p, [strategy])
    monkeypatch.setattr(Engine, "book_compute", _with_events(Engine.book_compute))
    monkeypatch.setattr(Engine, "book_transfer", _with_events(Engine.book_transfer))
    assert _bits(api.compare(p, [strategy])) == _bits(fast)
    assert fast[0].feasible


def _fresh_costs(rig):
    return {}, {}, {}  # no op costs kept, no twin devices


def test_op_costs_shared_between_engines_change_no_result(monkeypatch):
    """Engines on one rig share op costs (a search's candidates, a --max-rate bisection's runs);
    each engine costing its ops afresh gives the same numbers to the bit."""
    p = api.problem("llama2-70b", "mixed-lab", 1, 128, 4)
    args = dict(rate=1.0, num_requests=20, slo_scale=5.0, seed=1, find_max_rate=True)
    shared = (_bits(api.compare(p, ["hetegen", "flexgen", "accelerate"])),
              repr(api.serve("llama2-7b", "hexgen-half-budget", **args)))  # fmt: skip
    monkeypatch.setattr(engine_mod, "_rig_costs", _fresh_costs)
    fresh = (_bits(api.compare(p, ["hetegen", "flexgen", "accelerate"])),
             repr(api.serve("llama2-7b", "hexgen-half-budget", **args)))  # fmt: skip
    assert fresh == shared


def test_op_cost_cache_keeps_a_few_rigs(monkeypatch):
    monkeypatch.setattr(engine_mod, "_RIG_COSTS", {})
    rigs = [api.problem("llama2-7b", "mixed-lab").rig for _ in range(engine_mod._RIG_COSTS_MAX_RIGS + 2)]
    for rig in rigs:
        Engine(rig)
    assert len(engine_mod._RIG_COSTS) == engine_mod._RIG_COSTS_MAX_RIGS
    assert Engine(rigs[-1])._op_costs is Engine(rigs[-1])._op_costs


def test_cost_key_ignores_memory_size_and_provenance_only():
    from dataclasses import replace

    from hetsim.costs.op_cost import cost_key
    from hetsim.hardware.types import Grade, Provenance

    gpu = api.problem("llama2-7b", "mixed-lab").rig.devices["n0.gpu0"]
    smaller = replace(gpu, mem_bytes=16e9, provenance={"mem_bytes": Provenance("a knob", Grade.ASSUMED)})
    assert cost_key(smaller) == cost_key(gpu) is not None
    assert cost_key(replace(gpu, mem_bw=gpu.mem_bw * 0.5)) != cost_key(gpu)
    assert cost_key(replace(gpu, efficiency=replace(gpu.efficiency, overhead_s=1e-3))) != cost_key(gpu)
    assert cost_key(replace(gpu, name="other")) != cost_key(gpu)


def test_cost_key_is_the_twin_key_with_the_devices_name_and_node():
    """One home for what op costs read of a device: ``cost_key`` adds only the name and node that
    ``twin_key`` leaves out, so the two caches can never disagree on a field."""
    from dataclasses import replace

    from hetsim.costs.op_cost import cost_key, twin_key

    rig = api.problem("llama2-7b", "mixed-lab").rig
    for dev in rig.devices.values():
        assert cost_key(dev) == (dev.name, dev.node, twin_key(dev)) and twin_key(dev) is not None
    gpu = rig.devices["n0.gpu0"]
    moved = replace(gpu, node="n9")
    assert twin_key(moved) == twin_key(gpu) and cost_key(moved) != cost_key(gpu)
    odd = replace(gpu, efficiency=object())  # a type the keys do not know: like no other device
    assert cost_key(odd) is None and twin_key(odd) is None


def _sweep_rigs():
    """mixed-lab as a sweep overrides it: GPU memory capped (op costs and splits as shipped), and
    PCIe swapped (splits differ, op costs as shipped)."""
    from hetsim.sweep.grid import apply_hardware

    base = api.problem("llama2-7b", "mixed-lab").rig
    return base, apply_hardware(base, {"gpu_mem_gb": 16}), apply_hardware(base, {"pcie": "pcie3-x16"})


def test_rigs_with_alike_devices_share_op_costs_and_change_no_result(monkeypatch):
    rigs = _sweep_rigs()
    assert Engine(rigs[0])._op_costs is Engine(rigs[1])._op_costs is Engine(rigs[2])._op_costs
    from dataclasses import replace

    p = api.problem("llama2-13b", "mixed-lab", 2, 128, 8)
    problems = [replace(p, rig=rig) for rig in rigs]
    names = ["hetegen", "flexgen", "gpu-only", "deepspeed"]
    shared = [_bits(api.compare(p, names)) for p in problems]
    monkeypatch.setattr(engine_mod, "_rig_costs", _fresh_costs)
    assert [_bits(api.compare(p, names)) for p in problems] == shared


def test_split_measurements_remembered_across_rigs_are_measured_ones(monkeypatch):
    """measure_split on a rig that differs only where a split does not look (GPU memory) answers
    from the shipped rig's measurement, which is the one it would make; another PCIe link measures
    again (a different answer)."""
    from hetsim.models.sharding import layer_blocks
    from hetsim.models.spec import OpKind
    from hetsim.strategies import hetegen

    base, capped, pcie3 = _sweep_rigs()
    model = api.problem("llama2-13b", "mixed-lab").model
    op = next(o for o in layer_blocks(model, "decode", 4, 1, 64, 1).whole if o.kind == OpKind.MATMUL)
    args = ("n0.gpu0", "n0.cpu0", op, 0.37, 2e-5)
    monkeypatch.setattr(hetegen, "_SPLITS", {})
    first = hetegen.measure_split(base, *args)
    assert len(hetegen._SPLITS) == 1
    assert hetegen.measure_split(capped, *args) == first and len(hetegen._SPLITS) == 1
    slower = hetegen.measure_split(pcie3, *args)
    assert len(hetegen._SPLITS) == 2 and slower != first
    monkeypatch.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)  # nothing remembered
    assert [hetegen.measure_split(r, *args) for r in (capped, pcie3)] == [first, slower]


def test_a_forking_compare_leaves_solver_imports_to_the_workers(monkeypatch):
    """The parent's part before the fork is serial: a solver module is imported by the one worker
    that runs its search, not by the parent (whose results are the same)."""
    import sys

    p = api.problem("opt-6.7b", "flexgen-t4", 4, 64, 4)
    alone = api.compare(p, ["flexgen", "gpu-only"], "throughput", workers=1)
    monkeypatch.delitem(sys.modules, "hetsim.planner.flexgen_lp")
    forked = api.compare(p, ["flexgen", "gpu-only"], "throughput", workers=2)
    assert "hetsim.planner.flexgen_lp" not in sys.modules
    assert [r.to_dict() for r in forked] == [r.to_dict() for r in alone]


def _reference_lockstep(self, devices, work, *, repeat=1, label="lockstep"):
    """``Engine.lockstep`` as it booked before ``run_lockstep`` (two passes over the lanes, ``_finish``)."""
    fixed = self.lockstep_fixed(devices, work, repeat)
    if fixed.single is not None:
        return self.execute(devices[0], fixed.single, label=label, args={"repeat": repeat})
    for nbytes in fixed.bytes_moved:
        self.bytes_transferred += nbytes
    lanes = fixed.lanes
    now = self.env.now
    start = max(now, max(lane.free_at for lane in lanes))
    busy = fixed.compute_s * repeat
    for dram, nbytes, cap in fixed.traffic:
        busy = max(busy, dram.book(now, start, nbytes, cap) - start)
    stretch = busy - fixed.compute_s * repeat
    wait = engine_mod.lockstep_wait(busy, fixed.straggle)
    duration = engine_mod.lockstep_duration(busy, fixed.comm_s * repeat, fixed.straggle)
    end = start + duration
    for lane in lanes:
        lane.free_at = end
        lane.busy_s += duration
    for lane in fixed.link_lanes:
        lane.busy_s -= busy + wait
    for lane, mem_bound in fixed.memory_bound:
        lane.memory_bound_s += mem_bound + stretch
    return self._finish(lanes, start, end, label, {"ranks": len(devices), "repeat": repeat})


def _reference_pipeline_pass(engine, stages, model, phase, batch, seq_len, kv_len, wd="fp16", kd="fp16"):
    """``pipeline_pass`` before its per-engine step cache: every part looked up on every call."""
    from hetsim.models.memory import hidden_bytes
    from hetsim.models.sharding import embed_ops, head_ops, layer_blocks

    message = hidden_bytes(model, batch, seq_len)
    for i, st in enumerate(stages):
        tp = len(st.devices)
        if i == 0:
            yield engine.lockstep(st.devices, [embed_ops(model, batch, seq_len, wd)], label="embed")
        blocks = layer_blocks(model, phase, batch, seq_len, kv_len, tp, wd, kd)
        work = [blocks.attention, message, blocks.mlp, message]
        yield engine.lockstep(st.devices, work, repeat=st.layers, label=f"stage{i}")
        if i == len(stages) - 1:
            head = head_ops(model, phase, batch, seq_len, tp, wd)
            yield engine.lockstep(st.devices, [head], label="lm_head")
        else:
            yield engine.send(st.devices[0], stages[i + 1].devices[0], message, label="pp-send")


def _reference_passes(monkeypatch):
    from hetsim.serving import batching
    from hetsim.strategies import gpu_only

    monkeypatch.setattr(Engine, "lockstep", _reference_lockstep)
    monkeypatch.setattr(batching, "pipeline_pass", _reference_pipeline_pass)
    monkeypatch.setattr(gpu_only, "pipeline_pass", _reference_pipeline_pass)


@pytest.mark.parametrize(
    ("model", "rig", "args"),
    [
        ("llama2-70b", "hexgen-full-budget", dict(rate=2.0, num_requests=60, seed=1)),
        ("llama2-7b", "hexgen-half-budget", dict(rate=1.0, num_requests=30, slo_scale=5.0, mode="hexgen")),
    ],
)
def test_serving_step_cache_is_the_step_by_step_path_to_the_bit(monkeypatch, model, rig, args):
    fast = api.serve(model, rig, **args)
    _reference_passes(monkeypatch)
    assert repr(api.serve(model, rig, **args)) == repr(fast)
    assert fast["feasible"]


def test_pipelines_and_lockstep_groups_book_as_before(monkeypatch, tmp_path):
    p = api.problem("llama2-70b", "mixed-lab", 4, 128, 8)
    names = ["gpu-only", "hexgen", "cpu-tp", "accelerate", "layer-offload"]
    fast = api.compare(p, names, trace_path=str(tmp_path / "fast.json"))
    _reference_passes(monkeypatch)
    assert _bits(api.compare(p, names, trace_path=str(tmp_path / "ref.json"))) == _bits(fast)
    assert (tmp_path / "fast.json").read_bytes() == (tmp_path / "ref.json").read_bytes()


def test_free_batch_searches_simulate_each_estimate_once_and_find_the_same(monkeypatch):
    import importlib
    from contextlib import nullcontext

    from hetsim.planner import ranking

    search = importlib.import_module("hetsim.planner.search")

    calls: list[tuple] = []
    simulate_estimate = ranking._estimate

    def counted(strategy, plan, rig, model, wl):
        calls.append((strategy.name, repr(plan), wl))
        return simulate_estimate(strategy, plan, rig, model, wl)

    monkeypatch.setattr(ranking, "_estimate", counted)
    p = api.problem("llama2-70b", "mixed-lab", None, 256, 16)
    names = ["hetegen", "gpu-only", "cpu-tp"]
    remembered = api.compare(p, names)
    assert len(calls) == len(set(calls)) > 0  # no estimate simulated twice within a search
    assert ranking._ESTIMATES.entries is None  # nothing kept after the search
    once = len(calls)
    monkeypatch.setattr(search, "remembering", nullcontext)
    assert _bits(api.compare(p, names)) == _bits(remembered)
    assert len(calls) - once > once  # without the memo, some estimates ran again


def test_a_catalogue_problem_loads_neither_numpy_nor_pandas():
    """Only measured kernel tables need numpy and pandas: the parent of a compare on a catalogue rig
    (and every command's start) does without them (a fresh interpreter, so nothing is loaded yet)."""
    import subprocess
    import sys

    code = (
        "import sys; from hetsim import api; import hetsim.planner.flexgen_lp; "
        "api.problem('llama2-70b', 'mixed-lab', None, 512, 32); "
        "print(sorted(m for m in ('numpy', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("model", "rig", "strategy"),
    [("llama2-70b", "mixed-lab", "layer-offload"), ("opt-13b", "hetegen-a10", "hetegen")],
)
def test_remembered_runs_change_no_result_and_the_final_run_reuses_the_estimate(
    monkeypatch, model, rig, strategy
):
    """``best_result`` remembers the search's runs: the final run's fast-forward head is the run that
    estimated the chosen plan (one run fewer), and every field is the same as without the memo."""
    import contextlib

    from hetsim.sim import run as run_mod
    from hetsim.strategies.base import get_strategy

    calls = []
    real = run_mod._run_steps
    monkeypatch.setattr(run_mod, "_run_steps", lambda *a: calls.append(a[4]) or real(*a))
    p = api.problem(model, rig, None, 512, 32)
    with_memo = api.best_result(get_strategy(strategy), p, "throughput")
    remembered = len(calls)
    calls.clear()
    monkeypatch.setattr(api, "remembering_runs", contextlib.nullcontext)
    without = api.best_result(get_strategy(strategy), p, "throughput")
    assert _bits([with_memo]) == _bits([without])
    assert "fast_forward_sample" in with_memo.extras
    assert remembered == len(calls) - 1


def test_compare_runs_the_cp_sat_searches_in_one_worker_job():
    """HeteGen and HexGen load CP-SAT: one job of compare's workers runs both, so it loads once."""
    from hetsim.strategies.base import all_strategies

    chosen = all_strategies()
    jobs = [[chosen[i].name for i in job] for job in api._worker_jobs(chosen, search=True)]
    assert sorted(n for job in jobs for n in job) == sorted(s.name for s in chosen)
    assert sorted(next(job for job in jobs if "hexgen" in job)) == ["hetegen", "hexgen"]
    assert all(len(job) == 1 for job in jobs if "hexgen" not in job)
    weights = [sum(get_weight(n) for n in job) for job in jobs]
    assert weights == sorted(weights, reverse=True)  # costliest first
    assert all(len(job) == 1 for job in api._worker_jobs(chosen, search=False))  # --no-search: no solver


def get_weight(name: str) -> int:
    from hetsim.strategies.base import get_strategy

    return get_strategy(name).search_weight


def test_compare_workers_collect_rarely_and_the_parent_heap_is_unfrozen_after_the_fork(monkeypatch):
    """Forked workers inherit a frozen heap and a high young-collection threshold; the parent's
    collector is as it was afterwards, and a caller's own frozen objects stay frozen."""
    import gc
    from dataclasses import replace

    real = api.best_result

    def noting_gc(*a, **k):  # runs in the forked worker: its collector's state comes back in extras
        r = real(*a, **k)
        return replace(r, extras={**r.extras, "gc": (gc.get_threshold()[0], gc.get_freeze_count())})

    monkeypatch.setattr(api, "best_result", noting_gc)
    p = api.problem("llama2-7b", "mixed-lab", 1, 128, 8)
    before = gc.get_threshold()
    results = api.compare(p, ["gpu-only", "layer-offload"], "throughput", workers=2)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert "_graph" not in vars(p.rig)  # the workers route, each with a graph of its own: not built here
    assert len(results) == 2
    assert all(r.extras["gc"][0] == WORKER_GC_THRESHOLD and r.extras["gc"][1] > 0 for r in results)
    mine = [object()]  # a caller's frozen heap is left alone (checked by an object of its own: the
    gc.freeze()  # frozen count itself drops whenever a frozen object is freed, e.g. an lru_cache entry)
    try:
        api.compare(p, ["gpu-only", "layer-offload"], "throughput", workers=2)
        assert gc.get_freeze_count() > 0
        assert not any(o is mine for o in gc.get_objects())  # still frozen: no generation holds it
    finally:
        gc.unfreeze()
    assert any(o is mine for o in gc.get_objects())  # the check above can see it when unfrozen


@pytest.mark.parametrize(
    ("model", "dtype"), [("llama2-70b", None), ("qwen3-30b-a3b", None), ("llama2-13b", "q4_k_m")]
)
def test_layer_offload_sums_layer_bytes_worked_out_once_a_kind_and_changes_no_result(
    monkeypatch, model, dtype
):
    """layer-offload's footprints and fitting read each layer kind's bytes once (``_layer_sizes``),
    not once a layer at every batch the ladder tries (~4,500 sums of ~10 tensors a compare): the
    free-batch search gives the same result to the bit as summing every layer again."""
    from hetsim.models.weights import layer_weight_bytes
    from hetsim.strategies import layer_offload as lo

    p = api.problem(model, "mixed-lab", None, 128, 8, weight_dtype=dtype)
    calls = []

    def counted(*args, **kw):
        calls.append(args)
        return layer_weight_bytes(*args, **kw)

    monkeypatch.setattr(lo, "layer_weight_bytes", counted)
    lo._layer_sizes.cache_clear()
    fast = api.compare(p, ["layer-offload"])
    kinds = len({p.model.layer_is_moe(i) for i in range(p.model.layers)})
    dtypes = len({a[1] for a in calls})
    assert 0 < len(calls) <= kinds * dtypes

    def every_layer(model, dtype):  # each layer's bytes summed anew, as before the cache
        return tuple(
            layer_weight_bytes(model, lo.DTYPES[dtype], model.layer_is_moe(i)) for i in range(model.layers)
        )

    monkeypatch.setattr(lo, "_layer_sizes", every_layer)
    assert _bits(api.compare(p, ["layer-offload"])) == _bits(fast)
    assert fast[0].feasible


def test_layer_offload_layer_sizes_are_each_layers_own_bytes_in_every_model_and_dtype():
    """``_layer_sizes`` keeps each layer's own kind: a model whose first layers are dense and the rest
    route to experts (DeepSeek-V3's 3 dense layers) has two sizes, in their layers' places, for every
    registered model and weight dtype (the parametrised test above has no such model)."""
    from hetsim.models.registry import get_model, list_models
    from hetsim.models.spec import DTYPES
    from hetsim.models.weights import layer_weight_bytes
    from hetsim.strategies import layer_offload as lo

    mixed = 0
    for name in list_models():
        model = get_model(name)
        for dtype in DTYPES:
            want = tuple(
                layer_weight_bytes(model, DTYPES[dtype], model.layer_is_moe(i)) for i in range(model.layers)
            )
            assert lo._layer_sizes(model, dtype) == want, (name, dtype)
            mixed += len(set(want)) > 1
    assert mixed  # at least one model mixes dense and expert layers


def test_deepspeed_works_out_a_models_block_and_gather_bytes_once():
    """ZeRO-Inference's per-block fetched and all-gathered bytes are worked out once per model (every
    run's schedule asks for them; the gather walk is ~1 ms), the same numbers as a fresh walk."""
    from hetsim.models.registry import get_model
    from hetsim.strategies.deepspeed import MIN_AIO_BYTES, fetches

    f = fetches(get_model("llama2-13b"))
    assert f.block_bytes() is f.block_bytes() and f.gather_bytes(True) is f.gather_bytes(True)
    walked = type(f)
    for least in (0, MIN_AIO_BYTES):
        assert walked.block_bytes.__wrapped__(f, least) == f.block_bytes(least)
    for prefetch in (False, True):
        assert walked.gather_bytes.__wrapped__(f, prefetch) == f.gather_bytes(prefetch)


def test_a_layers_whole_is_one_tuple_for_the_engines_look_up_by_identity():
    """``LayerBlocks.whole`` is made once: a schedule that books it every step (DeepSpeed, Accelerate)
    then finds its cost by the tuple's identity instead of hashing its ops each time."""
    from hetsim.models import get_model
    from hetsim.models.sharding import layer_blocks

    blocks = layer_blocks(get_model("llama2-13b"), "decode", 2, 1, 64)
    assert blocks.whole is blocks.whole
    assert blocks.whole == blocks.attention + blocks.mlp


@pytest.mark.parametrize("strategies", [["deepspeed", "accelerate"], ["gpu-only", "cpu-tp"]])
def test_a_whole_made_each_time_changes_no_result(monkeypatch, strategies):
    from hetsim.models.sharding import LayerBlocks

    p = api.problem("llama2-13b", "mixed-lab", 2, 128, 8)
    kept = api.compare(p, strategies)
    monkeypatch.setattr(LayerBlocks, "whole", property(lambda self: self.attention + self.mlp))
    assert _bits(api.compare(p, strategies)) == _bits(kept)
    assert any(r.feasible for r in kept)


def test_counted_keeps_an_op_that_has_its_count():
    """An op whose kernel count is the default already is not rebuilt; one that needs another count
    is (with it), and the two ops are equal to what a rebuild of each gives."""
    import dataclasses

    from hetsim.models import get_model
    from hetsim.models.kernels import counted
    from hetsim.models.spec import Op, OpKind

    spec = get_model("llama2-7b")
    v = Op("v_proj", OpKind.MATMUL, 0, 2.0, 8.0, 4.0, 4.0, module="v_proj")
    q = dataclasses.replace(v, name="q_proj", module="q_proj")
    out_v, out_q = counted(spec, (v, q))
    assert out_v is v
    assert out_q == dataclasses.replace(q, kernels=6) and q.kernels == 1
