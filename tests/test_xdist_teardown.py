"""The test suite's own teardown under xdist (tests/conftest.py's ``pytest_sessionfinish``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")
pytest.importorskip("hypothesis")

# A worker whose teardown outlasts execnet's 5 s (full collections, as of a big test heap under load),
# hypothesis's gc callback installed by a property test
_CONFTEST = """
import gc, importlib.util, time
import pytest
spec = importlib.util.spec_from_file_location("hetsim_conftest", {conftest!r})
hetsim_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hetsim_conftest)
if hasattr(hetsim_conftest, "pytest_sessionfinish"):  # the hook under test, where it is
    pytest_sessionfinish = hetsim_conftest.pytest_sessionfinish

@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        heap = [[i] for i in range(300_000)]
        end = time.monotonic() + 7
        while time.monotonic() < end:
            gc.collect()
"""

_TEST = """
from hypothesis import given, strategies as st

@given(st.integers())
def test_property(x):
    assert x == x
"""


@pytest.mark.slow
def test_a_slow_worker_teardown_gets_no_keyboard_interrupt(tmp_path):
    """execnet SIGINTs a worker still busy 5 s after it was told to stop; the interrupt landed in
    hypothesis's gc callback and the suite ended with a PytestUnraisableExceptionWarning."""
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(_CONFTEST.format(conftest=str(conftest)))
    (tmp_path / "test_p.py").write_text(_TEST)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "1",
                           str(tmp_path / "test_p.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "KeyboardInterrupt" not in proc.stdout + proc.stderr, proc.stdout[-2000:]
