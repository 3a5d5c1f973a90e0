"""``textfiles.write_text_atomic`` (``plan --out``, Chrome traces) does what a plain ``open(path, "w")``
did, but whole: through a symlink, keeping an existing file's mode, errors naming the user's path."""

from __future__ import annotations

import json
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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_a_path_that_is_no_regular_file_is_written_in_place(tmp_path, capsys):
    """``--out /dev/null`` or ``/dev/stdout``, or a named pipe a reader waits on: written in place.
    Before, the temporary file was renamed over it: the pipe became a regular file and its reader
    got nothing (run as root, ``--out /dev/null`` put a regular file in /dev/null's place)."""
    from hetsim.cli import main

    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader there first, as `cat plan.json &`
    try:
        code = main([*PLAN_ARGS, "--batch", "1", "--prompt-len", "16", "--gen-len", "2", "--out", str(fifo)])
        text = os.read(reader, 1 << 20).decode()  # the plan is far below the pipe's 64 KiB buffer
    finally:
        os.close(reader)
    assert code == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(text)["strategy"] == "gpu-only"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


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


# A writer of result files in its own process (validate's, tools', paper_figs' scripts): a CSV of
# ``rows`` rows, flushed row by row so that writers running at once really interleave their writes.
_CSV_WRITER = """
import csv, sys
from hetsim.textfiles import open_whole

path, tag, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open_whole(path, "w", newline="") as f:
    w = csv.writer(f)
    for i in range(rows):
        w.writerow([tag, i, tag * 100])
        f.flush()
"""


def test_concurrent_processes_writing_one_result_file_leave_one_whole(tmp_path):
    """Eight runs of a script writing one CSV at once: it is one run's file, whole (a plain open would
    leave rows of several, or a truncated tail); no temporary file is left."""
    import subprocess

    out = tmp_path / "points.csv"
    tags = "abcdefgh"
    procs = [
        subprocess.Popen([sys.executable, "-c", _CSV_WRITER, str(out), t, str(2000 + i)])
        for i, t in enumerate(tags)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(tags)
    lines = out.read_text().splitlines()
    tag = lines[0][0]
    assert lines == [f"{tag},{i},{tag * 100}" for i in range(2000 + tags.index(tag))]
    assert [p.name for p in tmp_path.iterdir()] == ["points.csv"]


def test_an_interrupted_validate_report_keeps_the_old_files_whole(tmp_path, monkeypatch):
    """Ctrl-C while ``validate`` saves its PNG (or while any figure is written through
    ``savefig_whole``): the previous PNG stays as it was, no temporary file is left. Before, the
    PNG was opened in place, truncated and left half written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from validate import report

    run = {"model": {"name": "m", "hidden": 64, "layers": 2}, "label": "r"}
    run |= {"measured": {"ttft_s": 0.1, "tpot_s": 0.01}, "predicted": {"ttft_s": 0.11, "tpot_s": 0.012}}
    doc = {"runs": [run], "environment": {"cpu": "test"}}
    json_path, png = report.save(doc, tmp_path)
    before = {p.name: p.read_bytes() for p in (json_path, png)}

    def interrupted(self, fname, **kwargs):
        f = fname if hasattr(fname, "write") else open(fname, "wb")  # noqa: SIM115
        f.write(b"\x89PNG half")
        f.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.save({**doc, "environment": {"cpu": "other"}}, tmp_path)
    assert png.read_bytes() == before[png.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="POSIX symlinks")
def test_a_sweep_figure_redrawn_through_a_symlink_writes_the_linked_file(tmp_path):
    """The sweep's figures are written by ``savefig_whole`` (one home with ``open_whole``): a figure
    linked from elsewhere stays a link and its file gets the new drawing; an existing file keeps its
    mode. Before, the sweep's own copy (``plots._save_whole``) renamed a new file over the link, with
    the umask's mode."""
    import matplotlib.pyplot as plt

    from hetsim.sweep.plots import _save

    kept = tmp_path / "kept.png"
    kept.write_bytes(b"old")
    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / "fig.png").symlink_to(kept)
    (folder / "fig.svg").write_bytes(b"old")
    os.chmod(folder / "fig.svg", 0o600)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png, svg = _save(fig, folder, "fig")
    assert png.is_symlink() and kept.read_bytes().startswith(b"\x89PNG")
    assert svg.read_text().startswith("<?xml") and stat.S_IMODE(os.stat(svg).st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["fig.png", "fig.svg"]
