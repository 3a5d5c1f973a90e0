"""OR-Tools' CP-SAT module, loaded without pandas when nothing has loaded pandas yet.

``ortools.sat.python.cp_model`` imports pandas (~0.3 s of CPU, three quarters of its import) only to
offer pandas-indexed variable sets (``new_int_var_series`` and the like) and to name ``pd.Index`` and
``pd.Series`` in its type hints. hetsim never calls those, so when pandas is not loaded, a stand-in
module whose ``Index`` and ``Series`` are empty classes takes its place for the duration of the
import, and is removed at once: a later ``import pandas`` loads the real one. Models, solves and
results are CP-SAT's own either way; only cp_model's pandas helpers would not work (they are not
used). Should a future OR-Tools need more of pandas at import, the stand-in fails and the module is
imported the ordinary way. Another thread importing pandas during those ~0.1 s would get the stand-in
for good (a Dask worker runs sweep points in threads; a user's program may have threads): with more
than one thread alive the module is imported the ordinary way.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from types import ModuleType


def _load() -> ModuleType:
    name = "ortools.sat.python.cp_model"
    if name in sys.modules or "pandas" in sys.modules or threading.active_count() > 1:
        return importlib.import_module(name)
    stand_in = types.ModuleType("pandas", "hetsim's stand-in while CP-SAT loads (hetsim.planner.cpsat)")
    stand_in.Index = type("Index", (), {})  # type: ignore[attr-defined]
    stand_in.Series = type("Series", (), {})  # type: ignore[attr-defined]
    sys.modules["pandas"] = stand_in
    try:
        return importlib.import_module(name)
    except Exception:  # any failure under the stand-in: import as OR-Tools intends
        sys.modules.pop(name, None)
    finally:
        if sys.modules.get("pandas") is stand_in:
            del sys.modules["pandas"]
    return importlib.import_module(name)


cp_model = _load()


class CpModel(cp_model.CpModel):  # type: ignore[misc, name-defined]
    """CP-SAT's model without the pre-PEP 8 aliases (``NewIntVar`` for ``new_int_var``...) that its
    constructor sets on every instance, ~0.7 ms each (HexGen's search builds ~20 per compare).
    Models, solves and results are the same; only those deprecated names are missing."""

    def _add_pre_pep8_methods(self) -> None:
        pass
