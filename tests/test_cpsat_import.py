"""``hetsim.planner.cpsat`` loads CP-SAT without pandas, and changes nothing else (fresh interpreters:
what is loaded matters)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


SOLVE = (
    "m = cp_model.CpModel(); x = m.new_int_var(0, 10, 'x'); y = m.new_int_var(0, 10, 'y'); "
    "m.add(3 * x + 2 * y <= 17); m.maximize(2 * x + 3 * y); s = cp_model.CpSolver(); "
    "s.parameters.num_workers = 1; st = s.solve(m); "
    "print(st == cp_model.OPTIMAL, s.value(x), s.value(y), s.objective_value)"
)


def test_cp_sat_loads_without_pandas_and_pandas_loads_after():
    out = _run(
        "import sys; from hetsim.planner.cpsat import cp_model; "
        "print('pandas' in sys.modules, 'ortools.sat.python.cp_model' in sys.modules); "
        + SOLVE
        + "; import pandas; print(pandas.DataFrame({'a': [1, 2]})['a'].sum(), "
        "sys.modules['pandas'] is pandas, hasattr(pandas, 'read_parquet'))"
    )
    loaded, solved, after = out.split("\n")[:3]
    assert (loaded, after) == ("False True", "3 True True")
    assert solved == "True 0 8 24.0"  # max 2x + 3y, 3x + 2y <= 17


def test_the_same_solution_as_the_ordinary_import():
    plain = _run("from ortools.sat.python import cp_model; " + SOLVE)
    assert _run("from hetsim.planner.cpsat import cp_model; " + SOLVE) == plain


def test_with_pandas_already_loaded_cp_sat_gets_the_real_one():
    out = _run("import pandas; from hetsim.planner.cpsat import cp_model; print(cp_model.pd is pandas)")
    assert out.strip() == "True"


def test_a_stand_in_that_is_not_enough_falls_back_to_the_ordinary_import():
    """An OR-Tools that needs more of pandas at import (here: a cp_model that reads pd.DataFrame) still
    loads, through the real pandas, and leaves no stand-in behind."""
    code = (
        "import sys, importlib, types\n"
        "real = importlib.import_module\n"
        "def fussy(name, *a, **k):\n"
        "    mod = real(name, *a, **k)\n"
        "    if name == 'ortools.sat.python.cp_model': mod.pd.DataFrame\n"
        "    return mod\n"
        "importlib.import_module = fussy\n"
        "from hetsim.planner.cpsat import cp_model\n"
        "print(cp_model.pd is sys.modules['pandas'], hasattr(sys.modules['pandas'], 'DataFrame'))\n"
    )
    assert _run(code).strip() == "True True"


def test_with_another_thread_alive_cp_sat_imports_the_ordinary_way():
    """A thread importing pandas while the stand-in is in ``sys.modules`` would keep the stand-in
    (no DataFrame, no read_csv): with other threads alive, no stand-in is put there."""
    out = _run(
        "import sys, threading; stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()\n"
        "from hetsim.planner.cpsat import cp_model\n"
        "stop.set(); t.join()\n"
        "print('pandas' in sys.modules, cp_model.pd is sys.modules.get('pandas'), "
        "hasattr(cp_model.pd, 'DataFrame'))\n"
    )
    assert out.strip() == "True True True"


def test_hetegen_loads_cp_sat_only_to_solve_a_knapsack():
    out = _run(
        "import sys; from hetsim.planner import hetegen_knapsack as k; loaded = lambda: "
        "'ortools.sat.python.cp_model' in sys.modules; print(loaded()); "
        "items = [k.Item('a', 3, 10, 1.0, 0), k.Item('b', 2, 4, 0.5, 1)]; "
        "print(k.solve_resident(items, 0), loaded()); print(k.solve_resident(items, 25), loaded())"
    )
    assert out.split("\n")[:3] == ["False", "{'a': 0, 'b': 0} False", "{'a': 2, 'b': 1} True"]


def test_the_lean_model_solves_as_cp_sat_own_and_lacks_only_the_pre_pep8_aliases():
    from hetsim.planner.cpsat import CpModel, cp_model

    def solve(model: cp_model.CpModel) -> tuple:
        x, y = model.new_int_var(0, 10, "x"), model.new_int_var(0, 10, "y")
        b = model.new_bool_var("b")
        model.add(3 * x + 2 * y <= 17)
        model.add(x >= 2).only_enforce_if(b)
        model.add_exactly_one([b])
        model.maximize(2 * x + 3 * y)
        s = cp_model.CpSolver()
        s.parameters.num_workers = 1
        status = s.solve(model)
        return status, s.value(x), s.value(y), s.objective_value, str(model.proto)

    lean, own = CpModel(), cp_model.CpModel()
    assert solve(lean) == solve(own)
    assert hasattr(own, "NewIntVar") and not hasattr(lean, "NewIntVar")


_SOLVE_THEN_CTRL_C = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a sweep's pool worker sets it
from ortools.sat.python import cp_model
from hetsim.planner.hetegen_knapsack import Item, solve_resident
from hetsim.planner.hexgen_cpsat import _solver

if sys.argv[1] == "hexgen":
    m = cp_model.CpModel()
    x = m.new_int_var(0, 3, "x")
    m.maximize(x)
    assert _solver(1.0).solve(m) == cp_model.OPTIMAL
else:
    items = [Item("q_proj", 2, 10, 1e-3, 10), Item("fc1", 1, 30, 2e-3, 30)]
    assert solve_resident(items, 40.0)["q_proj"] >= 0
os.kill(os.getpid(), signal.SIGINT)
print("alive")
"""


@pytest.mark.parametrize("which", ["hexgen", "knapsack"])
def test_a_cp_sat_solve_leaves_ctrl_c_to_the_process(which):
    """OR-Tools' CP-SAT catches SIGINT during a solve and leaves it at its default action after
    (``catch_sigint_signal``, on by default): a process that ignored Ctrl-C then died of it."""
    proc = subprocess.run([sys.executable, "-c", _SOLVE_THEN_CTRL_C, which], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.split() == ["alive"], (proc.returncode, proc.stderr[-1500:])


def test_every_cp_sat_solve_is_limited_by_work_not_by_the_clock(monkeypatch):
    """A wall-clock limit lets a loaded machine stop a solve early and keep a different answer (other
    bytes for the same inputs); a deterministic-time limit counts work. Every solve site: HeteGen's
    knapsack (both solves) and HexGen's inner and outer levels, on a mixed rig and a budget."""
    import math

    from ortools.sat.python import cp_model

    from hetsim import api

    seen: list[tuple[float, float, str]] = []
    real = cp_model.CpSolver.solve

    def solve(self, model, *args, **kwargs):
        status = real(self, model, *args, **kwargs)
        seen.append((self.parameters.max_time_in_seconds, self.parameters.max_deterministic_time,
                     self.status_name(status)))  # fmt: skip
        return status

    monkeypatch.setattr(cp_model.CpSolver, "solve", solve)
    p = api.problem("llama2-7b", "mixed-lab", 1, 128, 8, 6e9)
    results = api.compare(p, ["hetegen", "hexgen"], "latency", workers=1)
    assert all(r.feasible for r in results)
    assert len(seen) >= 4  # two knapsack solves, HexGen's inner and outer levels
    assert all(math.isinf(wall) and math.isfinite(work) for wall, work, _ in seen), seen
    assert "OPTIMAL" in {s for _, _, s in seen}
