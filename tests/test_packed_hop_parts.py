"""validate.packed_hop times the fresh conversion's parts apart (the conversion into touched memory, a
fresh tensor's first touch and a touched one's, FlexGen's four copy threads converting at once), so
that a host's conversion cycles and its page faults can be told apart. No timing is asserted: the
timer is replaced by one call of each part."""

from __future__ import annotations

import pytest

from validate import packed_hop


def test_the_fresh_conversion_is_timed_part_by_part(monkeypatch):
    pytest.importorskip("torch")  # the validate extra (README command 2 installs dev only)

    def once(fn, **_kw):
        fn()
        return 1.0

    monkeypatch.setattr(packed_hop, "timeit", once)
    out = packed_hop.measure(4096, [1])
    row = out["runs"][0]
    keys = ("fp16_to_u8_touched_s", "u8_fill_fresh_s", "u8_fill_touched_s", "fp16_to_u8_new_copy_threads_s")
    for key in keys:
        assert row[key] == 1.0, key
    assert packed_hop.COPY_THREADS == 4
