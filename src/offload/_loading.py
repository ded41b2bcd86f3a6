"""Import `module:attribute` references given on the command line."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import ConfigurationError


def load(ref: str) -> Any:
    """The object named by `package.module:attribute` (the working directory is importable).

    Raises:
        ConfigurationError: a malformed reference, a missing module or attribute.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--app must look like package.module:attribute, not {ref!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj
