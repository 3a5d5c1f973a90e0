"""The one argument the paper_figs scripts take: the folder to write into (their __main__ blocks import
this as a sibling module, run as `python paper_figs/<script>.py [OUT_DIR]`)."""

from __future__ import annotations

import sys
from pathlib import Path


def out_dir_arg(argv: list[str], default: str, doc: str | None) -> str:
    """OUT_DIR from ``argv`` (the arguments after the script's name); ``-h``/``--help`` prints ``doc``
    and exits 0; anything else that looks like a flag, or a second argument, is refused with one line
    and exit 2 (a ``--help`` once became a folder of that name)."""
    prog = Path(sys.argv[0]).name
    if not argv:
        return default
    if argv[0] in ("-h", "--help"):
        print((doc or "").strip() or f"usage: {prog} [OUT_DIR]")
        raise SystemExit(0)
    if argv[0].startswith("-") or len(argv) > 1:
        print(f"{prog}: usage: {prog} [OUT_DIR] (got {' '.join(argv)})", file=sys.stderr)
        raise SystemExit(2)
    return argv[0]
