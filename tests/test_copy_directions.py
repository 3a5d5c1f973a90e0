"""A GPU's host link with its own device-to-host rates (pinned and pageable), as FlexGen's release fitted
them on its T4 machine (FlexGen, arXiv 2303.06865; FMInference/FlexGen experimental/cost_model.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.cli.commands import main
from hetsim.hardware import Grade, list_rigs, load_rig
from hetsim.hardware.catalog import profiles_dir
from hetsim.models import get_model
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload

GiB = 2**30


def test_flexgen_t4_stores_to_the_host_at_its_fitted_rates():
    rig = load_rig("flexgen-t4")
    down, up = rig.route("n0.gpu0", "n0.cpu0"), rig.route("n0.cpu0", "n0.gpu0")
    assert down.bw == pytest.approx(4.82 * GiB)  # gtoc_bdw_hidden: into pinned memory
    assert down.pageable_bw == pytest.approx(0.97 * GiB)  # gtoc_bdw_cache: into the unpinned KV cache
    assert up.bw == pytest.approx(12.89 * GiB) and up.pageable_bw == pytest.approx(6e9)  # unchanged
    prov = rig.links["n0.pcie.gpu0"].provenance
    assert prov["fwd_bw"].grade == prov["fwd_pageable_bw"].grade == Grade.FITTED
    assert "gtoc_bdw_cache" in prov["fwd_pageable_bw"].source
    # GPU -> disk relays through the host: its PCIe hop is a device-to-host copy
    to_disk = rig.route("n0.gpu0", "n0.disk0")
    assert to_disk.hops[0].forward and to_disk.bw == pytest.approx(2e9)  # the NVMe link binds


@pytest.mark.parametrize("name", [r for r in list_rigs() if r != "flexgen-t4"])
def test_a_rig_without_directional_rates_is_symmetric(name):
    rig = load_rig(name)
    for link in rig.links.values():
        assert link.fwd_bw is None and link.fwd_pageable_bw is None
        for fwd in (True, False):
            assert link.rate(fwd) == link.bw and link.rate(fwd, pinned=False) == link.pageable_bw
    gpus = rig.gpus()
    if gpus:
        cpu = rig.host_cpu(gpus[0].name)
        a, b = rig.route(gpus[0].name, cpu), rig.route(cpu, gpus[0].name)
        assert (a.bw, a.pageable_bw) == (b.bw, b.pageable_bw)


def _rig_file(tmp_path, host_link: dict | None = None, nic: dict | None = None):
    raw = yaml.safe_load((profiles_dir() / "rigs" / "flexgen-t4.yaml").read_text())
    gpu = raw["nodes"][0]["gpus"][0]
    if host_link is None:
        gpu.pop("host_link")
    else:
        gpu["host_link"] = {"link": "pcie3-x16", **host_link}
    if nic is not None:
        raw["nodes"][0]["nic"] = {"link": "ethernet-25g", **nic}
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _fast(v: str) -> dict:
    return {"value": v, "source": "test", "grade": "measured"}


@pytest.mark.parametrize(
    ("host_link", "nic", "field"),
    [
        ({"to_host_bandwidth": _fast("-1 GB/s")}, None, "to_host_bandwidth"),
        ({"to_host_pageable_bandwidth": _fast("0 GB/s")}, None, "to_host_pageable_bandwidth"),
        ({"to_host_bandwidth": {"value": "5 GB/s", "source": "x"}}, None, "to_host_bandwidth"),
        ({"to_host_bandwidth": _fast("5 parsecs")}, None, "to_host_bandwidth"),
        (None, {"to_host_bandwidth": _fast("5 GB/s")}, "nic.to_host_bandwidth"),
    ],
)
def test_bad_directional_rate_is_one_line_naming_file_and_field(tmp_path, capsys, host_link, nic, field):
    path = _rig_file(tmp_path, host_link, nic)
    assert main(["hw", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(path) in err and field in err


def test_rig_file_without_the_new_fields_loads_as_before(tmp_path):
    """flexgen-t4 without its host_link override: the catalogue's symmetric PCIe rates."""
    rig = load_rig(_rig_file(tmp_path))
    link = rig.links["n0.pcie.gpu0"]
    assert link.fwd_bw is None and link.fwd_pageable_bw is None
    assert rig.route("n0.gpu0", "n0.cpu0").pageable_bw == pytest.approx(6e9)


# ---- monotonicity: a faster device-to-host path never makes a run slower ---------------------------
_MODEL = get_model("opt-6.7b")
_WL = Workload(16, 64, 4)
# KV and activations on the CPU (the unpinned KV store and the pinned hidden store both cross), with
# and without CPU attention.
_PLANS = [
    FlexGenPlan(8, 2, 50, 50, 0, 100, 0, 100, cpu_attention=cpu, gpu="n0.gpu0") for cpu in (True, False)
]


def _with_rates(rig, pinned: float, pageable: float):
    link = rig.links["n0.pcie.gpu0"]
    links = {**rig.links, link.name: replace(link, fwd_bw=pinned, fwd_pageable_bw=pageable)}
    return replace(rig, links=links)


@settings(max_examples=12, deadline=None)
@given(
    pinned=st.floats(0.2e9, 20e9),
    pageable=st.floats(0.2e9, 20e9),
    faster=st.floats(1.0, 8.0),
    which=st.sampled_from(["pinned", "pageable", "both"]),
    plan=st.sampled_from(_PLANS),
)
def test_faster_device_to_host_never_slower(pinned, pageable, faster, which, plan):
    base = load_rig("flexgen-t4")
    slow = _with_rates(base, pinned, pageable)
    fast = _with_rates(
        base,
        pinned * (faster if which != "pageable" else 1.0),
        pageable * (faster if which != "pinned" else 1.0),
    )
    s = get_strategy("flexgen")
    t_slow = simulate(s, plan, slow, _MODEL, _WL).throughput_tok_s
    t_fast = simulate(s, plan, fast, _MODEL, _WL).throughput_tok_s
    # Copies booked in issue order on shared lanes admit tiny list-scheduling anomalies (a faster
    # store shifts a later booking): seen up to 2.5e-5 relative, so 1e-4 is the bound here.
    assert t_fast >= t_slow * (1 - 1e-4)


def test_hw_show_says_the_device_to_host_rates(capsys):
    import json

    assert main(["hw", "show", "flexgen-t4", "--format", "json"]) == 0
    link = next(lk for lk in json.loads(capsys.readouterr().out)["links"] if lk["kind"] == "pcie")
    assert link["to_b_bw"] == pytest.approx(4.82 * GiB) and link["to_b_pageable_bw"] == pytest.approx(
        0.97 * GiB
    )
    assert main(["hw", "show", "flexgen-t4"]) == 0
    assert "pageable" in capsys.readouterr().out
    assert main(["hw", "show", "mixed-lab", "--format", "json"]) == 0
    assert all("to_b_bw" not in lk for lk in json.loads(capsys.readouterr().out)["links"])


def test_a_pageable_copy_is_never_faster_than_a_pinned_one_in_its_direction():
    """Only a pinned device-to-host rate given: the pageable one falls back to the link's symmetric
    pageable rate but is capped by the pinned rate (a pageable copy stages through pinned memory)."""
    from hetsim.hardware.types import Link

    link = Link("n0.gpu0-pcie", "pcie", "gpu", "cpu", bw=12e9, latency_s=0.0, pageable_bw=6e9, fwd_bw=4e9)
    assert link.rate(True, pinned=False) == 4e9
    assert link.rate(False, pinned=False) == 6e9
    assert replace(link, fwd_bw=None).rate(True, pinned=False) == 6e9


def test_a_sweep_swap_gives_device_to_host_rates_to_gpu_host_links_only(monkeypatch):
    """A catalogue link with its own device-to-host rate, swapped in by a sweep: GPU host links take it
    (with its provenance); a NIC swapped to the same entry does not (the loader refuses it there)."""
    import importlib

    from hetsim.sweep.grid import apply_hardware

    cat = importlib.import_module("hetsim.hardware.catalog").load_catalog()
    entry = cat.resolve("links", "pcie3-x16")
    spec = entry.spec.model_copy(update={"to_host_bandwidth": entry.spec.pageable_bandwidth})
    base = load_rig("mixed-lab")
    monkeypatch.setattr(type(cat), "resolve", lambda self, section, name: replace(entry, spec=spec))
    rig = apply_hardware(base, {"pcie": "pcie3-x16", "net_link": "pcie3-x16"})
    host = rig.links["n0.pcie.gpu0"]
    assert host.fwd_bw == pytest.approx(6e9) and host.provenance["fwd_bw"].grade == Grade.ASSUMED
    nics = [lk for lk in rig.links.values() if lk.kind != "pcie" and lk.bw == host.bw]
    assert nics and all(lk.fwd_bw is None and "fwd_bw" not in lk.provenance for lk in nics)
