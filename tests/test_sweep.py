"""Sweeps: specs, hardware overrides, local and Dask runs, resume after interruption, failures, plots."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from hetsim.errors import InputError
from hetsim.hardware import load_rig
from hetsim.sweep.api import run_sweep
from hetsim.sweep.grid import apply_hardware, expand, knob_columns, point_id
from hetsim.sweep.plots import pareto_front
from hetsim.sweep.runner import execute
from hetsim.sweep.spec import load_spec
from hetsim.sweep.store import Store, schema_for

SMALL = """
name: tiny
base: {batch: 1, prompt_len: 64, gen_len: 4}
grids:
  - {model: [llama2-7b], rig: [mixed-lab], strategy: [cpu-tp, gpu-only, accelerate], gpu_mem_gb: [8, 24]}
  - {model: [llama2-7b], rig: [mixed-lab], strategy: [gpu-only], pcie: [pcie3-x16]}
plots:
  - {kind: heatmap, x: gpu_mem_gb, y: strategy, metric: e2e_s}
  - {kind: heatmap, x: gpu_mem_gb, y: batch}
  - {kind: line, x: gpu_mem_gb, metric: throughput_tok_s}
  - {kind: pareto, x: e2e_s, y: throughput_tok_s}
"""


def _spec(tmp_path: Path, text: str = SMALL, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _content(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("point_id").reset_index(drop=True)


# ---- hardware overrides ---------------------------------------------------------------------
def test_cpu_sockets_drop_reattaches_gpus_and_scales_host_memory():
    rig = load_rig("mixed-lab")
    one = apply_hardware(rig, {"cpu_sockets": 1})
    assert [d.name for d in one.cpus()] == ["n0.cpu0", "n1.cpu0"]
    assert not any(lk.kind == "upi" for lk in one.links.values())
    assert one.links["n0.pcie.gpu1"].b == "n0.cpu0"  # GPU1 hung off the dropped socket
    assert one.host_cpu("n0.gpu1") == "n0.cpu0"
    assert one.route("n0.gpu1", "n1.gpu0").hops  # still connected across the network
    assert one.nodes["n0"].host_mem_bytes == rig.nodes["n0"].host_mem_bytes / 2
    assert len(rig.cpus()) == 4 and rig.links["n0.pcie.gpu1"].b == "n0.cpu1"  # input untouched


def test_pcie_network_and_memory_overrides():
    rig = load_rig("mixed-lab")
    rig.route("n0.gpu0", "n0.cpu0")  # fill the original's route cache
    new = apply_hardware(rig, {"pcie": "pcie3-x16", "net_gbps": 10, "gpu_mem_gb": 16})
    pcie = [lk for lk in new.links.values() if lk.kind == "pcie"]
    assert pcie and all(lk.bw == pytest.approx(pcie[0].bw) for lk in pcie)
    assert pcie[0].bw < rig.links["n0.pcie.gpu0"].bw
    assert new.route("n0.gpu0", "n0.cpu0").bw == pytest.approx(pcie[0].bw)  # no stale cached route
    assert new.links["n0.nic"].bw == pytest.approx(10e9 / 8)
    assert max(g.mem_bytes for g in new.gpus()) == pytest.approx(16e9)
    scaled = apply_hardware(rig, {"bw_scale": {"pcie": 0.5}})
    assert scaled.links["n0.pcie.gpu0"].bw == pytest.approx(rig.links["n0.pcie.gpu0"].bw / 2)


# ---- spec and grid --------------------------------------------------------------------------
def test_grid_expansion_is_deterministic_and_deduplicated(tmp_path):
    spec = load_spec(_spec(tmp_path))
    points = expand(spec)
    assert len(points) == 3 * 2 + 1
    assert len({p["point_id"] for p in points}) == len(points)
    assert [p["point_id"] for p in expand(spec)] == [p["point_id"] for p in points]
    p = points[0]
    assert p["point_id"] == point_id({k: v for k, v in p.items() if k != "point_id"})
    assert knob_columns(points)[-2:] == ["gpu_mem_gb", "pcie"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\ngrids: [{model: [opt-6.7b], rig: [mixed-lab], gpu_mem: [8]}]\n", "grids"),
        ("name: x\ngrids: [{model: [no-such-model], rig: [mixed-lab]}]\n", "grids[0].model[0]"),
        ("name: x\ngrids: [{model: [opt-6.7b], rig: [mixed-lab], pcie: [pcie9]}]\n", "grids[0].pcie[0]"),
        ("name: x\ngrids: [{model: [opt-6.7b], rig: [mixed-lab], batch: [0]}]\n", "grids[0].batch[0]"),
        ("name: x\n", "grids"),
        (
            "name: x\ngrids: [{model: [opt-6.7b], rig: [mixed-lab]}]\nplots: [{kind: pie, x: batch}]\n",
            "plots",
        ),
        (
            "name: x\ngrids: [{model: [opt-6.7b], rig: [mixed-lab]}]\nplots: [{kind: heatmap, x: batch}]\n",
            "plots",
        ),
    ],
)
def test_bad_spec_names_file_and_field(tmp_path, text, field):
    path = _spec(tmp_path, text, "bad.yaml")
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert info.value.source == str(path)
    assert info.value.field is not None and info.value.field.startswith(field)


def test_malformed_yaml_names_file(tmp_path):
    path = _spec(tmp_path, "name: [unclosed\n", "broken.yaml")
    with pytest.raises(InputError, match="malformed YAML") as info:
        load_spec(path)
    assert info.value.source == str(path)


# ---- running --------------------------------------------------------------------------------
def test_local_sweep_end_to_end_with_plots(tmp_path):
    report = run_sweep(_spec(tmp_path), tmp_path / "out", workers=2, progress=False)
    df = report.results
    assert report.total == 7 and report.ran == 7 and report.failed == 0
    assert len(df) == 7 and set(df["strategy"]) == {"cpu-tp", "gpu-only", "accelerate"}
    assert df["feasible"].all() and (df["throughput_tok_s"] > 0).all()
    # a smaller GPU memory budget never makes a GPU strategy faster
    acc = df[df["strategy"] == "accelerate"].set_index("gpu_mem_gb")
    assert acc.loc[8.0, "e2e_s"] >= acc.loc[24.0, "e2e_s"]
    # cpu-tp ignores GPU memory
    cpu = df[df["strategy"] == "cpu-tp"]
    assert cpu["e2e_s"].nunique() == 1
    names = {p.name for p in report.plots}
    assert {"heatmap-gpu_mem_gb-strategy.png", "heatmap-gpu_mem_gb-strategy.svg"} <= names
    assert any(n.startswith("pareto") for n in names) and any(n.startswith("line") for n in names)
    assert all(p.stat().st_size > 0 for p in report.plots)
    # everything done: a re-run runs nothing
    again = run_sweep(_spec(tmp_path), tmp_path / "out", workers=2, progress=False, plots=False)
    assert again.ran == 0 and again.skipped == 7


def test_plots_of_the_same_results_are_the_same_bytes(tmp_path):
    """SVG ids hash a salt matplotlib draws at random unless it is set: the same results give the
    same files, PNG and SVG."""
    from hetsim.sweep.plots import draw_all
    from hetsim.sweep.spec import load_spec

    spec_path = _spec(tmp_path)
    report = run_sweep(spec_path, tmp_path / "out", workers=1, progress=False, plots=False)
    spec = load_spec(spec_path)
    first = draw_all(spec, report.results, tmp_path / "a")
    second = draw_all(spec, report.results, tmp_path / "b")
    assert any(p.suffix == ".svg" for p in first)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_plots_drawn_in_processes_are_the_files_drawn_in_one(tmp_path):
    """Plots drawn side by side in forked processes: the same files, the same bytes, the same order."""
    from hetsim.sweep.plots import draw_all
    from hetsim.sweep.spec import load_spec

    spec_path = _spec(tmp_path)
    results = run_sweep(spec_path, tmp_path / "out", workers=1, progress=False, plots=False).results
    spec = load_spec(spec_path)
    one = draw_all(spec, results, tmp_path / "one", workers=1)
    two = draw_all(spec, results, tmp_path / "two", workers=2)
    assert len(one) > 4
    assert [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_run_order_hands_out_a_configurations_strategies_together(tmp_path):
    from hetsim.sweep.runner import run_order

    points = expand(load_spec(_spec(tmp_path)))
    ordered = run_order(points)
    assert sorted(p["point_id"] for p in ordered) == sorted(p["point_id"] for p in points)
    configs = [
        tuple(sorted((k, str(v)) for k, v in p.items() if k not in ("strategy", "point_id"))) for p in ordered
    ]
    runs = [c for k, c in enumerate(configs) if k == 0 or c != configs[k - 1]]
    assert len(runs) == len(set(configs)) < len(points)  # each configuration's points in one run


def test_points_on_a_kept_rig_are_the_points_on_a_fresh_one(tmp_path, monkeypatch):
    """The worker's rig cache (one Rig object per configuration) changes no row."""
    from hetsim.sweep import runner

    points = expand(load_spec(_spec(tmp_path)))
    kept = execute_rows(points)
    monkeypatch.setattr(runner, "_point_rig", lambda config: apply_hardware(load_rig(config["rig"]), config))
    fresh = execute_rows(points)
    assert kept == fresh


def execute_rows(points: list[dict]) -> dict[str, str]:
    rows: list[dict] = []
    execute(points, workers=1, on_row=rows.append)
    return {r["point_id"]: repr(sorted(r.items())) for r in rows}


def test_interrupted_sweep_resumes_to_the_same_content(tmp_path):
    spec = _spec(tmp_path)
    straight = run_sweep(spec, tmp_path / "a", workers=1, progress=False, plots=False).results
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "b", workers=1, progress=False, plots=False, stop_after=3)
    partial = Store(tmp_path / "b").read()
    assert len(partial) == 3  # what finished before the interruption was kept
    resumed = run_sweep(spec, tmp_path / "b", workers=2, progress=False, plots=False)
    assert resumed.skipped == 3 and resumed.ran == 4
    pd.testing.assert_frame_equal(_content(resumed.results), _content(straight))


def test_failing_point_is_recorded_and_the_rest_run(tmp_path):
    points = expand(load_spec(_spec(tmp_path)))
    points[1] = {**points[1], "model": "no-such-model"}
    store = Store(tmp_path / "out", schema_for(points, knob_columns(points)))
    n = execute(points, workers=2, timeout_s=60, on_row=store.add)
    store.flush()
    df = store.read()
    assert n == len(points) == len(df)
    bad = df[df["point_id"] == points[1]["point_id"]].iloc[0]
    assert not bad["feasible"] and "no-such-model" in bad["error"] and math.isnan(bad["e2e_s"])
    ok = df[df["point_id"] != points[1]["point_id"]]
    assert ok["feasible"].all() and (ok["error"] == "").all()


def test_point_timeout_is_a_failure_not_a_hang(tmp_path):
    from hetsim.sweep.runner import run_point

    point = expand(load_spec(_spec(tmp_path)))[0]
    row = run_point(point, timeout_s=1e-4)
    assert not row["feasible"] and "PointTimeout" in row["error"]


def test_dask_local_cluster_matches_local_pool(tmp_path):
    pytest.importorskip("distributed")
    spec = _spec(tmp_path)
    local = run_sweep(spec, tmp_path / "a", workers=2, progress=False, plots=False).results
    dask = run_sweep(spec, tmp_path / "b", dask="local", workers=1, progress=False, plots=False).results
    pd.testing.assert_frame_equal(_content(dask), _content(local))


def test_cli_sweep_command(tmp_path):
    from hetsim.cli import main

    spec = _spec(tmp_path)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--no-plots", "--workers", "1"]) == 0
    assert Store(tmp_path / "o").parts()
    bad = _spec(tmp_path, "name: x\ngrids: [{model: [opt-6.7b], rig: [nope]}]\n", "bad.yaml")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o2")]) == 2


def test_pareto_front():
    pts = [(1.0, 10.0), (2.0, 20.0), (3.0, 15.0), (0.5, 1.0)]
    # low latency (x) and high throughput (y) are better
    assert pareto_front(pts, x_low=True, y_low=False) == [(0.5, 1.0), (1.0, 10.0), (2.0, 20.0)]


# ---- signals, concurrent writers, --dask addresses (issue 19) ---------------------------------------
SLOW = """
name: slow
base: {prompt_len: 64, gen_len: 4, model: llama2-7b, rig: mixed-lab}
grids:
  - strategy: [accelerate, flexgen, hetegen, deepspeed]
    batch: [1, 2, 3, 4, 5, 6, 7, 8]
    gen_len: [4, 5, 6, 7]
"""


def _hetsim(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "hetsim.cli", *args]


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_stops_sweep_cleanly_and_keeps_points(tmp_path, sig, code):
    import os
    import signal
    import subprocess
    import time

    spec, out = _spec(tmp_path, SLOW, "slow.yaml"), tmp_path / "out"
    proc = subprocess.Popen(
        _hetsim("sweep", str(spec), "--out", str(out), "--no-plots", "--workers", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the signal reaches the workers too, as Ctrl-C does
    )
    deadline = time.monotonic() + 120
    while not Store(out).parts() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    os.killpg(proc.pid, getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.count("\n") == 1 and err.startswith(f"interrupted by {sig}: ") and "Traceback" not in err
    kept = Store(out).read()  # finished points are kept (resuming them is test_interrupted_sweep_...)
    errors = kept["error"].value_counts().to_dict()  # shown if a broken pool's crash rows were kept
    assert 0 < len(kept) < 128 and kept["feasible"].all() and kept["point_id"].is_unique, errors


# A child process: the real local pool on quick fake points, with the signal landing where it can in
# ``concurrent.futures.wait``: ``_AcquireFutures.__enter__`` takes the futures' locks one by one in a
# Python loop, so a handler that raises there leaves one taken, and the pool's manager thread then
# waits on it forever (the exit joins that thread: the sweep said "interrupted" and hung). Landing in
# ``submit``, before the pool's try, it skipped the pool's shutdown, with the same end.
_SIGNAL_IN_POOL = """
import concurrent.futures, signal, sys, time
from hetsim.sweep import runner

signal.signal(signal.SIGINT, signal.default_int_handler)  # not one ignored, inherited from a background job

def group(points, timeout_s):  # fake points: this is about the pool, not the model
    for p in points:
        time.sleep(0.02 if sys.argv[1] == "wait" else 600)  # long: unless stopped, exit waits for them
        runner._ROWS.put({"point_id": p["point_id"]})

def signal_in_wait(fs, **kw):  # the first call takes one future's lock, then the signal arrives
    if not calls:
        calls.append(1)
        f = next(iter(fs))
        f._condition.acquire()
        signal.raise_signal(signal.SIGINT)
        f._condition.release()
    return real_wait(fs, **kw)

def signal_in_submit(self, *args):  # Ctrl-C while the groups are handed out
    calls.append(1)
    if len(calls) == 3:
        signal.raise_signal(signal.SIGINT)
    return real_submit(self, *args)

runner._run_group = group
real_wait, real_submit, calls = concurrent.futures.wait, concurrent.futures.ProcessPoolExecutor.submit, []
if sys.argv[1] == "wait":
    concurrent.futures.wait = signal_in_wait
else:
    concurrent.futures.ProcessPoolExecutor.submit = signal_in_submit
kept = []
try:
    for row in runner._run_local([{"point_id": f"{i:03d}", "k": i} for i in range(64)], 2, None):
        kept.append(row["point_id"])
except KeyboardInterrupt:
    print("interrupted", len(kept), len(set(kept)) == len(kept))
"""


@pytest.mark.parametrize("where", ["wait", "submit"])
def test_signal_inside_the_pools_bookkeeping_still_exits(where):
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGNAL_IN_POOL, where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the interrupted pool did not exit within 60 s")
    assert proc.returncode == 0, err
    assert out.startswith("interrupted ") and out.split()[2] == "True", (out, err)


# A child process as a pool worker: a HeteGen point (its knapsack is a CP-SAT solve), then Ctrl-C.
_WORKER_AFTER_A_SOLVE = """
import os, signal, sys, time
from hetsim.sweep import grid, runner, spec

rows = []
runner._start_worker(runner._worker_init, (type("Q", (), {"put": staticmethod(rows.append)})(),))
points = [p for p in grid.expand(spec.load_spec(sys.argv[1])) if p["strategy"] == "hetegen"][:1]
runner._run_group(points, None)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.5)  # a pending signal's default action ends the process here
print(len(rows), rows[0]["error"] or "ok")
"""


def test_pool_worker_still_leaves_ctrl_c_to_the_parent_after_a_cp_sat_solve(tmp_path):
    """A CP-SAT solve leaves SIGINT at its default action unless OR-Tools' ``catch_sigint_signal`` is
    off (hetsim's solvers turn it off: tests/test_cpsat_import.py): before, Ctrl-C then killed a
    worker, the pool broke, and the parent stored every unfinished point of the sweep as a "worker
    crashed" row (test_signal_stops_sweep_cleanly_and_keeps_points kept all 128)."""
    import subprocess
    import sys

    spec = _spec(tmp_path, SLOW, "slow.yaml")
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER_AFTER_A_SOLVE, str(spec)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["1", "ok"]


def test_three_concurrent_sweeps_on_one_out(tmp_path):
    import subprocess

    import pyarrow.parquet as pq

    spec, out = _spec(tmp_path), tmp_path / "out"
    cmd = _hetsim("sweep", str(spec), "--out", str(out), "--no-plots", "--workers", "1")
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    # every point exactly once, in the files themselves (not only after read() drops duplicates)
    ids = [i for part in Store(out).parts() for i in pq.read_table(part).column("point_id").to_pylist()]
    expected = {p["point_id"] for p in expand(load_spec(spec))}
    assert sorted(ids) == sorted(expected)
    assert not list((out / "results").glob("*.tmp")) and not list((out / "results").glob(".*.tmp"))
    df = Store(out).read()
    assert df["feasible"].all() and (df["error"] == "").all()


@pytest.mark.parametrize("address", ["foo", "tcp://127.0.0.1:8786x", "tcp://:"])
def test_malformed_dask_address_one_line(tmp_path, capsys, address):
    pytest.importorskip("distributed")
    from hetsim.cli import main

    assert main(["sweep", str(_spec(tmp_path)), "--out", str(tmp_path / "o"), "--dask", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --dask: ")


def test_dask_without_the_extra_says_how_to_install(tmp_path, capsys, monkeypatch):
    import sys

    from hetsim.cli import main

    for mod in [m for m in sys.modules if m == "distributed" or m.startswith("distributed.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    assert main(["sweep", str(_spec(tmp_path)), "--out", str(tmp_path / "o"), "--dask", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'hetsim[dist]'" in err


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("timeout_s: .inf\n", "timeout_s", "finite"),
        ("timeout_s: 1e9\n", "timeout_s", "86400"),
        ("grids:\n  - {batch: [1, 99999999999]}\n", "grids[0].batch[1]", "65536"),
        ("grids:\n  - {batch: " + str(list(range(1, 101))) + ", gen_len: " + str(list(range(1, 101)))
         + ", prompt_len: " + str(list(range(1, 101))) + "}\n", "grids", "1000000 points"),
        ("grids:\n  - {gpu_mem_gb: [.inf]}\n", "grids[0].gpu_mem_gb[0]", "finite"),
        ("grids:\n  - {batch: [1]}\nname: again\n", None, "duplicate key 'name'"),
        # pydantic's lax mode read these as another value (now read as plans are: validate_strictly)
        ("timeout_s: true\n", "timeout_s", "valid number"),
        ("search: 1\n", "search", "valid boolean"),
        ("allow_compression: 'yes'\n", "allow_compression", "valid boolean"),
        ("objective: 2024-01-01\n", "objective", "not a date"),
        # null leaves a knob unset; a point needs these (objective: null was each point's KeyError)
        ("grids:\n  - {batch: [1], objective: [null]}\n", "grids[0].objective[0]", "must be given"),
        ("grids:\n  - {batch: [null]}\n", "grids[0].batch[0]", "must be given"),
        # an int past a float's range: math.isfinite raised OverflowError, a traceback
        ("grids:\n  - {gpu_mem_gb: [" + "9" * 400 + "]}\n", "grids[0].gpu_mem_gb[0]", "finite"),
        ("grids:\n  - {net_gbps: [" + "9" * 400 + "]}\n", "grids[0].net_gbps[0]", "finite"),
        ("grids:\n  - {bw_scale: [{pcie: " + "9" * 400 + "}]}\n", "grids[0].bw_scale[0]", "positive"),
    ],
)  # fmt: skip
def test_sweep_spec_bounds(tmp_path, text, field, words):
    base = "name: b\nbase: {model: llama2-7b, rig: mixed-lab, strategy: gpu-only}\n"
    if not text.startswith("grids"):
        text = text + "grids:\n  - {batch: [1]}\n" if "grids" not in text else text
    spec = _spec(tmp_path, base + text, "b.yaml")
    with pytest.raises(InputError) as info:
        run_sweep(spec, tmp_path / "o", workers=1, progress=False, plots=False)
    assert info.value.source == str(spec) and info.value.field == field and words in info.value.message


def test_a_compacted_store_is_the_same_folder_whatever_its_flushes(tmp_path):
    """Same rows, flushed row by row or at once: after compaction the same file names and bytes."""
    points = expand(load_spec(_spec(tmp_path)))
    schema = schema_for(points, knob_columns(points))
    rows = [{"point_id": p["point_id"], "feasible": True, "error": ""} for p in points]
    folders = []
    for name, every in (("one-by-one", 1), ("at-once", 10_000)):
        store = Store(tmp_path / name, schema, every=every, every_s=1e9)
        for row in rows:
            store.add(row)
        store.flush()
        store.compact()
        folders.append({p.name: p.read_bytes() for p in store.parts()})
    assert list(folders[0]) == ["part-00000.parquet"]
    assert folders[0] == folders[1]


def test_a_figure_is_measured_once_for_both_files(tmp_path, monkeypatch):
    """``_save`` measures the tight box once (for the PNG) and crops the SVG to it: the PNG is the
    bytes of a plain tight save, the SVG's page that box (within text metrics of a point)."""
    import re

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from hetsim.sweep.plots import _save

    def figure():
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([0, 1, 2], [3, 1, 2], marker="o", label="a line")
        ax.set_xlabel("a long x label that sets the width")
        ax.set_title("title\n(second line)", fontsize=9)
        ax.legend()
        return fig

    fig = figure()
    fig.savefig(tmp_path / "plain.png", dpi=120, bbox_inches="tight")
    with plt.rc_context({"svg.hashsalt": "hetsim"}):
        fig.savefig(tmp_path / "plain.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)

    calls = []
    measure = Figure.get_tightbbox

    def counted(self, *args, **kwargs):
        calls.append(1)
        return measure(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "get_tightbbox", counted)
    png, svg = _save(figure(), tmp_path / "saved", "fig")
    assert len(calls) == 1  # a plain save of both files measures twice
    assert png.read_bytes() == (tmp_path / "plain.png").read_bytes()

    def page(path):
        head = re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"', path.read_text())
        return float(head[1]), float(head[2])

    for got, want in zip(page(svg), page(tmp_path / "plain.svg"), strict=True):
        assert got == pytest.approx(want, abs=1.5)


def test_matplotlib_is_imported_while_the_points_run(tmp_path, monkeypatch):
    """The plots' import (matplotlib) happens with the first finished point, once, and only when
    there are plots to draw."""
    import hetsim.sweep.api as sweep_api

    seen: list[int] = []

    def record():
        seen.append(1)

    monkeypatch.setattr(sweep_api, "_import_plots", record)
    run_sweep(_spec(tmp_path), tmp_path / "a", workers=1, progress=False, plots=False)
    assert seen == []
    report = run_sweep(_spec(tmp_path), tmp_path / "b", workers=1, progress=False, plots=True)
    assert seen == [1] and report.ran == 7 and report.plots


def test_a_kept_rig_follows_its_file_when_the_cache_outlives_a_sweep(tmp_path):
    """A Dask worker keeps its process (and ``runner._RIGS``) from one sweep to the next, and only
    the calling process's cache is emptied by ``execute``: a rig file changed in between is read
    again, not answered from the kept rig."""
    import os
    import shutil

    from hetsim.hardware.loader import rig_path
    from hetsim.sweep import runner

    path = tmp_path / "lab.yaml"
    shutil.copy(rig_path("mixed-lab"), path)
    config = {"rig": str(path), "gpu_mem_gb": 16}
    first = runner._point_rig(config)
    assert runner._point_rig(config) is first  # kept while the file is unchanged
    text = path.read_text()
    path.write_text(text.replace("value: 9.68,", "value: 19.36,", 1))
    os.utime(path, ns=(1, 1))  # a distinct modification time whatever the clock's resolution
    second = runner._point_rig(config)
    assert second.nodes["n0"].price_per_hour == 2 * first.nodes["n0"].price_per_hour
    assert second.devices["n0.gpu0"].mem_bytes == first.devices["n0.gpu0"].mem_bytes == 16e9


def test_a_plan_knob_is_checked_as_a_plan_file_is():
    """plan.<field> knobs replace fields of the searched plan: the result is checked as a plan file
    is (accelerate's batch_per_pass 16 at batch 1 ran silently, its KV cache sized for 16)."""
    from hetsim.sweep.runner import run_point

    base = {"model": "llama2-7b", "rig": "mixed-lab", "strategy": "accelerate", "batch": 1,
            "prompt_len": 16, "gen_len": 2, "objective": "throughput"}  # fmt: skip
    ok = run_point({**base, "plan.batch_per_pass": 1})
    bad = run_point({**base, "plan.batch_per_pass": 16})
    assert ok["feasible"] and not ok["error"]
    assert not bad["feasible"] and "batch_per_pass" in bad["error"] and "16" in bad["error"]
