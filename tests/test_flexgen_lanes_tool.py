"""tools/flexgen_lanes.py on bad input: one line naming what is wrong, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "flexgen_lanes.py"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["opt-30b", "flexgen-t4", "512", "1"], "GEN one above 1"),  # a decode step divides by GEN - 1
        (["opt-30b", "flexgen-t4", "x", "32"], "PROMPT must be a positive integer"),
        (["opt-30x"], "unknown model 'opt-30x'"),
        (["opt-30b", "cputp-4x8575c"], "the search found no plan: not applicable: the rig has no GPU"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says):
    r = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and says in r.stderr
