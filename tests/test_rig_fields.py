"""Rig fields checked at load: one line naming the rig file and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hetsim.errors import InputError
from hetsim.hardware import load_rig
from hetsim.hardware.catalog import load_catalog


def _rig(tmp_path: Path, gpus: str) -> Path:
    path = tmp_path / "rig.yaml"
    text = f"""\
    name: tiny
    nodes:
      - cpus: [xeon-8480+]
        host_memory: {{value: 64 GB, source: test, grade: assumed}}
        gpus: {gpus}
    """
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", ["nvlink9", "pcie4-x16"])
def test_an_overridden_gpu_names_a_known_nvlink(tmp_path, name):
    path = _rig(tmp_path, f"[{{model: a100-80g, nvlink: {name}}}]")
    with pytest.raises(InputError) as ei:
        load_rig(path)
    assert ei.value.source == str(path) and ei.value.field == "nodes[0].gpus[0].nvlink"
    assert "nvlink4" in ei.value.message


@pytest.mark.parametrize("name", ["nvlink4", "null"])
def test_a_known_nvlink_or_none_overrides(tmp_path, name):
    rig = load_rig(_rig(tmp_path, f"[{{model: a100-80g, nvlink: {name}}}]"))
    assert [g.model for g in rig.gpus()] == ["a100-80g"]


def test_every_catalogue_gpu_names_a_known_nvlink():
    cat = load_catalog()
    for entry in cat.section("gpus").values():
        if entry.spec.nvlink is not None:
            assert cat.resolve("links", entry.spec.nvlink).spec.kind == "nvlink", entry.spec.name


# One rule for integers in YAML files (rigs, the catalogue, sweep specs): an integer field takes an
# integer; 2.0 is a float there, refused with what to write (JSON files take 2.0 as 2).
_SOURCED = "source: t, grade: assumed"
_ALLREDUCE = f"""{{link: nvlink3, switch: true, allreduce: [{{ranks: 2.0,
    latency: {{value: 10 us, {_SOURCED}}}, bandwidth: {{value: 100 GB/s, {_SOURCED}}}}}]}}"""
_WHOLE_FLOATS = {
    "count": ("[{model: a100-80g, count: 2.0}]", "", "nodes[0].gpus[0].count", "write 2, not 2.0"),
    "socket": ("[{model: a100-80g, socket: 0.0}]", "", "nodes[0].gpus[0].socket", "write 0, not 0.0"),
    "pairs": (
        "[a100-80g, a100-80g]",
        "{link: nvlink3, pairs: [[0.0, 1.0]]}",
        "nodes[0].nvlink.pairs[0][0]",
        "write 0",
    ),
    "ranks": ("[a100-80g, a100-80g]", _ALLREDUCE, "nodes[0].nvlink.allreduce[0].ranks", "write 2"),
}


def _rig_with(tmp_path: Path, gpus: str, nvlink: str) -> Path:
    path = _rig(tmp_path, gpus)
    if nvlink:
        path.write_text(path.read_text() + f"    nvlink: {nvlink}\n")
    return path


@pytest.mark.parametrize("case", sorted(_WHOLE_FLOATS))
def test_a_whole_float_in_a_rig_integer_field_says_what_to_write(tmp_path, case):
    gpus, nvlink, field, says = _WHOLE_FLOATS[case]
    path = _rig_with(tmp_path, gpus, nvlink)
    with pytest.raises(InputError) as ei:
        load_rig(path)
    assert ei.value.source == str(path) and ei.value.field == field
    assert says in ei.value.message and "float" in ei.value.message
    # written as an integer, the same rig loads
    path.write_text(path.read_text().replace("2.0", "2").replace("0.0", "0").replace("1.0", "1"))
    assert load_rig(path).gpus()


def test_a_whole_float_sweep_batch_says_what_to_write(tmp_path):
    from hetsim.sweep.spec import load_spec

    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: a\nbase: {model: llama2-7b, rig: flexgen-t4, batch: 4.0}\ngrids: [{strategy: [flexgen]}]\n"
    )
    with pytest.raises(InputError) as ei:
        load_spec(path)
    assert ei.value.field == "base.batch" and "write 4, not 4.0" in ei.value.message


def test_a_whole_float_count_quantity_says_what_to_write(tmp_path):
    """A ``Count`` (cores, memory_channels, upi_links) is an integer field too: ``cores: {value: 56.0}``
    was read as 56 while ``count: 2.0`` was refused."""
    path = _rig(tmp_path, "[a100-80g]")
    cores = f"{{model: xeon-8480+, cores: {{value: 56.0, {_SOURCED}}}}}"
    path.write_text(path.read_text().replace("cpus: [xeon-8480+]", f"cpus: [{cores}]"))
    with pytest.raises(InputError) as ei:
        load_rig(path)
    assert ei.value.source == str(path) and ei.value.field == "nodes[0].cpus[0].cores"
    assert "write 56, not 56.0" in ei.value.message
    path.write_text(path.read_text().replace("56.0", "56"))
    assert [c.cores for c in load_rig(path).cpus()] == [56]
