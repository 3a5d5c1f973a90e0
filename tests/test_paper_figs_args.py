"""paper_figs scripts take one OUT_DIR: a flag is help or a refusal, never a folder's name."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["all", "cputp", "flexgen", "hetegen", "ktransformers"]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = ROOT / "paper_figs" / f"{script}.py"
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_docstring_and_writes_nothing(script, tmp_path):
    r = run(script, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "paper_figs" in r.stdout or "OUT_DIR" in r.stdout or len(r.stdout) > 40
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_unknown_flag_or_a_second_argument_is_one_line_and_exit_2(script, tmp_path):
    for args in (("--out", "x"), ("a", "b")):
        r = run(script, *args, cwd=tmp_path)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1 and "usage" in r.stderr
        assert list(tmp_path.iterdir()) == []
