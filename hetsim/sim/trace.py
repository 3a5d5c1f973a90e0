"""Chrome trace export (JSON trace events): one lane per resource; opens in Perfetto."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetsim.textfiles import write_text_atomic


@dataclass
class TraceRecorder:
    events: list[dict[str, Any]] = field(default_factory=list)
    _lanes: dict[str, int] = field(default_factory=dict)

    def span(self, lane: str, name: str, start_s: float, end_s: float, args: dict[str, Any]) -> None:
        tid = self._lanes.setdefault(lane, len(self._lanes) + 1)
        self.events.append(
            {
                "name": name,
                "ph": "X",
                "pid": 0,
                "tid": tid,
                "ts": start_s * 1e6,
                "dur": (end_s - start_s) * 1e6,
                "args": args,
            }
        )

    def to_json(self) -> dict[str, Any]:
        meta = [
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": lane}}
            for lane, tid in self._lanes.items()
        ]
        return {"traceEvents": meta + self.events, "displayTimeUnit": "ms"}

    def write(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json()))
