"""The one lazy-import convention: a package face names what loads on first use, module by
attribute, and hands the table to `lazy_attributes`:

    _LAZY = {"run_audit": "jaxlm.audit.pipeline"}
    __getattr__ = lazy_attributes(__name__, _LAZY)

`from jaxlm.audit import run_audit` then imports the pipeline, `import jaxlm.audit` does not.
"""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, table: dict[str, str]):
    """A module `__getattr__` (PEP 562) that imports `table[name]` and returns its `name`."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
