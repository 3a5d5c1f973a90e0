"""Hardware catalogue, rigs, routes and loader errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from hetsim.errors import InputError
from hetsim.hardware import Grade, catalog, list_rigs, load_rig, rig_to_dict
from hetsim.hardware.catalog import profiles_dir
from hetsim.hardware.schema import Sourced

GiB = 2**30
SHIPPED = [
    "flexgen-t4",
    "hetegen-a10",
    "cputp-4x8575c",
    "hexgen-full-budget",
    "hexgen-half-budget",
    "hexgen-homogeneous",
    "mixed-lab",
]


# ---- catalogue ------------------------------------------------------------------------------
def test_required_catalogue_entries_exist():
    cat = catalog()
    for gpu in [
        "t4",
        "a10",
        "a100-40g",
        "a100-80g",
        "h100-sxm",
        "h100-pcie",
        "h200",
        "l4",
        "l40s",
        "a40",
        "rtx-a6000",
        "rtx-a5000",
        "rtx-a4000",
        "rtx-3090-ti",
        "rtx-4090",
        "v100",
    ]:
        assert cat.resolve("gpus", gpu) is not None, gpu
    for alias, name in [("a6000", "rtx-a6000"), ("a5000", "rtx-a5000"), ("a4000", "rtx-a4000")]:
        assert cat.resolve("gpus", alias).spec.name == name
    for cpu in ["xeon-8480+", "xeon-8575c", "xeon-8592+", "xeon-8563c", "xeon-8380", "xeon-2.0ghz"]:
        assert cat.resolve("cpus", cpu) is not None, cpu
    for link in [
        "pcie3-x16",
        "pcie4-x16",
        "pcie5-x16",
        "nvlink2",
        "nvlink3",
        "nvlink4",
        "upi",
        "erdma",
        "wan",
    ]:
        assert cat.resolve("links", link) is not None, link
    for disk in ["nvme-gcp-local-4x", "nvme-pcie4", "nvme-pcie3"]:
        assert cat.resolve("disks", disk) is not None, disk


def _sourced(obj, path=""):
    """Yield (path, Sourced) for every number in a validated spec."""
    if isinstance(obj, Sourced):
        yield path, obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _sourced(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _sourced(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _sourced(v, f"{path}[{i}]")


def test_every_catalogue_number_has_source_and_grade():
    cat = catalog()
    count = 0
    for section in ("gpus", "cpus", "links", "disks"):
        for entry in cat.section(section).values():
            for path, q in _sourced(entry.spec):
                assert q.source.strip(), f"{entry.source}{path}"
                assert q.grade in ("datasheet", "paper", "measured", "fitted", "assumed")
                count += 1
    for path, q in _sourced(cat.efficiency):
        assert q.source.strip(), path
    assert count > 250


def test_catalogue_files_have_no_bare_numbers():
    """Every scalar number in a catalogue file sits under a {value, source, grade} mapping."""

    def walk(node, path):
        if isinstance(node, dict):
            if "value" in node:
                assert {"source", "grade"} <= node.keys(), path
                return
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        else:
            assert not isinstance(node, int | float) or isinstance(node, bool), path

    for path in sorted(profiles_dir().glob("*/*.yaml")):
        if path.parent.name != "rigs":
            walk(yaml.safe_load(path.read_text()), str(path))


def test_key_datasheet_numbers():
    cat = catalog()
    t4 = cat.gpus["t4"].spec
    assert t4.memory is None and t4.dram.si == 16 * 2**30  # the datasheet's "16 GB" of GDDR6 is 16 GiB
    assert t4.ecc_share.si == 1 / 16
    assert t4.memory_bandwidth.si == 320e9
    assert t4.peak_flops["fp16"].si == 65e12
    assert cat.gpus["a10"].spec.memory_bandwidth.si == 600e9
    assert cat.gpus["a100-40g"].spec.memory_bandwidth.si == 1555e9
    assert cat.gpus["h100-sxm"].spec.peak_flops["bf16"].si == pytest.approx(989.5e12)
    emr = cat.cpus["xeon-8575c"].spec
    assert emr.memory_bandwidth.si == pytest.approx(358.4e9)
    assert emr.memory_bandwidth.si == pytest.approx(emr.memory_channels.si * emr.memory_speed.si * 8)
    spr = cat.cpus["xeon-8480+"].spec
    assert spr.peak_flops["bf16"].si == pytest.approx(56 * 2.0e9 * 1024, rel=1e-3)
    assert spr.peak_flops["fp32"].si == pytest.approx(56 * 2.0e9 * 64, rel=1e-3)
    pcie3 = cat.links["pcie3-x16"].spec
    assert pcie3.bandwidth.si == pytest.approx(12.89 * GiB)
    assert pcie3.theoretical_bandwidth.si == pytest.approx(15.75e9)
    assert cat.links["nvlink3"].spec.bandwidth.si == 300e9
    assert cat.links["nvlink4"].spec.bandwidth.si == 450e9


# ---- rigs -----------------------------------------------------------------------------------
def test_list_rigs_contains_shipped():
    assert set(SHIPPED) <= set(list_rigs())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_rig_loads(name):
    rig = load_rig(name)
    assert rig.name == name
    assert rig.devices
    for dev in rig.devices.values():
        assert dev.mem_bytes > 0 and dev.mem_bw > 0 and dev.peak_flops
        assert set(dev.efficiency.compute) == {"matmul", "attention", "elementwise", "embedding"}
        assert "mem_bytes" in dev.provenance and "efficiency.memory" in dev.provenance
    json.dumps(rig_to_dict(rig))  # JSON-able


def test_flexgen_t4_numbers_and_routes():
    rig = load_rig("flexgen-t4")
    assert list(rig.devices) == ["n0.cpu0", "n0.gpu0"]
    gpu = rig.devices["n0.gpu0"]
    # ECC on (GCP's T4s): torch sees 15101 MiB, less the CUDA context and cuBLAS (0.5 GiB assumed)
    assert gpu.model == "t4" and gpu.mem_bytes == (15101 - 512) * 2**20 and gpu.reserved_bytes == 2**29
    assert rig.devices["n0.cpu0"].mem_bytes == 208e9
    assert rig.disks["n0.disk0"].capacity_bytes == 1.5e12
    assert rig.disks["n0.disk0"].read_bw == 2e9
    route = rig.route("n0.cpu0", "n0.gpu0")  # host to device (the other way: test_copy_directions.py)
    assert route.bw == pytest.approx(12.89 * GiB)
    assert route.pageable_bw < route.bw
    assert rig.host_cpu("n0.gpu0") == "n0.cpu0"
    disk_to_gpu = rig.route("n0.disk0", "n0.gpu0")
    assert disk_to_gpu.bw == 2e9
    assert rig.devices["n0.gpu0"].provenance["mem_bytes"].grade == Grade.ASSUMED
    assert rig.devices["n0.gpu0"].provenance["runtime_reserved"].grade == Grade.ASSUMED


def test_load_by_path_equals_by_name():
    path = profiles_dir() / "rigs" / "hetegen-a10.yaml"
    a, b = load_rig(path), load_rig("hetegen-a10")
    assert a.devices == b.devices and a.links == b.links


def test_hetegen_a10():
    rig = load_rig("hetegen-a10")
    gpu, cpu = rig.devices["n0.gpu0"], rig.devices["n0.cpu0"]
    # 24 GiB of GDDR6 less 1/16 for ECC and the driver's 259/15360 (22651.5 MiB to torch), less the runtime's
    assert gpu.model == "a10" and gpu.mem_bytes == 22651.5 * 2**20 - 2**29
    assert cpu.cores == 16
    assert rig.route("n0.cpu0", "n0.gpu0").bw == pytest.approx(25.2e9)


def test_cputp_cross_node_route():
    rig = load_rig("cputp-4x8575c")
    assert len(rig.nodes) == 4 and all(len(n.cpus) == 1 for n in rig.nodes.values())
    cpu = rig.devices["n0.cpu0"]
    assert cpu.mem_bw == pytest.approx(358.4e9) and cpu.cores == 48
    assert cpu.mem_bytes >= 2 * 36e9 + 2.5e9
    route = rig.route("n0.cpu0", "n3.cpu0")
    nic = rig.links["n0.nic"]
    assert route.bw == nic.bw  # bottleneck is the network
    assert route.latency_s == pytest.approx(2 * nic.latency_s)  # summed: NIC->switch->NIC
    assert route.latency_s == pytest.approx(30e-6)


def test_host_memory_split_per_socket():
    rig = load_rig("mixed-lab")
    node = rig.nodes["n0"]
    assert node.cpus == ("n0.cpu0", "n0.cpu1")
    for c in node.cpus:
        assert rig.devices[c].mem_bytes == pytest.approx(node.host_mem_bytes / 2)
    # per-rig override of a catalogue field keeps its own provenance
    a100 = rig.devices["n0.gpu0"]
    assert a100.mem_bw == 1935e9 and "PCIe" in a100.provenance["mem_bw"].source
    assert rig.host_cpu("n0.gpu1") == "n0.cpu1"


def test_gpu_to_gpu_without_nvlink_goes_through_host():
    rig = load_rig("mixed-lab")
    route = rig.route("n1.gpu0", "n1.gpu1")
    kinds = [rig.links[h.link].kind for h in route.hops]
    assert kinds[0] == "pcie" and kinds[-1] == "pcie"
    assert route.bw == pytest.approx(25.2e9)
    cross = rig.route("n0.gpu0", "n1.gpu0")
    assert cross.bw == rig.links["n0.nic"].bw
    assert cross.latency_s == pytest.approx(sum(rig.links[h.link].latency_s for h in cross.hops))


def test_hexgen_homogeneous_nvlink():
    rig = load_rig("hexgen-homogeneous")
    assert len(rig.gpus()) == 16 and {g.model for g in rig.gpus()} == {"a100-40g"}
    route = rig.route("n0.gpu0", "n0.gpu7")
    assert {rig.links[h.link].kind for h in route.hops} == {"nvlink"}
    assert route.bw == 300e9
    assert rig.route("n0.gpu0", "n1.gpu0").bw < route.bw
    assert rig.price_per_hour == pytest.approx(65.54, rel=0.01)


def test_hexgen_heterogeneous_pools_and_prices():
    full = load_rig("hexgen-full-budget")
    models = [g.model for g in full.gpus()]
    assert len(models) == 58
    assert models.count("rtx-3090-ti") == 22 and models.count("rtx-a5000") == 16
    assert models.count("rtx-a6000") == 16 and models.count("a40") == 4
    assert {n.region for n in full.nodes.values()} == {"illinois", "iceland", "norway", "nevada"}
    assert full.price_per_hour == pytest.approx(65.04, rel=0.01)
    half = load_rig("hexgen-half-budget")
    assert len(half.gpus()) == 30
    assert half.price_per_hour == pytest.approx(29.6, rel=0.01)
    # cross-region: WAN is the bottleneck and its latency dominates
    a = next(n for n in full.nodes.values() if n.region == "iceland").gpus[0]
    b = next(n for n in full.nodes.values() if n.region == "nevada").gpus[0]
    route = full.route(a, b)
    wan = next(lk for lk in full.links.values() if lk.kind == "wan")
    assert route.bw == wan.bw
    assert route.latency_s > wan.latency_s


def test_env_var_overrides_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("HETSIM_PROFILES", str(tmp_path))
    assert profiles_dir() == tmp_path
    assert list_rigs() == []


# ---- bad input ------------------------------------------------------------------------------
GOOD_RIG = """\
name: tiny
nodes:
  - cpus: [xeon-8480+]
    host_memory: {value: 64 GB, source: test, grade: assumed}
    gpus: [t4, l4]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(tmp_path: Path, text: str) -> InputError:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_rig(path)
    err = info.value
    assert err.source == str(path)
    assert str(path) in err.line() and "\n" not in err.line()
    return err


def test_good_tmp_rig_loads(tmp_path):
    rig = load_rig(_write(tmp_path, GOOD_RIG))
    assert [g.model for g in rig.gpus()] == ["t4", "l4"]


def test_malformed_yaml(tmp_path):
    err = _error(tmp_path, "name: tiny\nnodes: [\n  - {cpus: [xeon-8480+]\n")
    assert "malformed YAML" in err.message


def test_unknown_device(tmp_path):
    err = _error(tmp_path, GOOD_RIG.replace("gpus: [t4, l4]", "gpus: [t4, t5000]"))
    assert err.field == "nodes[0].gpus[1]"
    assert "t5000" in err.message


def test_negative_number(tmp_path):
    text = GOOD_RIG.replace(
        "gpus: [t4, l4]",
        "gpus: [t4, {model: l4, memory: {value: -24 GB, source: x, grade: assumed}}]",
    )
    err = _error(tmp_path, text)
    assert err.field == "nodes[0].gpus[1].memory"
    assert "must be in [1e+06, 1e+18]" in err.message


def test_missing_field(tmp_path):
    err = _error(
        tmp_path, GOOD_RIG.replace("    host_memory: {value: 64 GB, source: test, grade: assumed}\n", "")
    )
    assert err.field == "nodes[0].host_memory"
    assert "missing" in err.message


def test_missing_source(tmp_path):
    err = _error(tmp_path, GOOD_RIG.replace("source: test, ", ""))
    assert err.field == "nodes[0].host_memory.source"


def test_unknown_unit(tmp_path):
    err = _error(tmp_path, GOOD_RIG.replace("64 GB", "64 GX"))
    assert err.field == "nodes[0].host_memory"
    assert "unit" in err.message


def test_typo_field(tmp_path):
    err = _error(tmp_path, GOOD_RIG.replace("host_memory:", "host_memroy:"))
    assert err.field == "nodes[0].host_memroy"
    assert "unknown field" in err.message


def test_unknown_rig_name():
    with pytest.raises(InputError, match="unknown rig"):
        load_rig("no-such-rig")


def test_bad_catalogue_file_names_file_and_field(tmp_path):
    import shutil

    root = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), root)
    bad = root / "gpus" / "t4.yaml"
    bad.write_text(bad.read_text().replace("value: 320 GB/s", "value: 320 GB/parsec"))
    with pytest.raises(InputError) as info:
        catalog(root)
    assert info.value.source == str(bad)
    assert info.value.field == "memory_bandwidth"


def test_nvlink_bridge_wan_pair_and_efficiency_overrides(tmp_path):
    text = """\
    name: overrides
    nodes:
      - region: a
        cpus: [{model: xeon-8480+, efficiency: {memory: {value: 0.7, source: stream, grade: measured}}}]
        host_memory: {value: 64 GB, source: t, grade: assumed}
        gpus: [{model: a100-80g, count: 2}]
        nvlink: {link: nvlink3, pairs: [[0, 1]]}
        nic: ethernet-25g
      - region: b
        cpus: [ryzen-7950x]
        host_memory: {value: 64 GB, source: t, grade: assumed}
        nic: ethernet-25g
      - region: c
        cpus: [ryzen-7950x]
        host_memory: {value: 64 GB, source: t, grade: assumed}
        nic: ethernet-25g
    network:
      wan: wan
      pairs:
        - {between: [a, b], link: wan, latency: {value: 20 ms, source: t, grade: assumed}}
    """
    rig = load_rig(_write(tmp_path, text))
    assert rig.route("n0.gpu0", "n0.gpu1").bw == 300e9
    assert rig.links["wan.a-b"].latency_s == pytest.approx(0.02)
    assert rig.links["wan.a-c"].latency_s == pytest.approx(0.03)
    cpu = rig.devices["n0.cpu0"]
    assert cpu.efficiency.memory == 0.7
    assert cpu.provenance["efficiency.memory"].grade == Grade.MEASURED
    assert cpu.efficiency.compute["matmul"] == 0.6  # class default kept


def test_a_gpus_runtime_reserve_is_below_its_memory_or_the_rig_is_refused(tmp_path):
    """runtime_reserved at or over the card's memory would leave a framework nothing: one line naming
    the field, not a GPU with no or negative memory."""
    rig = tmp_path / "r.yaml"
    rig.write_text(
        "name: r\nnodes:\n  - cpus: [{model: xeon-2.0ghz}]\n"
        "    host_memory: {value: 64 GB, source: s, grade: assumed}\n"
        "    gpus:\n      - model: t4\n        runtime_reserved: {value: 16 GB, source: s, grade: assumed}\n"
    )
    with pytest.raises(InputError, match=r"nodes\[0\]\.gpus\[0\]\.runtime_reserved.*must be below memory"):
        load_rig(rig)
    # 0 holds nothing back (a budget for tensors alone); a bare number under a megabyte lacks its unit
    rig.write_text(rig.read_text().replace("16 GB", "0 GB"))
    assert load_rig(rig).devices["n0.gpu0"].mem_bytes == 15101 * 2**20  # the T4's total to torch
    rig.write_text(rig.read_text().replace("0 GB", "512"))
    with pytest.raises(InputError, match=r"runtime_reserved.*must be 0 or at least 1 MB, got 512; .*a unit"):
        load_rig(rig)
