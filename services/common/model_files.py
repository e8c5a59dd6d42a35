"""Where model files live: a filesystem path, or a model shipped inside a Python package."""

from __future__ import annotations

import importlib
from pathlib import Path

PACKAGE_PREFIX = "package:"


def resolve_model_path(location: str) -> Path:
    """`package:<module>:<function>` calls the function (e.g. a GGUF package's `assemble`, which
    writes the file to its cache on first use: blocking); anything else is a local path."""
    if not location.startswith(PACKAGE_PREFIX):
        return Path(location).expanduser()
    module_name, _, function_name = location.removeprefix(PACKAGE_PREFIX).partition(":")
    if not function_name:
        raise ValueError(f"'{location}' must name a function: package:<module>:<function>")
    return Path(getattr(importlib.import_module(module_name), function_name)())
