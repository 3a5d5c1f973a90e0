"""Caches that make the engine and the planners faster change no number: each run here is compared
to the bit with the same run with the cache switched off."""

from __future__ import annotations

import pytest

from hetsim import api
from hetsim.sim import engine as engine_mod
from hetsim.sim.engine import Engine


def _uncached_lockstep(self, devices, work, repeat):
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
    monkeypatch.setattr(Engine, "_lockstep_fixed", _uncached_lockstep)
    assert _bits(api.compare(p, strategies)) == _bits(cached)
    assert any(r.feasible for r in cached)


def test_serving_is_bit_identical_without_the_lockstep_cache(monkeypatch):
    args = dict(rate=1.0, num_requests=30, slo_scale=5.0, seed=3)
    cached = api.serve("llama2-7b", "hexgen-half-budget", **args)
    monkeypatch.setattr(Engine, "_lockstep_fixed", _uncached_lockstep)
    assert repr(api.serve("llama2-7b", "hexgen-half-budget", **args)) == repr(cached)
    assert cached["feasible"]


def test_lockstep_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(engine_mod, "_LOCKSTEP_CACHE_MAX", 2)
    p = api.problem("llama2-70b", "hexgen-homogeneous", 1, 64, 6)
    bounded = api.compare(p, ["hexgen"], search=False)
    monkeypatch.setattr(Engine, "_lockstep_fixed", _uncached_lockstep)
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
    return {}, {}


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


def test_preload_imports_the_named_solver_searches_but_not_cp_sat(monkeypatch):
    import sys

    from hetsim.planner import preload

    for module in ("hetsim.planner.hetegen_knapsack", "hetsim.planner.flexgen_lp"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    preload(["flexgen", "gpu-only"])
    assert "hetsim.planner.flexgen_lp" in sys.modules
    assert "hetsim.planner.hetegen_knapsack" not in sys.modules
    preload(["hetegen"])  # CP-SAT: left to the worker that runs it
    assert "hetsim.planner.hetegen_knapsack" not in sys.modules
