"""Session 20's bad-input fixes: each case here named the wrong thing, ran a wrong value silently or
left the CLI with a traceback before its fix."""

from __future__ import annotations

import pytest

SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]


@pytest.mark.parametrize(
    ("value", "path", "why"),
    [
        ("{d}", "{d}/config.json", "no such file"),  # a folder without a config.json
        ("{d}/", "{d}/config.json", "no such file"),
        ("{d}/x.json", "{d}/x.json", "no such file"),
        ("{d}/bad.json", "{d}/bad.json", "malformed JSON: Expecting value at line 1 column 1"),
    ],
)
def test_a_model_path_that_is_no_config_names_the_flag(tmp_path, capsys, guarded, value, path, why):
    """``--model /`` said '/config.json: no such file', naming no flag (``--hw /`` names ``--hw``)."""
    (tmp_path / "bad.json").write_text("not json\n")
    value, path = value.format(d=tmp_path), path.format(d=tmp_path)
    for args in (["--model", value], [f"--model={value}"]):
        got = guarded(["compare", *args, "--hw", "mixed-lab", *SMALL])
        assert got == (2, f"error: --model {path}: {why}\n")
