"""``textfiles.write_text_atomic`` (``plan --out``, Chrome traces) does what a plain ``open(path, "w")``
did, but whole: through a symlink, keeping an existing file's mode, errors naming the user's path."""

from __future__ import annotations

import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from hetsim.textfiles import write_text_atomic

PLAN_ARGS = ["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--strategy", "gpu-only"]


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="POSIX symlinks")
def test_a_symlinked_path_writes_the_file_it_points_to(tmp_path):
    """A symlink (a plan kept elsewhere, linked here) stays a link; its file gets the text. Before,
    the rename replaced the link with a file and the linked plan kept its old text."""
    target = tmp_path / "plans" / "plan.json"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "plan.json"
    link.symlink_to(os.path.join("plans", "plan.json"))  # relative, as links usually are
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["plan.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_an_existing_file_keeps_its_mode(tmp_path):
    """A plain open truncates the file and keeps its mode: a private plan (0600) stays private."""
    out = tmp_path / "plan.json"
    out.write_text("old\n")
    out.chmod(0o600)
    write_text_atomic(out, "new\n")
    assert out.read_text() == "new\n" and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_errors_name_the_path_given_not_the_temporary_file(tmp_path, capsys):
    """``--out`` in a folder that does not exist, or on a folder: one line naming that path, exit 2
    (before: the hidden temporary file's name, '.plan.json.<pid>.<hex>.tmp')."""
    from hetsim.cli import main

    missing = tmp_path / "nowhere" / "plan.json"
    assert main([*PLAN_ARGS, "--out", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: --out {missing}: No such file or directory\n"
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main([*PLAN_ARGS, "--out", str(folder)]) == 2
    assert capsys.readouterr().err == f"error: --out {folder}: Is a directory\n"
    assert [p.name for p in tmp_path.iterdir()] == ["folder"] and not list(folder.iterdir())


def test_concurrent_writers_leave_one_whole_text(tmp_path):
    """Many writers on one path: the file is always one of their texts, whole; no temporary left."""
    out = tmp_path / "plan.json"
    texts = [f"{i}\n" * (20_000 + i) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: write_text_atomic(out, t), texts))
    assert out.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
