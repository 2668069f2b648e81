"""Nested configs as flat ``dotted.key -> value`` maps, for comparing two of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import Container, OmegaConf

__all__ = ["flatten"]


def flatten(tree: Any, at: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; sequences become lists (tuple and list
    compare equal), an empty mapping gives no key. An OmegaConf ``${...}`` is kept as
    written: resolving a file's config would run its resolvers (``oc.env``, ...)."""
    if isinstance(tree, Container):
        tree = OmegaConf.to_container(tree, resolve=False)
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, child in tree.items():
            out.update(flatten(child, f"{at}.{key}" if at else str(key)))
        return out
    return {at: list(tree) if isinstance(tree, (list, tuple)) else tree}
