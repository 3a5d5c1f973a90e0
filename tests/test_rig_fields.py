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
