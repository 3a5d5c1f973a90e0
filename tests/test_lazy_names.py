"""Names imported on first use (module ``__getattr__``) behave as the eager ones did: the same
objects whatever was imported before, and documents that pickle."""

from __future__ import annotations

import subprocess
import sys


def _fresh(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_hardware_catalog_is_the_loader_function_even_after_its_submodule_was_imported():
    """``hetsim.hardware.catalog`` (in ``__all__``) is the loader's function, also when the
    ``hetsim.hardware.catalog`` module was imported first (as ``hetsim.sweep.spec`` does): importing
    a submodule binds its name on the package, which then hid the function."""
    out = _fresh(
        "import hetsim.hardware.catalog\n"
        "from hetsim.hardware import catalog\n"
        "from hetsim.hardware.loader import catalog as function\n"
        "print(catalog is function)\n"
    )
    assert out == "True"


def test_plan_documents_pickle():
    out = _fresh(
        "import pickle\n"
        "from hetsim.api import PlanDocument\n"
        "doc = PlanDocument(strategy='gpu-only', model='m', hardware='h',\n"
        "                   workload={'batch': 1, 'prompt_len': 2, 'gen_len': 3}, params={})\n"
        "back = pickle.loads(pickle.dumps(doc))\n"
        "print(back == doc, type(back) is PlanDocument, type(back.workload) is type(doc.workload))\n"
    )
    assert out == "True True True"


def test_dir_lists_the_lazy_names():
    """``dir()`` (completion, ``help``) lists the names imported on first use, with the eager ones,
    without importing them (pydantic, the rig loader)."""
    out = _fresh(
        "import sys, hetsim.api, hetsim.hardware\n"
        "a, h = dir(hetsim.api), dir(hetsim.hardware)\n"
        "print('PlanDocument' in a, 'compare' in a, all(n in h for n in hetsim.hardware.__all__),\n"
        "      'pydantic' in sys.modules or 'hetsim.hardware.loader' in sys.modules)\n"
    )
    assert out == "True True True False"
