"""Option values checked as typed: Hydra hands a command ``"no"``, ``"abc"`` or ``True``
where a boolean, a number or a count was meant, and ``bool("no")`` is True. Each check is
one ``ValueError`` naming the option as typed and what would be right.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

__all__ = ["boolean", "booleans", "is_number", "is_whole", "number", "path_value", "shown",
           "whole_number"]


def shown(value: Any) -> str:
    """A value as it was typed on the command line: ``[abc]``, not ``['abc']``."""
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(shown(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (``True`` is an int to Python)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def boolean(option: str, value: Any) -> bool:
    """A real boolean (Hydra parses true/false as one); ``no``, ``off`` or ``1`` are refused,
    not read as True the way ``bool("no")`` is."""
    if not isinstance(value, bool):
        raise ValueError(f"{option}={shown(value)}: use true or false")
    return value


def booleans(prefix: str, **values: Any) -> None:
    """:func:`boolean` for each keyword, named ``<prefix><keyword>`` (``cnn.freeze_norm``)."""
    for name, value in values.items():
        boolean(f"{prefix}{name}", value)


def is_whole(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def whole_number(option: str, value: Any, minimum: int, meaning: str) -> int:
    """An int >= ``minimum``; ``meaning`` says what it counts, for the message."""
    if not is_whole(value) or value < minimum:
        raise ValueError(f"{option}={shown(value)}: {meaning} is a whole number >= {minimum}")
    return value


def number(option: str, value: Any, minimum: float, meaning: str) -> float:
    """A finite int or float >= ``minimum``."""
    if not is_number(value) or value < minimum:
        raise ValueError(f"{option}={shown(value)}: {meaning} is a number >= {minimum:g}")
    return float(value)


def path_value(option: str, value: Any, meaning: str = "a file name") -> Path:
    """A path option as typed. Hydra types ``out=123`` as an int: that names the file
    ``123`` as well as text does. null, true or 1.5 name no file (``Path`` would raise a
    bare TypeError), so they are refused naming the option; quoting makes them a name."""
    if isinstance(value, (str, os.PathLike)) or is_whole(value):
        return Path(str(value) if is_whole(value) else value)
    quoted = ("" if value is None else
              f" (for a file of that name, quote it: {option}='{shown(value)}')")
    raise ValueError(f"{option}={shown(value)}: give {meaning}{quoted}")
