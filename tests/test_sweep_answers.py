"""A sweep point takes a remembered answer only where its rig answers everything that answer read
(``hardware.rig.reading``, ``agrees``): each rig below differs from mixed-lab in one link field, and the
remembered answer of every strategy must equal a fresh evaluation on it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.hardware.rig import NoRouteError, agrees, reading
from hetsim.strategies.base import all_strategies
from hetsim.sweep import runner
from hetsim.sweep.grid import apply_hardware


def _config(strategy: str, **knobs) -> dict:
    return {
        "rig": "mixed-lab",
        "model": "llama2-13b",
        "strategy": strategy,
        "batch": 4,
        "prompt_len": 128,
        "gen_len": 8,
        "objective": "throughput",
        "search": True,
        **knobs,
        "point_id": "p",
    }


def _link(rig, name, **changes):
    return replace(rig, links={**rig.links, name: replace(rig.links[name], **changes)})


MUTATIONS = {
    "n0 NIC rate": lambda r: _link(r, "n0.nic", bw=1e9, pageable_bw=1e9),
    "n1 NIC latency": lambda r: _link(r, "n1.nic", latency_s=1e-3),
    "n0 gpu0 PCIe rate": lambda r: _link(r, "n0.pcie.gpu0", bw=r.links["n0.pcie.gpu0"].bw / 3),
    "n0 gpu0 PCIe device-to-host rate": lambda r: _link(r, "n0.pcie.gpu0", fwd_bw=1e9),
    "n1 gpu1 PCIe pageable rate": lambda r: _link(r, "n1.pcie.gpu1", pageable_bw=1e9),
    "n0 UPI rate": lambda r: _link(r, "n0.upi.cpu0-cpu1", bw=1e9, pageable_bw=1e9),
    "n0 NVMe latency": lambda r: _link(r, "n0.nvme.disk0", latency_s=1e-2),
    "n1 PCIe all-reduce fit": lambda r: _link(r, "n1.pcie.gpu0", allreduce={2: (1e-5, 1e9)}),
    "n0 NIC same numbers, new object": lambda r: _link(r, "n0.nic"),
}


def _answer_dict(answer) -> str:
    result, ignored = answer
    return json.dumps([result.to_dict(), list(ignored)], sort_keys=True, default=str)


@pytest.fixture
def clean(monkeypatch):
    monkeypatch.setattr(runner, "_ANSWERS", {})
    monkeypatch.setattr(runner, "_RIGS", {})


@pytest.mark.parametrize("what", sorted(MUTATIONS))
@pytest.mark.parametrize("strategy", sorted(s.name for s in all_strategies()))
def test_a_remembered_answer_is_the_fresh_answer(monkeypatch, clean, strategy, what):
    config = _config(strategy)
    base = runner._point_rig(config)
    other = MUTATIONS[what](base)
    runner._evaluate(config)  # remembered for the base rig first
    monkeypatch.setattr(runner, "_point_rig", lambda c: other)
    remembered = runner._evaluate(config)
    fresh = runner._evaluate_on(config, other)
    assert _answer_dict(remembered) == _answer_dict(fresh)


def test_one_gpu_points_that_differ_in_the_network_are_run_once(clean):
    known = runner._ANSWERS
    for gbps in (10, 100, 400):
        runner._evaluate(_config("flexgen", net_gbps=gbps))
    assert sum(map(len, known.values())) == 1
    for gbps in (10, 100):  # the network carries HexGen's pipeline on this rig: each its own run
        runner._evaluate(_config("gpu-only", net_gbps=gbps))
    assert sum(map(len, known.values())) == 3


def test_knob_derived_parts_are_shared_objects():
    rig = load_rig("mixed-lab")
    a = apply_hardware(rig, {"gpu_mem_gb": 16, "pcie": "pcie3-x16"})
    b = apply_hardware(rig, {"gpu_mem_gb": 16, "net_gbps": 10})
    assert all(a.devices[k] is b.devices[k] for k in a.devices)
    assert a.devices["n0.gpu0"] is not rig.devices["n0.gpu0"]
    assert a.links["n0.nic"] is rig.links["n0.nic"] and b.links["n0.nic"] is not rig.links["n0.nic"]


def test_the_read_log_records_links_routes_grades_and_iteration():
    rig = load_rig("mixed-lab")
    with reading() as log:
        rig.route("n0.cpu0", "n0.gpu0")
        rig.links["n0.nic"]
        assert "nope" not in rig.links
        rig.weakest_grade(["n0.gpu0", "n0.nic"])
        with pytest.raises(NoRouteError):
            rig.route("n0.gpu0", "nowhere")
    assert set(log.links) == {"n0.nic", "nope"} and not log.all_links
    assert set(log.routes) == {("n0.cpu0", "n0.gpu0"), ("n0.gpu0", "nowhere")}
    assert isinstance(log.routes["n0.gpu0", "nowhere"], str)
    assert log.graded == {frozenset({"n0.gpu0", "n0.nic"}): (rig.links["n0.nic"],)}
    for read_all in (
        lambda: list(rig.links),
        lambda: rig.graph,
        lambda: rig.weakest_grade(),
        lambda: len(rig.links),
    ):
        with reading() as log:
            read_all()
        assert log.all_links


def test_agrees_only_where_the_reads_are_answered_alike():
    rig = load_rig("mixed-lab")
    with reading() as log:
        rig.route("n0.cpu0", "n0.gpu0")
    assert agrees(log, rig, MUTATIONS["n0 NIC rate"](rig))
    assert not agrees(log, rig, MUTATIONS["n0 gpu0 PCIe rate"](rig))
    assert agrees(log, rig, MUTATIONS["n0 gpu0 PCIe device-to-host rate"](rig))  # the other direction
    cpu = replace(rig.devices["n1.cpu0"], cores=1)
    assert not agrees(log, rig, replace(rig, devices={**rig.devices, "n1.cpu0": cpu}))  # devices: whole
    with reading() as log:
        list(rig.links.values())
    assert not agrees(log, rig, MUTATIONS["n0 NIC same numbers, new object"](rig))


def test_a_remembered_split_setting_reads_its_routes_again():
    from hetsim.strategies import hetegen

    rig = load_rig("mixed-lab")
    hetegen._split_setting(rig, "n0.gpu0", "n0.cpu0")
    with reading() as log:  # a later point on the same rig object: the cached number, and the reads
        hetegen._split_setting(rig, "n0.gpu0", "n0.cpu0")
    assert {("n0.cpu0", "n0.gpu0"), ("n0.gpu0", "n0.cpu0")} <= set(log.routes)


def _reads(log) -> tuple:
    return log.all_links, set(log.links), set(log.routes), set(log.graded)


@pytest.mark.parametrize("strategy", sorted(s.name for s in all_strategies()))
def test_a_points_reads_do_not_depend_on_what_ran_before_it(clean, strategy):
    """A number kept per rig object (HexGen's layer times) read the rig when an earlier point made
    it: a later point that finds it must record those reads too, or a rig that differs there agrees."""
    config = _config(strategy)
    runner._evaluate(config)
    alone = _reads(runner._ANSWERS[runner.answer_key(config)][0][2])
    runner._ANSWERS.clear()
    runner._RIGS.clear()  # a new rig object: nothing kept for it yet
    runner._evaluate({**config, "batch": 2})  # another answer, the same rig object
    runner._evaluate(config)
    assert _reads(runner._ANSWERS[runner.answer_key(config)][0][2]) == alone


def test_a_model_file_that_changed_is_not_answered_from_before(clean, tmp_path):
    """A Dask worker outlives a sweep and keeps its answers: a config.json edited between two sweeps
    is another model, not the remembered one."""
    src = json.loads(Path("tests/data/hf-configs/OPT-350m/config.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps(src))
    config = {**_config("gpu-only"), "model": str(path)}
    before = runner._evaluate(config)
    path.write_text(json.dumps({**src, "num_hidden_layers": src["num_hidden_layers"] // 2}))
    after = runner._evaluate(config)
    assert _answer_dict(after) == _answer_dict(runner._evaluate_on(config, runner._point_rig(config)))
    assert after[0].e2e_s < before[0].e2e_s


def test_the_switch_runs_every_point_afresh(monkeypatch, clean):
    monkeypatch.setattr(runner, "REMEMBER_ANSWERS", False)
    rows = [runner.run_point(_config("flexgen", net_gbps=g)) for g in (10, 100)]
    assert runner._ANSWERS == {}
    monkeypatch.setattr(runner, "REMEMBER_ANSWERS", True)
    again = [runner.run_point(_config("flexgen", net_gbps=g)) for g in (10, 100)]
    assert sum(map(len, runner._ANSWERS.values())) == 1
    assert json.dumps(rows, sort_keys=True, default=str) == json.dumps(again, sort_keys=True, default=str)


def test_the_remembered_answers_hold_a_bounded_number_of_rigs(monkeypatch, clean):
    monkeypatch.setattr(runner, "_ANSWER_RIGS", {}, raising=False)
    monkeypatch.setattr(runner, "_ANSWER_RIGS_MAX", 2, raising=False)
    for gbps in (10, 100, 400):  # gpu-only reads the network here: one answer and one rig each
        runner._evaluate(_config("gpu-only", net_gbps=gbps))
    assert len({id(entry[0]) for entries in runner._ANSWERS.values() for entry in entries}) <= 2


def test_one_configuration_over_many_rigs_is_not_one_workers_task():
    points = [{**_config("hexgen", net_gbps=g), "point_id": str(g)} for g in range(1, 11)]
    points.append(_config("flexgen"))
    tasks = runner.answer_groups(points, workers=2)
    assert max(map(len, tasks)) <= 6 and sorted(p["point_id"] for t in tasks for p in t) == sorted(
        p["point_id"] for p in points
    )
    assert len(runner.answer_groups(points, workers=1)) == 2  # one worker: the groups as they are
