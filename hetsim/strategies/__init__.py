"""Strategies: each module registers itself with ``@register`` when imported.

Every module in this package is imported on first use of the registry, so adding a strategy is
adding a file; nothing here needs editing.
"""

import importlib
import pkgutil

_INFRASTRUCTURE = {"base", "plan_io"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name not in _INFRASTRUCTURE and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
